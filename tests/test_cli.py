"""The stage CLIs as a user runs them: `pipelines.describe`, bad names -> one line and a non-zero exit,
and `pipelines.sample` writing samples.npz / samples.json / grid.png from a tiny trained run."""
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import common.data

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--set", "model.name=DiT-M/8", "--set", "model.overrides.depth=2", "--set", "model.overrides.hidden_size=32",
        "--set", "train.batch_size=8", "--set", "train.threads=1", "--set", "train.log_every=1"]


@functools.lru_cache(maxsize=1)
def _mnist5k_once():
    return _ORIG_MNIST5K()


_ORIG_MNIST5K = common.data._mnist5k_arrays


@pytest.fixture(autouse=True)
def _parse_mnist5k_once(monkeypatch):
    """In-process cases parse the mnist5k CSV once (about 8 s per parse on 2 cores)."""
    monkeypatch.setattr(common.data, "_mnist5k_arrays", lambda: tuple(a.copy() for a in _mnist5k_once()))


def cli(*args, timeout=300):
    env = dict(os.environ, TRITON_INTERPRET="1", DVCLIVE_OPEN="false", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_describe_dit_xl2():
    res = cli("pipelines.describe", "DiT-XL/2")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["params"] == 675_129_632
    assert info["trainable_params"] == 675_129_632 - 256 * 1152  # all but the frozen position embedding
    assert info["gmacs"] == pytest.approx(118.64, rel=2e-3)  # DiT paper Table 4 "Gflops"
    assert info["tokens"] == 256 and info["mixers"] == ["attention"]


def _one_line_error(res, *needles):
    assert res.returncode not in (0, None)
    err = res.stderr.strip()
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    for n in needles:
        assert n in err, err


def test_unknown_model():
    _one_line_error(cli("pipelines.describe", "DiT-Q/3"), "unknown model 'DiT-Q/3'", "DiT-XL/2")


@pytest.mark.parametrize("args, needles", [
    (["nopaper", "sit"], ["unknown paper 'nopaper'", "dit"]),
    (["dit", "novariant"], ["unknown variant 'novariant'", "sit"]),
    (["dit", "sit", "--set", "sample.sampler=warp"], ["unknown sampler 'warp'", "euler"]),
    (["dit", "sit", "--set", "model.name=DiT-Q/3"], ["unknown model 'DiT-Q/3'"]),
    (["dit", "sit", "--set", "train.stepz=3"], ["'train.stepz'"]),
    (["dit", "sit", "--set", "train.lr=fast"], ["'train.lr'"]),
    (["dit", "sit", "--set", "train.steps=0"], ["'train.steps'", "out of range"]),
    (["dit", "sit", "--set", "model.mixer=nomixer"], ["unknown mixer 'nomixer'"]),
])
def test_train_bad_names_in_process(tmp_path, capsys, args, needles):
    """Same code path as the CLI (`main` is wrapped by `friendly_errors`), without a process per case."""
    from pipelines.train import main

    with pytest.raises(SystemExit) as e:
        main(args + ["--out", str(tmp_path / "run")])
    assert e.value.code not in (0, None)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    for n in needles:
        assert n in err, err
    assert not (tmp_path / "run").exists()


def test_train_unknown_variant_subprocess(tmp_path):
    res = cli("pipelines.train", "dit", "novariant", "--out", str(tmp_path / "run"))
    _one_line_error(res, "unknown variant 'novariant'")
    assert not (tmp_path / "run").exists()


def test_sample_unknown_sampler(tmp_path, capsys):
    from pipelines.sample import main

    with pytest.raises(SystemExit) as e:
        main(["dit", "sit", "--run", str(tmp_path), "--set", "sample.sampler=ddim"])
    assert e.value.code not in (0, None)
    err = capsys.readouterr().err.strip()
    assert "sampler 'ddim' does not fit objective 'flow'" in err and len(err.splitlines()) == 1


def test_sample_without_checkpoint(tmp_path):
    _one_line_error(cli("pipelines.sample", "dit", "sit", "--run", str(tmp_path)), "no checkpoint", "train the run first")


@pytest.mark.parametrize("variant, sampler", [("dit", "ddim")])
def test_train_then_sample(tmp_path, variant, sampler):
    run = tmp_path / "run"
    res = cli("pipelines.train", "dit", variant, "--out", str(run), *TINY, "--set", "train.steps=3",
              "--set", "train.ckpt_every=3")
    assert res.returncode == 0, res.stderr[-2000:]
    assert (run / "ckpt" / "latest.pt").exists() and (run / "train.json").exists()

    res = cli("pipelines.sample", "dit", variant, "--run", str(run), *TINY, "--set", "sample.num_samples=12",
              "--set", "sample.batch_size=5", "--set", "sample.steps=2", "--set", f"sample.sampler={sampler}",
              "--set", "sample.grid=10", "--set", "sample.cfg_scale=1.5")
    assert res.returncode == 0, res.stderr[-2000:]
    with np.load(run / "samples.npz") as f:
        arr, labels = f["arr_0"], f["labels"]
    assert arr.dtype == np.uint8 and arr.shape == (12, 32, 32, 1)
    assert labels.dtype == np.int64 and labels.tolist() == [i % 10 for i in range(12)]
    assert arr.std() > 0
    meta = json.loads((run / "samples.json").read_text())
    assert {"sampler", "steps", "cfg_scale", "ema", "num_samples", "sample_s_per_img", "seed"} <= set(meta)
    assert (meta["sampler"], meta["steps"], meta["cfg_scale"], meta["ema"], meta["num_samples"]) == (
        sampler, 2, 1.5, True, 12)
    assert meta["sample_s_per_img"] > 0
    from PIL import Image

    with Image.open(run / "grid.png") as im:
        assert im.format == "PNG"
        assert im.size == (10 * 33 + 1, 33 + 1)  # one row of 10 classes, 32 px + 1 px padding
