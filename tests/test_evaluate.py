"""The evaluate and results stages on tiny fake runs (real mnist5k digits as "samples") with a feature
network trained for a few dozen steps."""
import json
import sys
import types

import numpy as np
import pytest
from PIL import Image

from common.data import mnist5k_split
from common.metrics import FeatNetConfig, save_featnet, train_featnet, validate_metrics, write_reference
from common.metrics.schema import mean_std
from pipelines import evaluate, results


@pytest.fixture(scope="module")
def featnet_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("featnet")
    cfg = FeatNetConfig(channels=(8, 16, 32), feat_dim=32, max_steps=80, batch_size=64, lr=1e-2)
    net, metrics = train_featnet(cfg, log=None, eval_train=False)
    assert metrics["heldout_accuracy"] > 0.5     # a few steps already learn digits
    save_featnet(net, out / "mnist-cnn.pt")
    write_reference(net, out)
    return out


def _fake_run(run, images, labels, seed=0, meta=None, train=None):
    run.mkdir(parents=True)
    np.savez(run / "samples.npz", arr_0=images, labels=labels.astype(np.int64))
    (run / "samples.json").write_text(json.dumps({
        "sampler": "euler", "steps": 50, "cfg_scale": 2.0, "ema": True, "num_samples": len(images),
        "sample_s_per_img": 0.01, "seed": seed, **(meta or {})}))
    (run / "train.json").write_text(json.dumps({
        "params": 1000, "gflops": 0.1, "train_steps": 100, "train_img_per_s": 50.0 + seed,
        "train_seconds": 2.0, "model": "DiT-T/4", "objective": "flow", "dataset": "mnist5k",
        "preset": "tiny", **(train or {})}))
    Image.fromarray(images[:4].reshape(-1, images.shape[2])).save(run / "grid.png")
    return run


@pytest.fixture(scope="module")
def heldout():
    X, y = mnist5k_split("heldout")                 # sorted by class: shuffle once
    idx = np.random.default_rng(0).permutation(len(y))
    return X[idx, ..., None], y[idx]                # (500, 32, 32, 1) uint8


def test_evaluate_real_digits_beat_noise(featnet_dir, heldout, tmp_path):
    X, y = heldout
    rng = np.random.default_rng(0)
    good = _fake_run(tmp_path / "good", X[:200], y[:200])
    wrong = _fake_run(tmp_path / "wrong", X[:200], (y[:200] + 1) % 10)          # mislabelled
    noise = _fake_run(tmp_path / "noise", rng.integers(0, 256, X[:200].shape, dtype=np.uint8), y[:200])
    evaluate.main([str(good), str(wrong), str(noise), "--featnet", str(featnet_dir)])
    ev = {r.name: json.loads((r / "eval.json").read_text()) for r in (good, wrong, noise)}
    g = ev["good"]
    for k in ("fid", "kid", "precision", "recall", "class_consistency"):
        assert isinstance(g[k], float), k
    assert g["fid_features"] == "mnist-cnn" and g["fid_samples"] == 200
    assert (g["sampler"], g["sample_steps"], g["cfg_scale"], g["ema"]) == ("euler", 50, 2.0, True)
    assert (g["dataset"], g["preset"]) == ("mnist5k", "tiny")
    assert g["featnet"].startswith("mnist-cnn@")
    assert g["eval_seconds"] > 0 and g["eval_threads"] >= 1      # the run's CPU budget (pipelines.budget)
    assert ev["noise"]["fid"] > 10 * g["fid"]
    assert ev["noise"]["precision"] < g["precision"]
    assert g["class_consistency"] > ev["wrong"]["class_consistency"] + 0.4
    assert ev["good"]["fid"] == ev["wrong"]["fid"]   # labels do not enter FID


def test_evaluate_video_run(featnet_dir, heldout, tmp_path):
    X, y = heldout
    vids = np.stack([np.roll(X[:12], s, axis=2) for s in range(4)], axis=1)      # (12, 4, 32, 32, 1)
    run = _fake_run(tmp_path / "vid", vids, y[:12], train={"dataset": None})
    (res,) = evaluate.main([str(run), "--featnet", str(featnet_dir)])
    assert res["frames"] == 4 and res["fid_samples"] == 48 and res["num_samples"] == 12
    assert 0.0 <= res["temporal_consistency"] <= 1.0
    assert res["frame_fid"] == res["fid"] > 0


