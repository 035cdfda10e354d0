"""Calibration (common.metrics.calibration, pipelines.calibrate): real-vs-real FID as a noise floor, the video
gate's rule, the stage's document and its errors, and the held-out clips it measures never being trained on."""
import hashlib
import json

import numpy as np
import pytest

from common.data import video as video_data
from common.metrics import FeatNet, FeatNetConfig, MetricsError, MnistCNN, save_featnet
from common.metrics.calibration import (
    CalibrationConfig,
    _disjoint_pairs,
    calibrate_video,
    check_video_gate,
    load_calibration,
    real_vs_real_fid,
    validate_calibration,
    video_gate,
)
from common.metrics.fid import fid_from_features
from pipelines import calibrate as stage

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_real_vs_real_fid_is_a_floor_that_falls_with_n():
    f = np.random.default_rng(0).normal(size=(4000, 8))    # one distribution: every gap is sampling noise
    assert abs(fid_from_features(f[:500], f[:500])) < 1e-6
    fids = real_vs_real_fid(f, (50, 200, 1000), pairs=4, seed=0)
    means = [np.mean(fids[n]) for n in (50, 200, 1000)]
    assert all(len(v) == 4 and min(v) > 0 for v in fids.values())
    assert means[0] > means[1] > means[2]
    assert fids == real_vs_real_fid(f, (50, 200, 1000), pairs=4, seed=0), "a fixed seed gives the same floor"


def test_pairs_are_disjoint_and_need_room():
    for a, b in _disjoint_pairs(100, 50, pairs=3, seed=1):
        assert len(a) == len(b) == 50 and not set(a) & set(b)
    with pytest.raises(MetricsError, match="two disjoint sets of 60 need 120"):
        list(_disjoint_pairs(100, 60, pairs=1, seed=0))


def test_gate_rule():
    gate = video_gate(frame_fid=1.5, temporal=0.7, class_cons=0.5)
    assert gate == pytest.approx({"frame_fid_max": 3.0, "class_consistency_min": 0.45, "temporal_consistency_min": 0.63})
    assert check_video_gate(gate, 3.0, 0.45, 0.63) == {"frame_fid": True, "class_consistency": True,
                                                      "temporal_consistency": True}
    assert check_video_gate(gate, 3.01, 0.44, 0.62) == {"frame_fid": False, "class_consistency": False,
                                                        "temporal_consistency": False}


class StubNet:
    """Reads the class from pixel (0, 0) of each frame; features are the other pixels."""

    def extract(self, frames):
        return np.asarray(frames, dtype=np.float64).reshape(len(frames), -1)[:, 1:]

    def classify(self, frames):
        return np.asarray(frames)[:, 0, 0].astype(np.int64)


def test_calibrate_video_measures_real_clips_and_sets_the_gate():
    rng = np.random.default_rng(0)
    n, f = 40, 4
    labels = np.arange(n) % 10
    videos = rng.integers(0, 256, size=(n, f, 3, 3), dtype=np.uint8)
    shown = np.stack([labels, labels, labels, (labels + 1) % 10], 1)  # the last frame shows another digit
    videos[:, :, 0, 0] = shown
    out = calibrate_video(StubNet(), videos, labels, clips=15, pairs=3, seed=0)
    assert out["class_consistency"] == pytest.approx(0.75) and out["temporal_consistency"] == pytest.approx(2 / 3)
    assert out["frame_fid_real_vs_real"] > 0 and (out["frames"], out["clips"], out["pairs"]) == (4, 15, 3)
    assert out["gate"] == pytest.approx(video_gate(out["frame_fid_real_vs_real"], 2 / 3, 0.75))
    assert out["real_clips_pass"] == {"frame_fid": True, "class_consistency": True, "temporal_consistency": True}


