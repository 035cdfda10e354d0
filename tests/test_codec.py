"""The latent codec: SD-VAE through diffusers' AutoencoderKL (a tiny random one, built from a config),
the identity codec of pixel datasets, the registry that names each dataset's codec, bad input."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from common import data
from common.data.codec import CODEC_DIR, CodecError, IdentityCodec, VAECodec, dataset_codec, load_codec


def test_vae_round_trip_with_scaling_applied_and_undone(tiny_vae):
    codec = VAECodec(tiny_vae, "sd-vae-ft-ema")
    assert (codec.channels, codec.pixel_channels, codec.downsample) == (4, 3, 2)
    assert codec.scaling_factor == 0.18215 and not codec.is_identity
    x = torch.rand(3, 3, 16, 16) * 2 - 1                                  # (B, 3, H, W) in [-1, 1]
    z = codec.encode(x)
    assert z.shape == (3, 4, 8, 8)
    with torch.no_grad():
        dist = tiny_vae.encode(x).latent_dist
        assert torch.equal(z, dist.mean * 0.18215)                        # the posterior mean, scaled
        noise = torch.randn(3, 4, 8, 8)
        assert torch.allclose(codec.encode(x, noise), (dist.mean + dist.std * noise) * 0.18215)
        assert torch.allclose(codec.decode(z), tiny_vae.decode(z / 0.18215).sample)  # unscaled, then decoded
    y = codec.decode(z)
    assert y.shape == x.shape and torch.equal(codec.decode(codec.encode(x)), y)  # deterministic
    # leading dims (videos: (N, F, C, H, W)) decode frame by frame
    zv = z[:2, None].expand(2, 2, 4, 8, 8)
    assert torch.allclose(codec.decode(zv)[:, 1], y[:2], atol=1e-5)  # other batch: float round-off only


def test_decode_uint8_batches_equal_one_pass(tiny_vae):
    codec = VAECodec(tiny_vae, "sd-vae-ft-ema")
    z = torch.randn(5, 4, 4, 4)
    u8 = codec.decode_uint8(z, batch_size=2)
    assert u8.dtype == torch.uint8 and u8.shape == (5, 3, 8, 8)
    assert torch.equal(u8, data.to_uint8(codec.decode(z)))
    # identity: the pixels are the samples; batching changes nothing (the tiny pipelines' samples stay as they were)
    x = torch.rand(7, 1, 32, 32) * 2.4 - 1.2
    ident = IdentityCodec(1)
    assert ident.decode(x) is x and ident.encode(x) is x
    assert torch.equal(ident.decode_uint8(x, batch_size=3), data.to_uint8(x))


def test_wrong_channel_count_names_the_counts(tiny_vae):
    codec = VAECodec(tiny_vae, "sd-vae-ft-ema")
    with pytest.raises(CodecError, match=r"codec 'sd-vae-ft-ema' decodes 4-channel samples; got 3 channels"):
        codec.decode(torch.zeros(2, 3, 8, 8))
    with pytest.raises(CodecError, match=r"encodes 3-channel samples; got 1 channels"):
        codec.encode(torch.zeros(2, 1, 16, 16))
    with pytest.raises(CodecError, match=r"codec 'identity' decodes 1-channel samples; got 4 channels"):
        IdentityCodec(1).decode_uint8(torch.zeros(2, 4, 8, 8), 2)


def test_registry_names_each_datasets_codec(tmp_path, tiny_vae):
    assert data.info("imagenet").codec == "sd-vae-ft-ema" and data.info("imagenet").features == "inception"
    assert data.info("mnist5k").codec == "identity" and data.info("mnist5k").features == "mnist-cnn"
    ident = dataset_codec("moving_mnist", root=str(tmp_path))
    assert ident.is_identity and ident.channels == 1
    # the VAE's weights come from <root>/codecs/<name>/ when that directory exists (no network)
    tiny_vae.save_pretrained(tmp_path / CODEC_DIR / "sd-vae-ft-ema")
    codec = dataset_codec("imagenet", root=str(tmp_path))
    z = torch.randn(2, 4, 4, 4)
    assert torch.equal(codec.decode(z), VAECodec(tiny_vae, "x").decode(z))
    with pytest.raises(CodecError, match="unknown codec 'sd-vae-ft-xl'"):
        load_codec("sd-vae-ft-xl", root=str(tmp_path))


def test_unreadable_codec_directory(tmp_path):
    bad = tmp_path / CODEC_DIR / "sd-vae-ft-ema"
    bad.mkdir(parents=True)
    (bad / "config.json").write_text("{not json")
    with pytest.raises(CodecError, match=r"codec 'sd-vae-ft-ema': .*sd-vae-ft-ema is unreadable") as e:
        load_codec("sd-vae-ft-ema", root=str(tmp_path))
    assert "\n" not in str(e.value)


def test_latents_of_another_codec_are_refused(tmp_path):
    from common.data.latents import latents_file, load_latents

    path = latents_file(tmp_path, "imagenet", "train")
    path.parent.mkdir(parents=True)
    torch.save({"latents": torch.zeros(2, 4, 4, 4), "labels": torch.zeros(2, dtype=torch.long),
                "codec": "sd-vae-ft-mse"}, path)
    with pytest.raises(data.DataError, match="encoded with codec 'sd-vae-ft-mse'; this dataset decodes with "
                                             "'sd-vae-ft-ema'"):
        data.load("imagenet", "train", root=str(tmp_path))
    assert len(load_latents(path)) == 2  # no codec asked: read as they are


def test_missing_codec_weights_one_line_with_the_fix(tmp_path):
    """Offline, with neither <root>/codecs/sd-vae-ft-ema nor a hub cache: one line naming both and the fix."""
    from PIL import Image

    (tmp_path / "images" / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "images" / "a" / "0.png")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-m", "pipelines.prepare", "imagenet", "--images", str(tmp_path / "images"),
                          "--root", str(tmp_path / "data")], cwd=Path(__file__).resolve().parent.parent, env=env,
                         capture_output=True, text=True, timeout=300)
    err = res.stderr.strip()
    assert res.returncode == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), err
    for needle in ("codec 'sd-vae-ft-ema'", str(Path("data") / CODEC_DIR / "sd-vae-ft-ema"),
                   "'stabilityai/sd-vae-ft-ema'", "Fix:", "save_pretrained"):
        assert needle in err, err
    assert not (tmp_path / "data" / "imagenet").exists()


def test_pixel_datasets_need_no_preparation(tmp_path, capsys):
    from pipelines import prepare

    with pytest.raises(SystemExit) as e:
        prepare.main(["mnist5k", "--images", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err == "error: dataset 'mnist5k' is stored as pixels (codec 'identity'): nothing to prepare"


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_latent_samples_are_neither_clamped_nor_clipped(sampler):
    """Latents are decoded by their codec: `generate(clamp=False)` must keep values beyond [-1, 1], also
    inside the DDPM samplers (which clip their x0 estimate for pixel data)."""
    from common.config import resolve
    from common.models import create_model
    from common.sampling import generate

    params = {"diffusion": {"objective": "ddpm"}, "variants": {"v": {}},
              "sample": {"sampler": sampler, "steps": 5, "num_samples": 4, "batch_size": 4, "cfg_scale": 1.0}}
    cfg = resolve(params, "toy", "v")
    torch.manual_seed(0)
    model = create_model("DiT-M/8", input_size=8, in_channels=4, num_classes=10).eval()
    with torch.no_grad():  # predict eps = 0 everywhere: x0 = x_t / sqrt(alpha_bar), far outside [-1, 1]
        model.final_layer.linear.bias.zero_()
    raw, _, _ = generate(model, cfg, progress=False, clamp=False)
    pix, _, _ = generate(model, cfg, progress=False)
    assert raw.abs().max() > 1.5 and pix.abs().max() <= 1.0