def test_evaluate_missing_samples_names_file(featnet_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        evaluate.main([str(tmp_path / "empty"), "--featnet", str(featnet_dir)])
    assert "samples.npz" in capsys.readouterr().err


def _eval(fid, kid=0.01, **kw):
    return {"fid": fid, "kid": kid, "precision": 0.8, "recall": 0.7, "class_consistency": 0.9,
            "fid_features": "mnist-cnn", "fid_samples": 200, "sampler": "euler", "sample_steps": 50,
            "cfg_scale": 2.0, "ema": True, "sample_s_per_img": 0.01, "num_samples": 200, "dataset": "mnist5k",
            "preset": "tiny", **kw}


@pytest.fixture
def fake_paper(monkeypatch):
    mod = types.ModuleType("papers.fakepaper")
    mod.TITLE, mod.ARXIV = "A Fake Paper", "2411.12663"
    seen = {}

    def claims(rows, extra):
        seen["extra"] = extra
        by = {r["variant"]: r for r in rows}
        a, b = by["pom"], by["attn"]
        return [{"claim": "PoM has lower FID than attention", "paper": "Table 2",
                 "measured": f"{mean_std(a['fid'], a['fid_std'])} vs {mean_std(b['fid'], b['fid_std'])}",
                 "compares": ["pom", "attn"], "rule": "a measurement of the test",
                 "values": {"pom": a["fid_per_seed"], "attn": b["fid_per_seed"]},
                 "gate": {"passed": None, "detail": "none"}, "verdict": "inconclusive"}]

    mod.claims = claims
    monkeypatch.setitem(sys.modules, "papers.fakepaper", mod)
    return seen


def test_results_aggregates_two_seeds(tmp_path, monkeypatch, heldout, fake_paper):
    X, y = heldout
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs" / "fakepaper"
    for variant, fids in (("pom", (10.0, 11.0)), ("attn", (20.0, 21.0))):
        for seed, fid in enumerate(fids):
            run = _fake_run(runs / variant / f"s{seed}", X[:8], y[:8], seed=seed)
            (run / "eval.json").write_text(json.dumps(_eval(fid, kid=0.01 * (seed + 1))))
    out_dir = tmp_path / "papers" / "fakepaper" / "results"
    out_dir.mkdir(parents=True)
    (out_dir / "bench.json").write_text(json.dumps({"pom": {"ms": 1.0}}))
    doc = results.main(["fakepaper", "--runs", "runs/fakepaper", "--out",
                        "papers/fakepaper/results/metrics.json", "--notebooks", "samples"])
    assert validate_metrics(doc) == []
    assert json.loads((out_dir / "metrics.json").read_text()) == doc
    rows = {r["variant"]: r for r in doc["rows"]}
    pom = rows["pom"]
    assert pom["fid"] == pytest.approx(10.5) and pom["fid_std"] == pytest.approx(np.std([10, 11], ddof=1))
    assert pom["kid"] == pytest.approx(0.015) and pom["seeds"] == [0, 1]
    assert pom["train_img_per_s"] == pytest.approx(50.5) and pom["params"] == 1000
    assert (pom["sampler"], pom["sample_steps"], pom["fid_features"]) == ("euler", 50, "mnist-cnn")
    assert pom["thumbnail"] == "papers/fakepaper/results/thumbs/pom.png"
    assert (tmp_path / pom["thumbnail"]).is_file()
    assert (doc["title"], doc["arxiv"], doc["preset"], doc["dataset"]) == ("A Fake Paper", "2411.12663",
                                                                           "tiny", "mnist5k")
    assert doc["toy_scale"] is True
    assert doc["claims"][0]["verdict"] == "inconclusive" and doc["rule"].startswith("One rule")
    assert fake_paper["extra"] == {"bench": {"pom": {"ms": 1.0}}}
    assert doc["notebooks"] == {"samples": "papers/fakepaper/results/notebooks/samples.html"}
    assert pom["sample_seconds"] == pytest.approx(2.0)  # 0.01 s/img x 200 samples
    readme = (out_dir / "README.md").read_text()  # the same numbers as Markdown, for GitHub readers
    assert "| `pom` | mnist5k | 10.50 ± 0.71 (n=200) |" in readme
    assert "PoM has lower FID than attention" in readme and "**inconclusive**" in readme
    assert pom["fid_per_seed"] == pytest.approx([pom["fid"] - 0.5, pom["fid"] + 0.5])  # the rule reads these
    assert "toy scale" in readme and "[samples](notebooks/samples.html)" in readme


def test_results_rejects_protocol_mismatch(tmp_path, monkeypatch, heldout, fake_paper, capsys):
    X, y = heldout
    monkeypatch.chdir(tmp_path)
    for seed, steps in enumerate((50, 100)):
        run = _fake_run(tmp_path / "runs" / "fakepaper" / "pom" / f"s{seed}", X[:8], y[:8], seed=seed)
        (run / "eval.json").write_text(json.dumps(_eval(10.0, sample_steps=steps)))
    with pytest.raises(SystemExit):
        results.main(["fakepaper", "--runs", "runs/fakepaper", "--out", "out/metrics.json"])
    assert "sample_steps" in capsys.readouterr().err
