"""common.train through `python -m pipelines.train`: determinism, SIGKILL-resume bit-identity, DDP equals
one process, and one clear message, a non-zero exit and nothing overwritten for each bad situation
(NaN loss, corrupt checkpoint, output directory of another config, missing dataset).

Runs are tiny (a 2-block, width-32 DiT on 16 tokens, batch 8) and use one thread so that results are
bit-reproducible across processes."""
import functools
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import common.data
from common.diffusion import FlowMatching
from pipelines.train import main as train_main

ROOT = Path(__file__).resolve().parent.parent
SETS = ["model.name=DiT-M/8", "model.overrides.depth=2", "model.overrides.hidden_size=32", "train.batch_size=8",
        "train.ckpt_every=1", "train.log_every=1", "train.threads=1", "train.lr=1e-3"]


def _argv(out, steps, *extra, variant="sit"):
    sets = [*SETS, f"train.steps={steps}", *extra]
    return ["dit", variant, "--out", str(out)] + [a for s in sets for a in ("--set", s)]


def _env():
    env = dict(os.environ, TRITON_INTERPRET="1", DVCLIVE_OPEN="false", OMP_NUM_THREADS="1")
    env.pop("RANK", None)
    return env


@pytest.fixture(autouse=True)
def _fast_data_and_threads(monkeypatch):
    """Parse the mnist5k CSV once per session (in this process), and restore the thread count."""
    monkeypatch.setattr(common.data, "_mnist5k_arrays", _cached_mnist5k)
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@functools.lru_cache(maxsize=1)
def _mnist5k_once():
    return _ORIG_MNIST5K()


_ORIG_MNIST5K = common.data._mnist5k_arrays


def _cached_mnist5k():
    x, y = _mnist5k_once()
    return x.copy(), y.copy()


def _run(out, steps, *extra, variant="sit"):
    """In-process `python -m pipelines.train`; returns the exit code (0 on success)."""
    try:
        train_main(_argv(out, steps, *extra, variant=variant))
    except SystemExit as e:
        return e.code
    return 0


def _ckpt(out) -> dict:
    """A run's latest checkpoint without its wall-clock bookkeeping ("stats": seconds, images timed)."""
    ck = torch.load(Path(out) / "ckpt" / "latest.pt", weights_only=True)
    ck.pop("stats")
    return ck


def _assert_same(a, b, path="", exact=True, atol=1e-5):
    """Recursive comparison of checkpoint contents (tensors bit for bit, or allclose)."""
    if isinstance(a, dict):
        assert set(a) == set(b), f"{path}: keys differ"
        for k in a:
            _assert_same(a[k], b[k], f"{path}.{k}", exact, atol)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{path}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{path}[{i}]", exact, atol)
    elif isinstance(a, torch.Tensor):
        if exact:
            assert torch.equal(a, b), f"{path}: tensors differ (max {(a.double() - b.double()).abs().max()})"
        else:
            assert torch.allclose(a.double(), b.double(), atol=atol, rtol=0), \
                f"{path}: max diff {(a.double() - b.double()).abs().max()}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


_REFS: dict = {}


def _reference(tmp_path_factory, steps):
    """An uninterrupted in-process run of `steps` steps (shared by the tests of this module)."""
    if steps not in _REFS:
        out = tmp_path_factory.mktemp(f"ref{steps}")
        assert _run(out, steps) == 0
        _REFS[steps] = out
    return _REFS[steps]


# ---- determinism and resume ---------------------------------------------------------------------------
def test_determinism_and_outputs(tmp_path, tmp_path_factory):
    ref = _reference(tmp_path_factory, 6)
    assert _run(tmp_path / "again", 6) == 0
    a, b = _ckpt(ref), _ckpt(tmp_path / "again")
    _assert_same(a, b)
    assert a["step"] == 6 and set(a) >= {"model", "ema", "opt", "step", "rng", "config"}
    assert not torch.equal(a["model"]["final_layer.linear.weight"], a["ema"]["final_layer.linear.weight"])
    # artifacts of a run
    import json

    tj = json.loads((ref / "train.json").read_text())
    assert {"params", "gflops", "train_steps", "train_img_per_s", "train_seconds", "model", "objective",
            "dataset", "preset"} <= set(tj)
    assert tj["train_steps"] == 6 and tj["model"] == "DiT-M/8" and tj["dataset"] == "mnist5k"
    rows = (ref / "dvclive" / "plots" / "metrics" / "train" / "loss.tsv").read_text().split()
    assert rows[:2] == ["step", "loss"] and [int(s) for s in rows[2::2]] == list(range(1, 7))
    # another seed gives another run
    assert _run(tmp_path / "seed1", 6, "train.seed=1") == 0
    assert not torch.equal(_ckpt(tmp_path / "seed1")["model"]["final_layer.linear.weight"],
                           a["model"]["final_layer.linear.weight"])


