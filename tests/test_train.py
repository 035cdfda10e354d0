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


def _argv(out, steps, *extra, variant="sit", flags=()):
    sets = [*SETS, f"train.steps={steps}", *extra]
    return ["dit", variant, "--out", str(out), *flags] + [a for s in sets for a in ("--set", s)]


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


def _run(out, steps, *extra, variant="sit", flags=()):
    """In-process `python -m pipelines.train`; returns the exit code (0 on success)."""
    try:
        train_main(_argv(out, steps, *extra, variant=variant, flags=flags))
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


@pytest.mark.parametrize("term", [False, True], ids=["plain", "with-a-loss-term"])
def test_sigkill_resume_is_bit_identical(tmp_path, tmp_path_factory, term):
    steps = 40
    out = tmp_path / "killed"
    extra = PROBE if term else ()
    main = [str(ROOT / "tests" / "loss_terms.py")] if term else ["-m", "pipelines.train"]  # the former knows "probe"
    cmd = [sys.executable, *main, *_argv(out, steps, *extra)]
    env = dict(_env(), PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
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

    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"resuming {out} from step" in res.stdout
    if term:
        ref = tmp_path / "straight"
        assert _run(ref, steps, *extra) == 0
    else:
        ref = _reference(tmp_path_factory, steps)
    _assert_same(_ckpt(out), _ckpt(ref))  # model, EMA, optimizer, loss term, RNG, step: bit for bit
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


# ---- extra loss terms ---------------------------------------------------------------------------------
from loss_terms import Probe  # noqa: E402  (registers the "probe" term)
from torch import nn  # noqa: E402

from common.mixers import MixerContext  # noqa: E402
from common.models import create_model  # noqa: E402
from common.train import compute_losses  # noqa: E402

PROBE = ["losses.probe.weight=0.3", "losses.probe.block=1", "losses.probe.dim=4"]


def manual_features(model, x, t, y, drop):
    """Every block's output by hand with the DiT API (embed, condition, block(h, cond, ctx))."""
    ctx = MixerContext(frames=1, height=model.grid, width=model.grid, attn_logits=[])
    h = model.embed(x)  # (B, N, D)
    c = model.condition(t, y, h.shape[1], drop)  # Cond
    feats = []
    for block in model.blocks:
        h = block(h, c, ctx)
        feats.append(h)
    return feats, ctx.attn_logits


def _close(a, b, rel=1e-5):
    """Equal up to float32 rounding, relative to the tensor's largest entry."""
    return (a - b).abs().max() <= rel * max(a.abs().max(), b.abs().max(), 1e-12)


def test_extra_term_changes_gradients_as_computed_by_hand():
    torch.manual_seed(0)
    model = create_model("DiT-M/8", depth=2, hidden_size=32)
    with torch.no_grad():  # leave adaLN-Zero's zeros: every parameter must matter
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.2)
    cfg = Probe.Config(weight=0.3, block=0, dim=4)
    terms = nn.ModuleDict({"probe": Probe(cfg, model)})
    objective = FlowMatching()
    x, noise = torch.randn(4, 1, 32, 32), torch.randn(4, 1, 32, 32)
    y, t, drop = torch.tensor([1, 2, 3, 4]), torch.rand(4), torch.tensor([0, 1, 0, 0])

    def grads(with_terms):
        model.zero_grad(set_to_none=True)
        terms.zero_grad(set_to_none=True)
        loss, logs = compute_losses(objective, model, with_terms, x, y, t, noise, drop)
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, logs

    g0, logs0 = grads(nn.ModuleDict())
    g1, logs1 = grads(terms)
    P = terms["probe"].proj.weight                              # (4, D)
    grad_P = P.grad.clone()
    # the same term by hand: block 0's output of a manual forward on x_t, weighted, differentiated alone
    tb = t.view(-1, 1, 1, 1)
    feats, _ = manual_features(model, (1 - tb) * x + tb * noise, t * 1000, y, drop)
    hand = (feats[0] @ P.detach().T).pow(2).sum(-1).mean(-1)   # (B,)
    model.zero_grad(set_to_none=True)
    (cfg.weight * hand.mean()).backward()
    g_hand = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert set(g1) == set(g0) and "blocks.0.attn.qkv.weight" in g_hand
    for n in g1:
        assert _close(g1[n], g0[n] + g_hand.get(n, 0.0)), n
        assert n in g_hand or torch.equal(g1[n], g0[n]), n     # blocks after the tap: unchanged
    assert not torch.allclose(g1["x_embedder.weight"], g0["x_embedder.weight"])
    # the projector's own gradient, analytically: d/dP w/(BN) sum ||P h||^2 = 2w/(BN) sum (P h) h^T
    h = feats[0].detach().reshape(-1, feats[0].shape[-1])       # (B*N, D)
    assert _close(grad_P, 2 * cfg.weight / len(h) * (h @ P.detach().T).T @ h)
    # what is returned and logged: the objective's terms untouched, the term unweighted, the weighted total
    assert torch.equal(logs1["mse"], logs0["mse"]) and _close(logs1["probe"], hand.detach())
    assert _close(logs1["loss"], logs0["loss"] + cfg.weight * logs1["probe"])


