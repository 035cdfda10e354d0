"""Datasets: the bundled digits, the ImageNet-latent path on a generated ImageFolder, clear errors."""
import numpy as np
import pytest
import torch

from common import data
from common.data.latents import encode_imagefolder


def test_mnist5k_split_is_fixed_and_balanced():
    xtr, ytr = data.mnist5k_split("train")
    xho, yho = data.mnist5k_split("heldout")
    assert xtr.shape == (4500, 32, 32) and xho.shape == (500, 32, 32) and xtr.dtype == np.uint8
    assert np.bincount(ytr).tolist() == [450] * 10 and np.bincount(yho).tolist() == [50] * 10
    assert xtr[:, :2].max() == 0 and xtr[:, -2:].max() == 0  # padded from 28 to 32
    xtr2, _ = data.mnist5k_split("train")
    assert np.array_equal(xtr, xtr2)
    # no digit is in both splits
    tr = {a.tobytes() for a in xtr}
    assert not any(a.tobytes() in tr for a in xho)


def test_mnist5k_dataset_range():
    ds = data.load("mnist5k", "train")
    x, y = ds.tensors
    assert x.shape == (4500, 1, 32, 32) and x.min() == -1 and x.max() == 1 and y.dtype == torch.int64


def test_unknown_dataset_and_split():
    with pytest.raises(data.DataError, match="unknown dataset 'nope'"):
        data.load("nope")
    with pytest.raises(data.DataError, match="unknown split"):
        data.mnist5k_split("val")


def test_imagenet_latents_from_a_generated_imagefolder(tmp_path, tiny_vae):
    from PIL import Image

    from common.data.codec import VAECodec

    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / "folder" / c).mkdir(parents=True)
        for i in range(3):
            arr = rng.integers(0, 255, (40 + 7 * i, 50, 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / "folder" / c / f"{i}.png")

    codec = VAECodec(tiny_vae, "sd-vae-ft-ema")  # stand-in for the SD-VAE: (B, 3, H, W) -> (B, 4, H/2, W/2)
    out = tmp_path / "lat" / "train.pt"
    obj = encode_imagefolder(tmp_path / "folder", out, codec, size=8, batch_size=4, flip=True)
    assert obj["latents"].shape == (12, 4, 4, 4) and obj["classes"] == ["cat", "dog"]
    assert (obj["codec"], obj["scaling_factor"], obj["image_size"]) == ("sd-vae-ft-ema", 0.18215, 8)
    ds = data.latents.load_latents(out, codec="sd-vae-ft-ema")
    assert ds.tensors[0].shape == (12, 4, 4, 4) and sorted(ds.tensors[1].tolist()) == [0] * 6 + [1] * 6
    # one posterior draw per image, seeded by its index: the batch size does not change the latents
    again = encode_imagefolder(tmp_path / "folder", tmp_path / "lat2.pt", codec, size=8, batch_size=5, flip=True)
    assert torch.allclose(again["latents"], obj["latents"], atol=1e-5) and torch.equal(again["labels"], obj["labels"])
    assert not torch.allclose(obj["latents"][:6], obj["latents"][6:])  # the flipped copies follow the originals


def test_imagenet_latents_missing_names_the_fix(tmp_path):
    with pytest.raises(data.DataError, match="python -m pipelines.prepare imagenet"):
        data.load("imagenet", "train", root=str(tmp_path))