def test_sigkill_resume_is_bit_identical(tmp_path, tmp_path_factory):
    steps = 40
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "pipelines.train", *_argv(out, steps)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = out / "ckpt" / "latest.pt"
    deadline = time.time() + 120
    try:
        while not ckpt.exists():
            assert proc.poll() is None, f"training exited early: {proc.stderr.read().decode()[-2000:]}"
            assert time.time() < deadline, "no checkpoint after 120 s"
            time.sleep(0.02)
        time.sleep(0.4)  # a few more steps (each writes a checkpoint): kill at an arbitrary moment
    finally:
        proc.kill()  # SIGKILL
        proc.wait()
    assert proc.returncode == -9
    killed_at = _ckpt(out)["step"]
    assert 1 <= killed_at < steps, f"the run was not interrupted (step {killed_at})"

    res = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"resuming {out} from step" in res.stdout
    ref = _reference(tmp_path_factory, steps)
    _assert_same(_ckpt(out), _ckpt(ref))  # model, EMA, optimizer, RNG, step: bit for bit
    rows = (out / "dvclive" / "plots" / "metrics" / "train" / "loss.tsv").read_text().split()
    assert [int(s) for s in rows[2::2]] == list(range(1, steps + 1))  # no duplicate or missing log rows
    assert rows == (ref / "dvclive" / "plots" / "metrics" / "train" / "loss.tsv").read_text().split()


def test_ddp_two_processes_equal_one(tmp_path, tmp_path_factory):
    steps = 6
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "pipelines.train", *_argv(out, steps)]
    res = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    ck, ref = _ckpt(out), _ckpt(_reference(tmp_path_factory, steps))
    assert ck["step"] == steps
    _assert_same(ck["model"], ref["model"], "model", exact=False)
    _assert_same(ck["ema"], ref["ema"], "ema", exact=False)
    _assert_same(ck["opt"]["state"], ref["opt"]["state"], "opt", exact=False)
    import json

    assert json.loads((out / "train.json").read_text())["world_size"] == 2


# ---- failures: one message, non-zero exit, nothing overwritten ----------------------------------------
def _snapshot(out):
    return {p: p.read_bytes() for p in sorted(Path(out).rglob("*")) if p.is_file() and "dvclive" not in p.parts}


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    assert _run(tmp_path, 3) == 0
    before = _snapshot(tmp_path)
    capsys.readouterr()
    calls = {"n": 0}
    orig = FlowMatching.training_losses

    def poisoned(self, *a, **kw):
        terms = orig(self, *a, **kw)
        calls["n"] += 1
        return {k: v * float("nan") for k, v in terms.items()} if calls["n"] >= 2 else terms

    monkeypatch.setattr(FlowMatching, "training_losses", poisoned)
    code = _run(tmp_path, 10)  # resumes at step 3, one good step, then NaN at step 4
    err = capsys.readouterr().err
    assert code not in (0, None)
    assert "loss is nan at step 4" in err and "latest.pt" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    ck = _ckpt(tmp_path)
    assert ck["step"] == 4  # the last good checkpoint (written after step 4 with ckpt_every=1)
    assert all(torch.isfinite(v).all() for v in ck["model"].values())
    assert set(_snapshot(tmp_path)) == set(before)


def test_nan_loss_without_checkpoint_keeps_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(FlowMatching, "training_losses", lambda self, model, x, *a, **kw: {"loss": model(
        x, torch.zeros(len(x)), torch.zeros(len(x), dtype=torch.long)).sum() * float("inf")})
    code = _run(tmp_path, 3)
    err = capsys.readouterr().err
    assert code not in (0, None) and "loss is " in err and "none yet" in err
    assert not (tmp_path / "ckpt" / "latest.pt").exists()