def test_without_terms_the_loss_is_the_objectives():
    torch.manual_seed(0)
    model = create_model("DiT-M/8", depth=2, hidden_size=32)
    x, noise, y, t = torch.randn(3, 1, 32, 32), torch.randn(3, 1, 32, 32), torch.tensor([1, 2, 3]), torch.rand(3)
    loss, logs = compute_losses(FlowMatching(), model, nn.ModuleDict(), x, y, t, noise, None)
    ref = FlowMatching().training_losses(model, x, y, t=t, noise=noise, force_drop_ids=None)
    assert torch.equal(loss, ref["loss"].mean()) and set(logs) == {"mse", "loss"}


def test_term_is_trained_saved_and_resumed_bit_identically(tmp_path):
    assert _run(tmp_path / "straight", 6, *PROBE) == 0
    assert _run(tmp_path / "resumed", 3, *PROBE) == 0          # stopped after 3 steps ...
    assert _run(tmp_path / "resumed", 6, *PROBE) == 0          # ... and resumed to 6
    a, b = _ckpt(tmp_path / "straight"), _ckpt(tmp_path / "resumed")
    _assert_same(a, b)                                          # model, EMA, optimizer, term, RNG: bit for bit
    assert set(a["losses"]) == {"probe.proj.weight"}
    n_model = sum(p.requires_grad for p in create_model("DiT-M/8", depth=2, hidden_size=32).parameters())
    assert len(a["opt"]["state"]) == n_model + 1                # the projector is optimised with the model
    # the term was trained, and it changed the model (against a run without it)
    torch.manual_seed(0)
    init = Probe(Probe.Config(block=1), create_model("DiT-M/8", depth=2, hidden_size=32)).proj.weight
    assert not torch.equal(a["losses"]["probe.proj.weight"], init)
    assert _run(tmp_path / "plain", 6) == 0
    assert not torch.equal(_ckpt(tmp_path / "plain")["model"]["x_embedder.weight"], a["model"]["x_embedder.weight"])
    # each term logged on its own; train/loss is the total
    import json

    plots = tmp_path / "straight" / "dvclive" / "plots" / "metrics" / "train"
    assert {p.stem for p in plots.glob("*.tsv")} == {"loss", "mse", "probe", "lr"}
    cols = [[float(row.split("\t")[-1]) for row in (plots / f"{k}.tsv").read_text().splitlines()[1:]]
            for k in ("loss", "mse", "probe")]
    assert len(cols[0]) == 6
    for loss, mse, probe in zip(*cols):
        assert abs(loss - (mse + 0.3 * probe)) < 1e-5
    assert json.loads((tmp_path / "straight" / "train.json").read_text())["losses"] == {"probe": 0.3}


