"""The `paper` preset end to end at reduced size, offline, through the stage CLIs: a generated ImageFolder
is encoded by a tiny random SD-VAE stand-in (prepare), a tiny DiT trains a few steps on the latents
(train), its samples are decoded into pixels (sample) and evaluated on those pixels (evaluate)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from common.data.codec import CODEC_DIR, VAECodec
from common.data.latents import center_crop_arr
from common.metrics import INCEPTION_SPACE, FeatNet, FeatNetConfig, MnistCNN, feature_stats, save_featnet
from common.metrics.fid import INCEPTION_ENV, INCEPTION_FILE
from pipelines import evaluate, prepare, sample, train

PIXELS = 64  # imagenet's 32 x 32 latents x the tiny VAE's downsampling 2


def _reduced(root):
    """`preset=paper` with a tiny model, a few steps and a few samples (everything else is the paper's)."""
    sets = {"preset": "paper", "data.root": root, "model.name": "DiT-T/4", "train.steps": 3,
            "train.batch_size": 8, "train.ckpt_every": 3, "train.log_every": 1, "train.threads": 1,
            "sample.num_samples": 12, "sample.batch_size": 5, "sample.steps": 2, "sample.grid": 10}
    return [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]


@pytest.fixture
def imagefolder(tmp_path):
    """3 classes x 8 RGB images of assorted sizes (a class-coloured square on noise)."""
    rng = np.random.default_rng(0)
    for c, colour in enumerate(([220, 40, 40], [40, 200, 60], [50, 60, 230])):
        (tmp_path / "images" / f"n0{c}").mkdir(parents=True)
        for i in range(8):
            h, w = PIXELS + int(rng.integers(0, 30)), PIXELS + int(rng.integers(0, 30))
            arr = rng.integers(0, 90, (h, w, 3), dtype=np.uint8)
            y, x = rng.integers(0, h - 30), rng.integers(0, w - 30)
            arr[y : y + 30, x : x + 30] = colour
            Image.fromarray(arr).save(tmp_path / "images" / f"n0{c}" / f"{i}.png")
    return tmp_path / "images"


def _standin_featnet(out, images):
    """A random `mnist-cnn`-shaped net on the decoded pixels, with reference stats of the real images."""
    torch.manual_seed(0)
    cfg = FeatNetConfig(channels=(4, 8, 8), feat_dim=4)
    net = FeatNet(MnistCNN(cfg.channels, cfg.feat_dim), cfg)
    save_featnet(net, out / "mnist-cnn.pt")
    feats = net.extract(images)
    mu, sigma = feature_stats(feats)
    np.savez(out / "ref_stats.npz", mu=mu, sigma=sigma, features=feats, reference=np.array("imagefolder"))


def test_paper_preset_prepare_train_sample_decode_evaluate(tmp_path, imagefolder, tiny_vae, monkeypatch, capsys):
    root, run = tmp_path / "data", tmp_path / "run"
    tiny_vae.save_pretrained(root / CODEC_DIR / "sd-vae-ft-ema")     # the codec's weights, no download
    sets = _reduced(root)

    # prepare: ImageFolder -> <root>/imagenet/latents/train.pt
    obj = prepare.main(["imagenet", "--images", str(imagefolder), "--root", str(root), "--batch-size", "10"])
    assert obj["latents"].shape == (24, 4, 32, 32) and obj["image_size"] == PIXELS
    assert (root / "imagenet" / "latents" / "train.pt").is_file()

    # train a few steps on the latents
    train.main(["dit", "sit", "--out", str(run), *sets])
    tj = json.loads((run / "train.json").read_text())
    assert (tj["dataset"], tj["preset"], tj["train_steps"]) == ("imagenet", "paper", 3)

    # sample: latents drawn unclamped, decoded by the run's codec into uint8 pixels
    sample.main(["dit", "sit", "--run", str(run), *sets])
    with np.load(run / "samples.npz") as f:
        arr = f["arr_0"]
    assert arr.dtype == np.uint8 and arr.shape == (12, PIXELS, PIXELS, 3)
    meta = json.loads((run / "samples.json").read_text())
    assert (meta["codec"], meta["steps"], meta["num_samples"]) == ("sd-vae-ft-ema", 2, 12)
    from common.sampling import generate
    from common.train import load_for_sampling

    model, cfg, _ = load_for_sampling(run)
    cfg.sample = train.config_from_args(train.parse_args(["dit", "sit", *sets])).sample
    z, _, _ = generate(model, cfg, progress=False, clamp=False)         # (12, 4, 32, 32) latents
    expected = VAECodec(tiny_vae, "sd-vae-ft-ema").decode_uint8(z, 5).movedim(1, -1).numpy()
    assert np.array_equal(arr, expected)
    with Image.open(run / "grid.png") as im:
        assert im.mode == "RGB" and im.size == (10 * (PIXELS + 1) + 1, PIXELS + 2)

    # evaluate: the dataset's own space is Inception; with no weights, one line says how to provide them
    monkeypatch.delenv(INCEPTION_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        evaluate.main([str(run), "--inception", str(tmp_path / "inception")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1, err
    assert INCEPTION_FILE in err and "--inception-weights" in err and INCEPTION_ENV in err
    assert f"'{INCEPTION_SPACE}' feature space of 'imagenet'" in err
    assert not (run / "eval.json").exists()

    # ... and with a stand-in feature net on the decoded pixels, the run is evaluated
    real = np.stack([center_crop_arr(Image.open(p), PIXELS) for p in sorted(imagefolder.rglob("*.png"))])
    (tmp_path / "standin").mkdir()
    _standin_featnet(tmp_path / "standin", real)
    (res,) = evaluate.main([str(run), "--features", "mnist-cnn", "--featnet", str(tmp_path / "standin")])
    assert json.loads((run / "eval.json").read_text()) == res
    assert np.isfinite(res["fid"]) and res["fid"] >= 0 and res["fid_samples"] == 12
    assert (res["fid_features"], res["codec"], res["dataset"], res["preset"]) == (
        "mnist-cnn", "sd-vae-ft-ema", "imagenet", "paper")


def _random_inception_weights(path, monkeypatch):
    """A weights file for torch-fidelity's InceptionV3 with random (torch default) initialisation: the
    real network and loading path, without the download."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    torch.save({}, path)
    with monkeypatch.context() as m:
        m.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None)
        torch.manual_seed(0)
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path))
    torch.save(net.state_dict(), path)


def test_inception_space_where_the_weights_exist(tmp_path, monkeypatch):
    """For an ImageNet run, evaluate finds Inception in `--inception DIR` and reads ADM's reference batch
    format (uint8 images `arr_0`, features computed here). (FID itself is not computed: a 2048-d sqrtm
    takes a minute on a shared CPU core; frechet_distance has its own tests.)"""
    import argparse

    monkeypatch.delenv(INCEPTION_ENV, raising=False)
    inc = tmp_path / "inception"
    inc.mkdir()
    _random_inception_weights(inc / INCEPTION_FILE, monkeypatch)
    batch = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    np.savez(inc / "imagenet.npz", arr_0=batch)
    args = argparse.Namespace(inception=str(inc), inception_weights=None, featnet=None)
    assert evaluate.feature_space("auto", "imagenet") == INCEPTION_SPACE
    net, ref, net_id = evaluate.load_space(INCEPTION_SPACE, "imagenet", args)
    assert net_id.startswith(f"{INCEPTION_SPACE}@") and ref["reference"] == "imagenet/imagenet.npz"
    assert ref["features"].shape == (4, 2048) and np.array_equal(ref["features"], net.extract(batch))
    assert not hasattr(net, "classify")


def test_a_feature_net_without_classifier_leaves_class_consistency_null(tmp_path):
    class FeaturesOnly:  # what InceptionNet offers: extract, no classify
        def extract(self, images):
            return np.asarray(images, np.float64).reshape(len(images), -1)[:, :6]

    rng = np.random.default_rng(0)
    run = tmp_path / "run"
    run.mkdir()
    np.savez(run / "samples.npz", arr_0=rng.integers(0, 256, (8, 8, 8, 3), dtype=np.uint8),
             labels=np.arange(8, dtype=np.int64))
    (run / "train.json").write_text(json.dumps({"dataset": "imagenet", "preset": "paper"}))
    (run / "samples.json").write_text(json.dumps({"codec": "sd-vae-ft-ema"}))
    feats = FeaturesOnly().extract(rng.integers(0, 256, (8, 8, 8, 3), dtype=np.uint8))
    ref = dict(zip(("mu", "sigma"), feature_stats(feats)), features=feats, reference="imagenet/ref")
    res = evaluate.evaluate_run(run, FeaturesOnly(), ref, "stand-in", INCEPTION_SPACE)
    assert res["class_consistency"] is None and np.isfinite(res["fid"])
    assert (res["fid_features"], res["codec"], res["reference"]) == (INCEPTION_SPACE, "sd-vae-ft-ema", "imagenet/ref")