def test_corrupt_checkpoint(tmp_path, capsys):
    assert _run(tmp_path, 2) == 0
    ckpt = tmp_path / "ckpt" / "latest.pt"
    garbage = ckpt.read_bytes()[:100] + b"\x00garbage"
    ckpt.write_bytes(garbage)
    capsys.readouterr()
    code = _run(tmp_path, 4)
    err = capsys.readouterr().err
    assert code not in (0, None)
    assert "corrupt" in err and str(ckpt) in err and "Traceback" not in err
    assert ckpt.read_bytes() == garbage  # not overwritten


def test_incompatible_checkpoint(tmp_path, capsys):
    assert _run(tmp_path, 2) == 0
    ckpt = tmp_path / "ckpt" / "latest.pt"
    ck = torch.load(ckpt, weights_only=True)
    del ck["model"]["final_layer.linear.bias"]
    torch.save(ck, ckpt)
    before = ckpt.read_bytes()
    capsys.readouterr()
    code = _run(tmp_path, 4)
    err = capsys.readouterr().err
    assert code not in (0, None) and "does not fit" in err and "final_layer.linear.bias" in err
    assert ckpt.read_bytes() == before


def test_out_dir_of_another_config(tmp_path, capsys):
    assert _run(tmp_path, 2) == 0
    before = _snapshot(tmp_path)
    capsys.readouterr()
    code = _run(tmp_path, 2, "train.lr=5e-4")
    err = capsys.readouterr().err
    assert code not in (0, None)
    assert "belongs to another config" in err and "train.lr" in err and "Traceback" not in err
    assert _snapshot(tmp_path) == before
    # another variant (objective) in the same directory is refused too
    assert _run(tmp_path, 2, variant="dit") not in (0, None)
    assert _snapshot(tmp_path) == before
    # changing only the length or logging cadence is the same run: it resumes
    assert _run(tmp_path, 3, "train.log_every=2") == 0
    assert _ckpt(tmp_path)["step"] == 3


def test_missing_dataset(tmp_path, monkeypatch, capsys):
    import torchvision

    def no_network(*a, **kw):
        raise RuntimeError("Dataset not found or corrupted. You can use download=True to download it")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", no_network)
    out = tmp_path / "run"
    code = _run(out, 2, "data.name=cifar10", f"data.root={tmp_path / 'nodata'}")
    err = capsys.readouterr().err
    assert code not in (0, None)
    assert "dataset 'cifar10'" in err and "Fix:" in err and "Traceback" not in err
    assert not out.exists()  # nothing written


def test_unknown_dataset(tmp_path, capsys):
    code = _run(tmp_path / "run", 2, "data.name=nope")
    err = capsys.readouterr().err
    assert code not in (0, None) and "unknown dataset 'nope'" in err
    assert not (tmp_path / "run").exists()


def test_batch_larger_than_dataset_is_refused(tmp_path, capsys):
    code = _run(tmp_path / "run", 2, "train.batch_size=100000")
    assert code not in (0, None) and "fewer than train.batch_size" in capsys.readouterr().err


def test_resume_repairs_logs_cut_short_by_a_kill(tmp_path):
    """A SIGKILL can land while DVCLive writes: a partial last row, an empty summary. Resume must cope."""
    from common.train import _trim_dvclive

    tsv = tmp_path / "plots" / "metrics" / "train" / "loss.tsv"
    tsv.parent.mkdir(parents=True)
    tsv.write_text("timestamp\tstep\tloss\n1\t10\t0.5\n2\t20\t0.4\n3\t30\t0.3\n4\t4")
    (tmp_path / "metrics.json").write_text("")
    _trim_dvclive(tmp_path, 20)
    assert tsv.read_text() == "timestamp\tstep\tloss\n1\t10\t0.5\n2\t20\t0.4\n"
    assert not (tmp_path / "metrics.json").exists()
    (tmp_path / "metrics.json").write_text('{"step": 20}')
    _trim_dvclive(tmp_path, 20)  # a valid summary stays
    assert (tmp_path / "metrics.json").exists()