def test_losses_section_merges_per_variant_and_round_trips():
    from common.config import from_dict, resolve

    params = {"losses": {"probe": {"weight": 0.5}},
              "variants": {"a": {}, "b": {"losses": {"probe": {"dim": 8}}}, "c": {"losses": {"probe": None}}}}
    a, b = resolve(params, "toy", "a"), resolve(params, "toy", "b")
    assert a.losses == {"probe": Probe.Config(weight=0.5)}
    assert b.losses == {"probe": Probe.Config(weight=0.5, dim=8)}       # the variant adds to the base section
    assert b.to_dict()["losses"] == {"probe": {"weight": 0.5, "block": 0, "dim": 8}}
    assert from_dict(b.to_dict()) == b
    assert resolve(params, "toy", "c").losses == {"probe": Probe.Config()}  # `probe:` alone: its defaults
    assert resolve({"variants": {"a": {}}}, "toy", "a").losses == {}


@pytest.mark.parametrize("sets, culprit", [
    (["losses.probe.wieght=1"], "losses.probe.wieght"),
    (["losses.probe.weight=abc"], "losses.probe.weight"),
    (["losses.probe.weight=-1"], "losses.probe.weight"),
    (["losses.probe.dim=0"], "losses.probe.dim"),
    (["losses.nope.weight=1"], "losses.nope"),
    (["losses=3"], "losses"),
    (["losses.probe.block=7"], "losses.probe"),               # a tap the model does not have
])
def test_bad_loss_section(tmp_path, capsys, sets, culprit):
    code = _run(tmp_path / "run", 2, *sets)
    err = capsys.readouterr().err
    assert code not in (0, None) and culprit in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


# ---- init_from and keep_every -------------------------------------------------------------------------
def test_init_from_loads_weights_and_reports_keys(tmp_path, capsys):
    import json

    src = tmp_path / "src"
    assert _run(src, 3) == 0
    ema = _ckpt(src)["ema"]
    # lr 0: after one step the weights are still exactly the ones loaded (the source's EMA)
    out = tmp_path / "ft"
    assert _run(out, 1, f"train.init_from={src}", "train.lr=0", *PROBE) == 0
    log = capsys.readouterr().out
    ck = _ckpt(out)
    _assert_same(ck["model"], ema)
    _assert_same(ck["ema"], ema)
    rep = json.loads((out / "train.json").read_text())["init"]
    assert rep["from"] == src.as_posix() and rep["weights"] == "ema" and rep["step"] == 3
    assert rep["new_keys"] == ["losses.probe.proj.weight"]      # the source run had no projector
    assert rep["dropped_keys"] == [] and rep["shape_mismatch"] == [] and rep["loaded"] == len(ema)
    assert f"initialised from {src.as_posix()}" in log and "losses.probe.proj.weight" in log
    # raw weights on request
    assert _run(tmp_path / "raw", 1, f"train.init_from={src}", "train.init_weights=model", "train.lr=0") == 0
    _assert_same(_ckpt(tmp_path / "raw")["model"], _ckpt(src)["model"])
    # a deeper model: its extra block is new; a shallower one drops the source's last block
    deep = tmp_path / "deep"
    assert _run(deep, 1, f"train.init_from={src}", "model.overrides.depth=3") == 0
    rep = json.loads((deep / "train.json").read_text())["init"]
    assert rep["new_keys"] and all(k.startswith("blocks.2.") for k in rep["new_keys"])
    assert _run(tmp_path / "shallow", 1, f"train.init_from={deep}", "train.lr=0") == 0
    rep = json.loads((tmp_path / "shallow" / "train.json").read_text())["init"]
    assert rep["new_keys"] == [] and sorted(rep["dropped_keys"]) == sorted(
        k for k in _ckpt(deep)["ema"] if k.startswith("blocks.2."))


