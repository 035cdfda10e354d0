"""Bad inputs a careful new user tries, against every stage: each ends in exit status 2, exactly one line
on stderr naming the culprit, no traceback, and not one byte changed on disk (every file hashed before
and after). Also: `share` never deletes, `sample`/`evaluate` refuse a run of another variant, writes are
atomic, Ctrl-C prints one line and the run resumes bit for bit, `--debug` shows the traceback.

Stages run in-process (`main(argv)` is the same wrapped entry point `python -m` runs) on tiny runs: a
2-block, width-32 DiT trained for 2 steps, and a feature network trained for 20 steps."""
import functools
import hashlib
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import common.data

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["model.overrides.depth=2", "model.overrides.hidden_size=32", "train.batch_size=8", "train.threads=1",
         "train.log_every=1", "train.ckpt_every=2", "train.steps=2", "sample.num_samples=4", "sample.steps=2",
         "sample.batch_size=4", "sample.grid=0"]


def _sets(*extra):
    return [a for s in (*SMALL, *extra) for a in ("--set", s)]


@functools.lru_cache(maxsize=1)
def _mnist5k_once():
    return _ORIG_MNIST5K()


_ORIG_MNIST5K = common.data._mnist5k_arrays


def _cached_mnist5k():
    return tuple(a.copy() for a in _mnist5k_once())


@pytest.fixture(autouse=True)
def _fast_data(monkeypatch):
    """Parse the mnist5k CSV once (about 8 s per parse on 2 cores); restore the thread count."""
    monkeypatch.setattr(common.data, "_mnist5k_arrays", _cached_mnist5k)
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def call(stage: str, *argv) -> int:
    """`python -m pipelines.<stage> argv...` in this process; the exit status."""
    try:
        importlib.import_module(f"pipelines.{stage}").main([str(a) for a in argv])
    except SystemExit as e:
        return e.code
    return 0


def snapshot(root: Path) -> dict:
    """sha256 of every file under `root` (and the set of directories), to prove nothing changed."""
    files = {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(root.rglob("*")) if p.is_file()}
    dirs = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_dir()}
    return {"files": files, "dirs": dirs}