@pytest.fixture(scope="module")
def featnet_dir(tmp_path_factory):
    """A small untrained mnist-cnn: the stage's numbers are then arbitrary but must still be well formed."""
    import torch

    torch.manual_seed(0)
    cfg = FeatNetConfig(channels=(4, 8, 8), feat_dim=8)
    out = tmp_path_factory.mktemp("featnet")
    save_featnet(FeatNet(MnistCNN(cfg.channels, cfg.feat_dim), cfg), out / "mnist-cnn.pt")
    return out


def test_cli_writes_a_valid_document(featnet_dir, tmp_path):
    out = tmp_path / "calibration.json"
    doc = stage.main(["--featnet", str(featnet_dir), "--out", str(out)])
    digest = hashlib.sha256((featnet_dir / "mnist-cnn.pt").read_bytes()).hexdigest()[:12]
    assert load_calibration(out, featnet=digest) == doc == json.loads(out.read_text())
    cfg = CalibrationConfig()
    assert doc["feature_space"] == "mnist-cnn" and doc["featnet"] == digest
    image, video = doc["image"], doc["video"]["moving_mnist"]
    assert image["dataset"] == "mnist5k" and image["pairs"] == cfg.pairs >= 3
    assert list(image["fid_real_vs_real"]) == ["300", "500", "1000"] == list(image["fid_real_vs_real_std"])
    assert (video["frames"], video["clips"], video["split"]) == (8, 200, "heldout")
    assert video["gate"] == pytest.approx(video_gate(video["frame_fid_real_vs_real"], video["temporal_consistency"],
                                                       video["class_consistency"]))
    with pytest.raises(MetricsError, match="measured with feature net .* not 000000000000"):
        load_calibration(out, featnet="000000000000")


def test_cli_refuses_a_missing_featnet(tmp_path, capsys):
    out = tmp_path / "calibration.json"
    with pytest.raises(SystemExit) as e:
        stage.main(["--featnet", str(tmp_path / "nope"), "--out", str(out)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "mnist-cnn.pt" in err and "not found" in err and not out.exists()


def test_load_calibration_errors(tmp_path):
    path = tmp_path / "calibration.json"
    with pytest.raises(MetricsError, match=r"not found\. Fix: run `dvc repro dvc.yaml:calibrate`"):
        load_calibration(path)
    doc = {"feature_space": "mnist-cnn", "featnet": "abc",
           "image": {"fid_real_vs_real": {"300": 1.0}, "fid_real_vs_real_std": {"300": 0.1}},
           "video": {"moving_mnist": {"frame_fid_real_vs_real": 0.5, "class_consistency": 0.3,
                                      "temporal_consistency": 0.7, "gate": video_gate(0.5, 0.7, 0.3)}}}
    assert validate_calibration(doc) is doc
    doc["video"]["moving_mnist"]["temporal_consistency"] = 1.5
    path.write_text(json.dumps(doc))
    with pytest.raises(MetricsError, match=r"'video.moving_mnist.temporal_consistency' = 1.5 is not in \[0, 1\]"):
        load_calibration(path)
    doc["image"]["fid_real_vs_real"]["300"] = float("nan")
    with pytest.raises(MetricsError, match=r"'image.fid_real_vs_real.300' = nan is not finite"):
        validate_calibration(doc)
    del doc["image"]
    with pytest.raises(MetricsError, match="lacks key 'image'"):
        validate_calibration(doc)


def test_heldout_clips_are_made_from_heldout_digits_only(monkeypatch):
    """The clips calibration measures never show a digit the video models train on (`train` split)."""
    assert CalibrationConfig().video_split == "heldout"
    before = {s: video_data.moving_mnist_uint8(s, frames=2)[0] for s in ("train", "heldout")}
    real = video_data._split_digits

    def blank_train(split):  # wipe every training digit: held-out clips must not change
        X, y = real(split)
        return (np.zeros_like(X), y) if split == "train" else (X, y)

    monkeypatch.setattr(video_data, "_split_digits", blank_train)
    assert np.array_equal(video_data.moving_mnist_uint8("heldout", frames=2)[0], before["heldout"])
    assert video_data.moving_mnist_uint8("train", frames=2)[0].max() == 0 < before["train"].max()