def test_init_from_applies_before_step_0_only(tmp_path):
    src = tmp_path / "src"
    assert _run(src, 2) == 0
    assert _run(tmp_path / "straight", 4, f"train.init_from={src}") == 0
    assert _run(tmp_path / "resumed", 2, f"train.init_from={src}") == 0
    import shutil

    shutil.rmtree(src)                                          # a resume never reads init_from again
    assert _run(tmp_path / "resumed", 4, f"train.init_from={src}") == 0
    _assert_same(_ckpt(tmp_path / "straight"), _ckpt(tmp_path / "resumed"))
    assert _ckpt(tmp_path / "resumed")["init"]["from"] == src.as_posix()


def test_bad_init_from(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    corrupt = tmp_path / "corrupt" / "ckpt"
    corrupt.mkdir(parents=True)
    (corrupt / "latest.pt").write_bytes(b"\x00garbage")
    for src, says in ((tmp_path / "nope", "not found"), (tmp_path / "empty", "no checkpoint"),
                      (tmp_path / "corrupt", "corrupt")):
        out = tmp_path / f"out-{src.name}"
        code = _run(out, 2, f"train.init_from={src}")
        err = capsys.readouterr().err
        assert code not in (0, None) and says in err and "train.init_from" in err and str(src) in err, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert not out.exists()                                 # nothing written


def test_keep_every_keeps_exactly_those_steps(tmp_path):
    from common.train.checkpoint import load

    assert _run(tmp_path / "run", 7, "train.keep_every=3", "train.ckpt_every=2") == 0
    assert sorted(p.name for p in (tmp_path / "run" / "ckpt").iterdir()) == [
        "latest.pt", "step_000003.pt", "step_000006.pt"]
    kept = load(tmp_path / "run" / "ckpt" / "step_000003.pt")   # a plain dict, weights_only
    assert kept["step"] == 3 and set(kept) == {"model", "ema", "step", "config"}
    assert _run(tmp_path / "three", 3) == 0
    _assert_same(kept["model"], _ckpt(tmp_path / "three")["model"])
    _assert_same(kept["ema"], _ckpt(tmp_path / "three")["ema"])


# ---- safety: a re-run changes nothing, a run is never shortened, restart, corrupt JSON ----------------
def _all_files(out):
    return {p: p.read_bytes() for p in sorted(Path(out).rglob("*")) if p.is_file()}


def test_rerun_of_a_finished_run_changes_nothing(tmp_path, capsys):
    import json

    assert _run(tmp_path, 3, "train.keep_every=2") == 0
    before = _all_files(tmp_path)
    capsys.readouterr()
    assert _run(tmp_path, 3, "train.keep_every=2") == 0
    assert "already trained to 3 steps" in capsys.readouterr().out
    assert _all_files(tmp_path) == before                       # train.json, dvclive, checkpoints: untouched
    tj = json.loads((tmp_path / "train.json").read_text())
    assert tj["final_loss"] > 0 and tj["train_seconds"] > 0


def test_fewer_steps_than_the_checkpoint_is_refused(tmp_path, capsys):
    assert _run(tmp_path, 4) == 0
    before = _all_files(tmp_path)
    capsys.readouterr()
    code = _run(tmp_path, 2)
    err = capsys.readouterr().err
    assert code not in (0, None) and "holds 4 steps" in err and "train.steps 2" in err
    assert len(err.strip().splitlines()) == 1
    assert _all_files(tmp_path) == before


RESTART = ("--on-mismatch", "restart")


def test_restart_removes_the_old_run_only_after_the_new_config_validated(tmp_path, capsys):
    assert _run(tmp_path, 2, "train.keep_every=1") == 0
    before = _all_files(tmp_path)
    capsys.readouterr()
    for bad in (["model.mixer=nope"], ["train.init_from=" + str(tmp_path / "missing")], [*PROBE, "losses.probe.block=9"]):
        code = _run(tmp_path, 2, "train.lr=5e-4", *bad, flags=RESTART)
        err = capsys.readouterr().err
        assert code not in (0, None) and len(err.strip().splitlines()) == 1, err
        assert _all_files(tmp_path) == before                   # the old checkpoints are all still there
    assert _run(tmp_path, 3, "train.lr=5e-4", flags=RESTART) == 0
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["latest.pt"]  # old step_*.pt gone
    ck = _ckpt(tmp_path)
    assert ck["step"] == 3 and ck["config"]["train"]["lr"] == 5e-4


def test_corrupt_train_json_or_run_json_never_blocks_a_run(tmp_path, capsys):
    import json

    assert _run(tmp_path, 3) == 0
    good = json.loads((tmp_path / "train.json").read_text())
    (tmp_path / "train.json").write_text('{"final_loss": Na')
    capsys.readouterr()
    assert _run(tmp_path, 3) == 0                               # finished run: train.json rebuilt, warned
    out = capsys.readouterr()
    assert "train.json is not a valid JSON object" in out.err and "rebuilt" in out.err
    tj = json.loads((tmp_path / "train.json").read_text())
    assert tj["final_loss"] == good["final_loss"] and tj["train_seconds"] > 0 and tj["train_img_per_s"] > 0
    assert {k: v for k, v in tj.items() if "second" not in k and "per_s" not in k} == \
        {k: v for k, v in good.items() if "second" not in k and "per_s" not in k}
    (tmp_path / "train.json").write_text("")                    # corrupt, then resumed to more steps
    (tmp_path / "run.json").write_text("[1, 2")
    assert _run(tmp_path, 5) == 0
    assert "run.json is not a valid JSON object" in capsys.readouterr().err
    assert json.loads((tmp_path / "train.json").read_text())["train_steps"] == 5
    assert json.loads((tmp_path / "run.json").read_text())["train"]["steps"] == 5
    assert _ckpt(tmp_path)["step"] == 5


def test_old_run_json_without_new_keys_still_resumes(tmp_path):
    """A run written before `losses` / `train.init_from` / `train.keep_every` existed is the same config."""
    import json

    assert _run(tmp_path, 2) == 0
    old = json.loads((tmp_path / "run.json").read_text())
    old.pop("losses")
    for k in ("init_from", "init_weights", "keep_every"):
        old["train"].pop(k)
    (tmp_path / "run.json").write_text(json.dumps(old))
    assert _run(tmp_path, 3) == 0 and _ckpt(tmp_path)["step"] == 3


def test_ddp_with_a_term_equals_one_process(tmp_path):
    """The term's gradients are averaged over the processes like the model's (DDP does not see the term)."""
    steps = 4
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "tests" / "loss_terms.py"), *_argv(out, steps, *PROBE)]
    res = subprocess.run(cmd, cwd=ROOT, env=dict(_env(), PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert _run(tmp_path / "one", steps, *PROBE) == 0
    ck, ref = _ckpt(out), _ckpt(tmp_path / "one")
    for key in ("model", "ema", "losses"):
        _assert_same(ck[key], ref[key], key, exact=False)
    _assert_same(ck["opt"]["state"], ref["opt"]["state"], "opt", exact=False)


def test_exported_weights_fine_tune_and_sample(tmp_path):
    """pipelines.export_weights keeps only the EMA weights (one storage for "ema" and "model"), and the
    export is a run directory that `train.init_from` and `load_for_sampling` take as they are."""
    from common.train import load_for_sampling
    from pipelines.export_weights import ExportError, export_weights

    src = tmp_path / "src"
    assert _run(src, 3) == 0
    dst = export_weights(src, tmp_path / "ref")
    full, small = (src / "ckpt" / "latest.pt").stat().st_size, dst.stat().st_size
    ema = _ckpt(src)["ema"]
    assert small < 0.45 * full  # no raw weights, optimizer moments or RNG; ema saved once
    model, cfg, step = load_for_sampling(tmp_path / "ref")
    _assert_same(model.state_dict(), ema)
    assert step == 3 and cfg.variant == "sit"
    out = tmp_path / "ft"
    assert _run(out, 1, f"train.init_from={tmp_path / 'ref'}", "train.lr=0") == 0
    _assert_same(_ckpt(out)["model"], ema)
    with pytest.raises(ExportError, match="run the train stage"):
        export_weights(tmp_path / "nothing", tmp_path / "x")