def refused(capsys, ws: Path, stage: str, argv: list, *needles: str) -> str:
    """Run a stage that must refuse: exit 2, one stderr line with every needle, `ws` unchanged."""
    before = snapshot(ws)
    capsys.readouterr()
    code = call(stage, *argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, (code, err)
    assert "Traceback" not in err and len(err.splitlines()) == 1 and err.startswith("error: "), err
    for n in needles:
        assert n in err, (n, err)
    assert snapshot(ws) == before, "a refused command changed files"
    return err


# ---- shared fixtures: tiny trained runs, an evaluated reference, a feature network ----------------------
@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """runs/sit (DiT-T/4) and runs/p8 (sit-p8, DiT-T/8) trained 2 steps; ref/s0, ref/s1 evaluated copies;
    featnet/ a 20-step feature network; ev/ an evaluable run (real digits as samples)."""
    from common.metrics import FeatNetConfig, save_featnet, train_featnet, write_reference

    root = tmp_path_factory.mktemp("base")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(common.data, "_mnist5k_arrays", _cached_mnist5k)
        n = torch.get_num_threads()
        for variant, out in (("sit", "runs/sit"), ("sit-p8", "runs/p8")):
            assert call("train", "dit", variant, "--out", root / out, *_sets()) == 0
        torch.set_num_threads(n)
        net, _ = train_featnet(FeatNetConfig(channels=(8, 16, 32), feat_dim=32, max_steps=20, batch_size=64,
                                             lr=1e-2), log=None, eval_train=False)
    save_featnet(net, root / "featnet" / "mnist-cnn.pt")
    write_reference(net, root / "featnet")
    for s in (0, 1):
        shutil.copytree(root / "runs" / "sit", root / "ref" / f"s{s}")
        (root / "ref" / f"s{s}" / "eval.json").write_text(json.dumps({"fid": 1.0 + s}))
    X, y = common.data.mnist5k_split("heldout")
    ev = root / "ev"
    ev.mkdir()
    np.savez(ev / "samples.npz", arr_0=X[:40, ..., None], labels=y[:40].astype(np.int64))
    shutil.copyfile(root / "runs" / "sit" / "run.json", ev / "run.json")
    return root


@pytest.fixture
def ws(base, tmp_path):
    """A private copy of the base workspace (tests corrupt files in it)."""
    shutil.copytree(base, tmp_path / "ws")
    return tmp_path / "ws"


# ---- share: never deletes, refuses before writing ----------------------------------------------------------
def test_share_missing_source_keeps_destination(ws, capsys):
    refused(capsys, ws, "share", [ws / "nope", ws / "runs", "--seeds", 0], "source", "nope")


def test_share_source_equals_destination(ws, capsys):
    refused(capsys, ws, "share", [ws / "ref", ws / "ref", "--seeds", 0], "overlap")


def test_share_missing_seed_copies_nothing(ws, capsys):
    refused(capsys, ws, "share", [ws / "ref", ws / "out", "--seeds", 0, 1, 7], "seed(s) [7]", "s7")
    assert not (ws / "out").exists()


def test_share_swapped_arguments_keep_the_trained_run(ws, capsys):
    """dst holds a trained run (a checkpoint): refused, even though src (a share) has eval.json files."""
    assert call("share", ws / "ref", ws / "shared", "--seeds", 0) == 0
    (ws / "trained").mkdir()
    shutil.copytree(ws / "runs" / "sit", ws / "trained" / "s0")
    refused(capsys, ws, "share", [ws / "shared", ws / "trained", "--seeds", 0], "trained run", "ckpt")


def test_share_refuses_a_destination_that_is_not_a_previous_share(ws, capsys):
    (ws / "mine" / "notes").mkdir(parents=True)
    (ws / "mine" / "notes" / "todo.txt").write_text("keep me")
    refused(capsys, ws, "share", [ws / "ref", ws / "mine", "--seeds", 0], "not a previous share", "SHARED_FROM")


def test_share_destination_is_a_file(ws, capsys):
    (ws / "afile").write_text("x")
    refused(capsys, ws, "share", [ws / "ref", ws / "afile", "--seeds", 0], "afile", "not a directory")


def test_share_over_a_previous_share_deletes_nothing(ws):
    assert call("share", ws / "ref", ws / "shared", "--seeds", 0, 1) == 0
    s0 = ws / "shared" / "s0"
    assert (s0 / "SHARED_FROM").read_text().strip() == (ws / "ref" / "s0").as_posix()
    assert json.loads((s0 / "eval.json").read_text()) == {"fid": 1.0}
    assert (s0 / "dvclive" / "plots" / "metrics" / "train" / "loss.tsv").is_file()
    assert not (s0 / "ckpt").exists()
    (s0 / "extra.txt").write_text("mine")
    (ws / "ref" / "s0" / "eval.json").write_text(json.dumps({"fid": 3.0}))
    assert call("share", ws / "ref", ws / "shared", "--seeds", 0) == 0  # seed 1 not asked: left as it was
    assert json.loads((s0 / "eval.json").read_text()) == {"fid": 3.0}
    assert (s0 / "extra.txt").read_text() == "mine" and (ws / "shared" / "s1" / "eval.json").is_file()


# ---- sample: the run must hold the asked variant ---------------------------------------------------------------
def test_sample_a_dit_t8_run_as_the_dit_t4_variant(ws, capsys):
    refused(capsys, ws, "sample", ["dit", "sit", "--run", ws / "runs" / "p8", *_sets()],
            "run.json", "sit-p8", "DiT-T/8", "not dit/sit (DiT-T/4, flow)")


def test_sample_a_dit_t8_checkpoint_in_a_dit_t4_run(ws, capsys):
    shutil.copyfile(ws / "runs" / "p8" / "ckpt" / "latest.pt", ws / "runs" / "sit" / "ckpt" / "latest.pt")
    refused(capsys, ws, "sample", ["dit", "sit", "--run", ws / "runs" / "sit", *_sets()],
            "latest.pt", "DiT-T/8", "model.name")


def test_sample_ddpm_variant_on_a_flow_run(ws, capsys):
    refused(capsys, ws, "sample", ["dit", "dit", "--run", ws / "runs" / "sit", *_sets()],
            "holds dit/sit", "not dit/dit", "variant")


def test_sample_sequential_video_mode_on_an_image_run(ws, capsys):
    """Frame-by-frame generation needs a block-causal video model: one line, not a traceback (and not a
    silent fall-back to parallel sampling)."""
    refused(capsys, ws, "sample", ["dit", "sit", "--run", ws / "runs" / "sit", "--video-mode", "sequential",
                                   *_sets()], "video mode 'sequential'", "video model")


def test_sample_corrupt_run_json(ws, capsys):
    (ws / "runs" / "sit" / "run.json").write_text('{"paper": "dit", ')
    refused(capsys, ws, "sample", ["dit", "sit", "--run", ws / "runs" / "sit", *_sets()],
            "run.json", "not valid JSON", "delete it")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "pickle"])
