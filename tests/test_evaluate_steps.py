"""pipelines.evaluate_steps: every kept checkpoint of a tiny run sampled and evaluated; the last one agrees
with the sample + evaluate stages on the same checkpoint; bad runs get one line and nothing written."""
import json

import pytest

from common.metrics import FeatNetConfig, save_featnet, train_featnet, write_reference
from pipelines import evaluate, evaluate_steps, sample
from pipelines.train import main as train_main

SETS = ["model.name=DiT-M/8", "model.overrides.depth=2", "model.overrides.hidden_size=32", "train.batch_size=8",
        "train.log_every=1", "train.threads=1", "train.lr=1e-3", "train.steps=4", "train.keep_every=2",
        "sample.num_samples=20", "sample.batch_size=20", "sample.steps=2", "sample.grid=0"]


def _sets(*extra):
    return [a for s in (*SETS, *extra) for a in ("--set", s)]


@pytest.fixture(scope="module")
def featnet_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("featnet")
    cfg = FeatNetConfig(channels=(8, 16, 32), feat_dim=32, max_steps=30, batch_size=64, lr=1e-2)
    net, _ = train_featnet(cfg, log=None, eval_train=False)
    save_featnet(net, out / "mnist-cnn.pt")
    write_reference(net, out)
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train_main(["dit", "sit", "--out", str(out), *_sets()])
    return out


def test_every_kept_checkpoint_is_evaluated(run, featnet_dir):
    doc = evaluate_steps.main(["dit", "sit", "--run", str(run), "--featnet", str(featnet_dir), *_sets()])
    assert json.loads((run / "eval_steps.json").read_text()) == json.loads(json.dumps(doc))
    rows = doc["checkpoints"]
    assert [r["step"] for r in rows] == [2, 4]
    for r in rows:
        assert r["fid"] > 0 and 0 <= r["class_consistency"] <= 1
        assert (r["fid_features"], r["fid_samples"], r["sampler"], r["sample_steps"], r["ema"]) == \
            ("mnist-cnn", 20, "euler", 2, True)
        assert r["featnet"].startswith("mnist-cnn@") and r["dataset"] == "mnist5k"
    assert rows[0]["fid"] != rows[1]["fid"]
    # step 4 is also latest.pt: the sample + evaluate stages give the same numbers
    sample.main(["dit", "sit", "--run", str(run), *_sets()])
    (ev,) = evaluate.main([str(run), "--featnet", str(featnet_dir)])
    for k in ("class_consistency", "fid_samples", "reference", "featnet", "sampler", "cfg_scale", "ema"):
        assert ev[k] == rows[1][k], k
    for k in ("fid", "kid", "precision", "recall"):  # the same samples; float rounding may differ
        assert ev[k] == pytest.approx(rows[1][k], rel=1e-6, abs=1e-9), k


def test_a_run_without_kept_checkpoints(tmp_path, featnet_dir, capsys):
    train_main(["dit", "sit", "--out", str(tmp_path), *_sets("train.keep_every=0", "train.steps=1")])
    before = sorted(p.name for p in tmp_path.rglob("*"))
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        evaluate_steps.main(["dit", "sit", "--run", str(tmp_path), "--featnet", str(featnet_dir), *_sets()])
    err = capsys.readouterr().err
    assert e.value.code != 0 and "no kept checkpoints" in err and str(tmp_path) in err
    assert len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_a_run_of_another_variant(run, featnet_dir, capsys):
    with pytest.raises(SystemExit) as e:
        evaluate_steps.main(["dit", "dit", "--run", str(run), "--featnet", str(featnet_dir), *_sets(),
                             "--set", "sample.sampler=ddim"])
    err = capsys.readouterr().err
    assert e.value.code != 0 and "holds dit/sit" in err and "not dit/dit" in err and len(err.strip().splitlines()) == 1