def test_sample_corrupt_checkpoint_gives_no_weights_only_advice(ws, capsys, damage):
    ckpt = ws / "runs" / "sit" / "ckpt" / "latest.pt"
    if damage == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[:1000])
    elif damage == "garbage":
        ckpt.write_bytes(b"garbage\n")
    else:
        torch.save({"model": object}, ckpt)  # not plain data: weights_only refuses it
    err = refused(capsys, ws, "sample", ["dit", "sit", "--run", ws / "runs" / "sit", *_sets()],
                  str(ckpt), "corrupt", "delete it")
    assert "weights_only" not in err and "trust" not in err


def test_sample_writes_all_three_outputs_and_does_not_import_the_train_stage(ws):
    assert call("sample", "dit", "sit", "--run", ws / "runs" / "sit", *_sets("sample.grid=10")) == 0
    run = ws / "runs" / "sit"
    assert {"samples.npz", "samples.json", "grid.png"} <= {p.name for p in run.iterdir()}
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    res = subprocess.run([sys.executable, "-c", "import sys, pipelines.sample; print('pipelines.train' in sys.modules)"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.stdout.strip() == "False", res.stderr


# ---- params and --set: one line naming the key, before anything is written --------------------------------
def test_empty_params_file(ws, capsys):
    (ws / "empty.yaml").write_text("")
    refused(capsys, ws, "train", ["dit", "sit", "--params", ws / "empty.yaml", "--out", ws / "x"], "empty.yaml", "empty")


def test_binary_params_file(ws, capsys):
    (ws / "bin.yaml").write_bytes(bytes(range(256)) * 4)
    refused(capsys, ws, "train", ["dit", "sit", "--params", ws / "bin.yaml", "--out", ws / "x"],
            "bin.yaml", "not a text")


@pytest.mark.parametrize("section, culprit", [
    ("variants: [sit, dit]\n", "'variants' must be a mapping"),
    ("variants:\n  sit: 3\n", "'variants.sit' must be a mapping"),
    ("variants:\n  sit: {model: [1]}\n", "'variants.sit.model' must be a mapping"),
    ("variants:\n  sit: {preset_overrides: 3}\n", "'variants.sit.preset_overrides' must be a mapping"),
    ("model: {name: DiT-T/4}\n", "no 'variants' section"),
])
def test_malformed_variants_section(ws, capsys, section, culprit):
    (ws / "p.yaml").write_text(section)
    refused(capsys, ws, "train", ["dit", "sit", "--params", ws / "p.yaml", "--out", ws / "x"], culprit)


@pytest.mark.parametrize("section", ["train", "sample"])
def test_seed_conflicts_with_set_seed(ws, capsys, section):
    refused(capsys, ws, "train", ["dit", "sit", "--seed", 1, "--out", ws / "x", *_sets(f"{section}.seed=2")],
            "--seed 1", f"{section}.seed=2")


def test_seed_agreeing_with_set_seed_is_fine():
    from pipelines._cli import StageParser, add_run_args, config_from_args

    args = add_run_args(StageParser("train")).parse_args(["dit", "sit", "--seed", "3", "--set", "train.seed=3"])
    cfg = config_from_args(args)
    assert cfg.train.seed == cfg.sample.seed == 3


@pytest.mark.parametrize("assignment, needles", [
    ("train.betas=[0.9", ["train.betas", "not valid YAML"]),
    ("train.betas=[0.9]", ["train.betas", "two numbers"]),
    ("train.betas=[0.9, 0.99, 0.999]", ["train.betas", "two numbers"]),
    ("train.betas=[0.9, 1.5]", ["train.betas", "[0, 1)"]),
    ("model.overrides.foo=1", ["model.overrides.foo", "unexpected keyword argument 'foo'"]),
    ("model.overrides.depth=abc", ["model.overrides.depth", "must be int"]),
    ("model.overrides.patch_size=5", ["model.overrides.patch_size", "not divisible"]),
    ("model.overrides.mixer=[attention, pom, pom]", ["model.overrides.mixer", "does not tile"]),
    ("model.overrides={depth: 2", ["model.overrides", "not valid YAML"]),
    ("model.mixer_kwargs.bogus=1", ["model.mixer_kwargs.bogus", "unexpected keyword argument 'bogus'"]),
    ("model.mixer_kwargs.degree=0", ["model.mixer_kwargs.degree", "degree (0)"]),
    ("model.mixer_kwargs=3", ["model.mixer_kwargs", "must be dict"]),
    ("model.mixer=nomixer", ["model.mixer", "unknown mixer 'nomixer'"]),
    ("train..steps=3", ["train..steps", "dotted key"]),
])
def test_bad_value_inside_set(ws, capsys, assignment, needles):
    extra = ["model.mixer=pom"] if "mixer_kwargs" in assignment else []
    refused(capsys, ws, "train", ["dit", "sit", "--out", ws / "x", *_sets(*extra, assignment)], *needles)


def test_argument_errors_are_one_line(ws, capsys):
    refused(capsys, ws, "train", ["dit", "sit", "--seed", "abc"], "--seed", "invalid int value")


# ---- output paths ------------------------------------------------------------------------------------------------
def test_train_out_is_a_file(ws, capsys):
    (ws / "afile").write_text("x")
    refused(capsys, ws, "train", ["dit", "sit", "--out", ws / "afile", *_sets()], "afile", "not a directory")
    refused(capsys, ws, "train", ["dit", "sit", "--out", ws / "afile" / "run", *_sets()], "afile", "is a file")


def test_train_out_not_writable(ws, capsys):
    if os.geteuid() == 0:  # root writes through permission bits: take a directory the kernel refuses
        target = Path("/sys/diffrepro-not-writable")
    else:
        (ws / "ro").mkdir()
        (ws / "ro").chmod(0o555)
        target = ws / "ro" / "run"
    try:
        refused(capsys, ws, "train", ["dit", "sit", "--out", target, *_sets()], str(target))
    finally:
        if (ws / "ro").exists():
            (ws / "ro").chmod(0o755)
    assert not target.exists()


def test_train_corrupt_run_json_is_rewritten_not_a_block(ws, capsys):
    """A corrupt run.json never blocks a run for good: one warning line, and it is rewritten from the run's
    config (the checkpoint's own config is still compared). tests/test_train.py covers resuming."""
    run_json = ws / "runs" / "sit" / "run.json"
    run_json.write_text("{oops")
    capsys.readouterr()
    code = call("train", "dit", "sit", "--out", ws / "runs" / "sit", *_sets())
    err = capsys.readouterr().err.strip()
    assert code in (0, None) and len(err.splitlines()) == 1 and "run.json" in err and "rewritten" in err
    assert json.loads(run_json.read_text())["variant"] == "sit"


# ---- evaluate ----------------------------------------------------------------------------------------------------
def _write(path: Path, what: str):
    if what == "garbage":
        path.write_bytes(b"not an npz at all\n")
    elif what == "empty file":
        path.write_bytes(b"")
    elif what == "truncated":
        path.write_bytes(path.read_bytes()[:1500])
    elif what == "no samples":
        np.savez(path, arr_0=np.zeros((0, 32, 32, 1), np.uint8), labels=np.zeros(0, np.int64))
    elif what == "floats":
        np.savez(path, arr_0=np.zeros((8, 32, 32, 1), np.float32))


@pytest.mark.parametrize("what, needle", [("garbage", "not a readable .npz"), ("empty file", "not a readable .npz"),
                                          ("truncated", "not a readable .npz"), ("no samples", "holds 0 samples"),
                                          ("floats", "must be uint8")])
def test_evaluate_bad_samples_npz(ws, capsys, what, needle):
    _write(ws / "ev" / "samples.npz", what)
    refused(capsys, ws, "evaluate", [ws / "ev", "--featnet", ws / "featnet"], "samples.npz", needle)


def test_evaluate_corrupt_ref_stats(ws, capsys):
    (ws / "featnet" / "ref_stats.npz").write_bytes(b"\x00" * 64)
    refused(capsys, ws, "evaluate", [ws / "ev", "--featnet", ws / "featnet"], "ref_stats.npz", "corrupt",
            f"--out {ws / 'featnet'}")


def test_evaluate_corrupt_feature_network(ws, capsys):
    (ws / "featnet" / "mnist-cnn.pt").write_bytes(b"garbage")
    err = refused(capsys, ws, "evaluate", [ws / "ev", "--featnet", ws / "featnet"], "mnist-cnn.pt", "corrupt")
    assert "weights_only" not in err


@pytest.mark.parametrize("arg, fix", [
    ("nofeat", "--out {ws}/nofeat`"),                  # a directory not made yet: make exactly that one
    ("nofeat/mnist-cnn.pt", "--out {ws}/nofeat`"),     # the standard file name: its directory
    ("featnet/other.pt", "pass the directory"),        # a name the stage never writes: no rebuild advice
])
def test_evaluate_missing_featnet_suggests_a_fix_that_fixes_it(ws, capsys, arg, fix):
    err = refused(capsys, ws, "evaluate", [ws / "ev", "--featnet", ws / arg], "not found", fix.format(ws=ws))
    if "--out" in fix:  # following the advice makes the very file evaluate looks for
        from common.metrics.featnet import _locate

        d, path = _locate(ws / arg, "mnist-cnn.pt", ".pt")
        assert str(path) in err and path.parent == d


def test_evaluate_corrupt_run_json_and_wrong_variant(ws, capsys):
    refused(capsys, ws, "evaluate", [ws / "ev", "--featnet", ws / "featnet", "--paper", "dit", "--variant", "dit"],
            "holds dit/sit", "not dit/dit")
    (ws / "ev" / "run.json").write_text("{")
    refused(capsys, ws, "evaluate", [ws / "ev", "--featnet", ws / "featnet"], "run.json", "not valid JSON")


def test_evaluate_writes_nothing_when_one_output_cannot_be_written(ws, capsys):
    shutil.copytree(ws / "ev", ws / "ev2")
    (ws / "ev2" / "eval.json").mkdir()
    refused(capsys, ws, "evaluate", [ws / "ev", ws / "ev2", "--featnet", ws / "featnet"], "ev2", "eval.json")
    assert not (ws / "ev" / "eval.json").exists()
    assert call("evaluate", ws / "ev", "--featnet", ws / "featnet" / "mnist-cnn.pt", "--variant", "sit") == 0
    assert json.loads((ws / "ev" / "eval.json").read_text())["fid_samples"] == 40


# ---- featurenet, bench, report, describe, results --------------------------------------------------------------
@pytest.mark.parametrize("text, needles", [
    (None, ["params file not found"]),
    (b"\xff\xfe\x00binary", ["not a text"]),
    ("featnet: [1]\n", ["'featnet' must be a mapping"]),
    ("featnet: {epochs: x}\n", ["featnet.epochs", "int"]),
    ("featnet: {epochs: -1}\n", ["featnet.epochs", ">= 1"]),
    ("featnet: {channels: abc}\n", ["featnet.channels"]),
    ("featnet: {lr: 0}\n", ["featnet.lr", "> 0"]),
    ("featnet: {size: 4}\n", ["featnet.size", "too small"]),
    ("featnet: {epochz: 3}\n", ["featnet.epochz", "unknown"]),
])
def test_featurenet_params_errors(ws, capsys, text, needles):
    p = ws / "p.yaml"
    if text is not None:
        p.write_bytes(text if isinstance(text, bytes) else text.encode())
    refused(capsys, ws, "featurenet", ["--out", ws / "fo", "--params", p], *needles)
    assert not (ws / "fo").exists()


def test_featurenet_out_is_a_file(ws, capsys):
    (ws / "afile").write_text("x")
    refused(capsys, ws, "featurenet", ["--out", ws / "afile"], "afile", "is a file")


@pytest.mark.parametrize("text, needles", [
    (None, ["params file", "not found"]),
    (b"\x00\xff", ["params file", "not a text"]),
    ("bench: [1]\n", ["'bench'"]),
    ("bench: {tokens: 5}\n", ["bench.tokens"]),
    ("bench: {tokens: [64, x]}\n", ["bench.tokens"]),
    ("bench: {dim: x}\n", ["bench.dim"]),
    ("bench: {max_seconds: 0}\n", ["bench.max_seconds"]),
    ("bench: {dimm: 3}\n", ["bench.dimm"]),
])
def test_bench_params_errors(ws, capsys, text, needles):
    p = ws / "p.yaml"
    if text is not None:
        p.write_bytes(text if isinstance(text, bytes) else text.encode())
    refused(capsys, ws, "bench", ["pom", "--out", ws / "b.json", "--params", p], *needles)


def test_bench_out_is_a_directory(ws, capsys):
    refused(capsys, ws, "bench", ["pom", "--out", ws / "ev", "--params", ROOT / "papers/pom/params.yaml"],
            "ev", "is a directory")


@pytest.mark.parametrize("argv, needles", [
    (["--param", "runs_dir"], ["--param 'runs_dir'", "key=value"]),
    (["--param", "variants=[sit"], ["--param 'variants=[sit'", "not valid YAML"]),
    (["--notebooks", "nope"], ["notebook 'nope'", "not found"]),
])
def test_report_bad_arguments(ws, capsys, argv, needles):
    refused(capsys, ws, "report", ["toy", "--root", ws, *argv], *needles)


@pytest.mark.parametrize("sets, needles", [
    (["depth=abc"], ["'depth'", "must be int"]),
    (["foo=1"], ["'foo'", "unexpected keyword"]),
    (["mixer_kwargs=[1"], ["mixer_kwargs", "not valid YAML"]),
    (["mixer=pom", "mixer_kwargs.degree=0"], ["'mixer_kwargs.degree'", "degree (0)"]),
    (["mixer=nope"], ["'mixer'", "unknown mixer 'nope'"]),
    (["patch_size=3"], ["'patch_size'", "not divisible"]),
    (["depth"], ["--set", "key=value"]),
])
def test_describe_bad_set(ws, capsys, sets, needles):
    refused(capsys, ws, "describe", ["DiT-T/4", *[a for s in sets for a in ("--set", s)]], *needles)


def test_results_corrupt_eval_json(ws, capsys):
    (ws / "rr" / "sit" / "s0").mkdir(parents=True)
    (ws / "rr" / "sit" / "s0" / "eval.json").write_text("{")
    refused(capsys, ws, "results", ["dit", "--runs", ws / "rr", "--out", ws / "m" / "metrics.json"],
            "eval.json", "not valid JSON")


# ---- --debug, Ctrl-C, atomic writes ---------------------------------------------------------------------------
def test_debug_shows_the_traceback(ws):
    from common.config import ConfigError

    with pytest.raises(ConfigError, match="model.overrides.depth"):
        call("train", "dit", "sit", "--out", ws / "x", *_sets("model.overrides.depth=abc"), "--debug")


def test_bugs_keep_their_traceback(monkeypatch, ws):
    """Only a user's mistake is turned into one line: a plain bug (here a ZeroDivisionError) is not hidden."""
    import pipelines.sample

    monkeypatch.setattr(pipelines.sample, "generate", lambda *a, **kw: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        call("sample", "dit", "sit", "--run", ws / "runs" / "sit", *_sets())


def _same(a, b) -> bool:
    """Checkpoint contents equal bit for bit (tensors, nested dicts and lists, plain values)."""
    if isinstance(a, dict):
        return set(a) == set(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def test_ctrl_c_prints_one_line_and_resume_is_exact(tmp_path):
    steps = 30
    argv = ["dit", "sit", *_sets(f"train.steps={steps}", "train.ckpt_every=1")]
    env = dict(os.environ, DVCLIVE_OPEN="false", OMP_NUM_THREADS="1")
    env.pop("RANK", None)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "pipelines.train", *argv, "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    try:
        while not (out / "ckpt" / "latest.pt").exists():
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-2000:]
            time.sleep(0.02)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=60)[1].strip()
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert err == "interrupted; re-run the same command to resume"
    step = torch.load(out / "ckpt" / "latest.pt", weights_only=True)["step"]
    assert 1 <= step < steps, "not interrupted mid-run"
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "resuming" in res.stdout, res.stderr[-2000:]
    ref = [sys.executable, "-m", "pipelines.train", *argv, "--out", str(tmp_path / "ref")]
    assert subprocess.run(ref, cwd=ROOT, env=env, capture_output=True, timeout=300).returncode == 0  # never interrupted
    a, b = (torch.load(d / "ckpt" / "latest.pt", weights_only=True) for d in (out, tmp_path / "ref"))
    assert all(_same(a[k], b[k]) for k in ("model", "ema", "opt", "step", "rng"))  # "stats" holds wall times


def test_ctrl_c_inside_a_library_cleanup_is_still_an_interruption(capsys):
    """torch.save's zip writer answers a Ctrl-C mid-write with its own RuntimeError on cleanup."""
    from pipelines._cli import friendly_errors

    @friendly_errors
    def main(argv=None):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos") from None

    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 130
    assert capsys.readouterr().err.strip() == "interrupted; re-run the same command to resume"


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    from common.io import atomic_write, write_json

    path = tmp_path / "eval.json"
    write_json(path, {"fid": 1.0})
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(path) as f:
            f.write(b'{"fid": ')
            raise KeyboardInterrupt
    assert json.loads(path.read_text()) == {"fid": 1.0}
    assert [p.name for p in tmp_path.iterdir()] == ["eval.json"]  # no temporary file left behind
