"""Latent codecs: what turns a dataset's samples into pixels and back.

A model trains on whatever its dataset stores; the codec says how those samples relate to pixels, so
that latent-space presets are sampled, decoded and evaluated on pixels like the pixel-space ones.

- `identity`: pixel datasets (mnist5k, moving_mnist, cifar10). Samples are pixels in [-1, 1];
  encode and decode return their input.
- `sd-vae-ft-ema`, `sd-vae-ft-mse`: the Stable Diffusion VAE (diffusers' `AutoencoderKL`, the two
  fine-tuned decoders DiT uses): RGB (3, H, W) in [-1, 1] <-> latents (4, H/8, W/8), scaled by the
  VAE's `scaling_factor` (0.18215, so that latents have roughly unit variance, as LDM and DiT train
  on them): z = (latent - shift) * scale, x = decode(z / scale + shift) (shift is 0 for SD VAEs).

Weights: `<root>/codecs/<name>/` (a directory written by `AutoencoderKL.save_pretrained`) if it exists,
else the Hugging Face hub id (downloaded once where there is a network, then read from the hub cache).
The dataset registry (`common.data.DATASETS`) names each dataset's codec; `dataset_codec` builds it.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

from . import DataError, info, to_uint8

VAES = {"sd-vae-ft-ema": "stabilityai/sd-vae-ft-ema", "sd-vae-ft-mse": "stabilityai/sd-vae-ft-mse"}
CODECS = ("identity", *VAES)
CODEC_DIR = "codecs"  # under the data root: <root>/codecs/<name>/config.json + weights


class CodecError(DataError):
    """A codec that is unknown, cannot be loaded, or is given samples of the wrong shape."""


class Codec:
    """encode: pixels (..., pixel_channels, H, W) in [-1, 1] -> samples (..., channels, H/downsample, W/downsample);
    decode: the reverse. Leading dimensions (batch, frames) are kept."""

    name: str
    channels: int           # channels of the samples the model sees
    pixel_channels: int
    downsample: int = 1     # pixel size / sample size
    scaling_factor: float = 1.0
    is_identity: bool = False

    def _check(self, x: torch.Tensor, channels: int, what: str) -> None:
        if x.dim() < 4 or x.shape[-3] != channels:
            got = x.shape[-3] if x.dim() >= 3 else "no"
            raise CodecError(f"codec '{self.name}' {what} {channels}-channel samples; got {got} channels "
                             f"(shape {tuple(x.shape)})")

    def encode(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def decode_uint8(self, z: torch.Tensor, batch_size: int) -> torch.Tensor:
        """Decode batch by batch into uint8 pixels (..., pixel_channels, H, W): the full float set of a
        50K-sample paper run would not fit in memory, its uint8 pixels do."""
        self._check(z, self.channels, "decodes")
        return torch.cat([to_uint8(self.decode(z[i : i + batch_size])) for i in range(0, len(z), batch_size)])


class IdentityCodec(Codec):
    """Pixel datasets: the samples are the pixels."""

    name, is_identity = "identity", True

    def __init__(self, channels: int):
        self.channels = self.pixel_channels = channels

    def encode(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        self._check(x, self.channels, "encodes")
        return x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        self._check(z, self.channels, "decodes")
        return z


class VAECodec(Codec):
    """A diffusers `AutoencoderKL` (eval mode, frozen) with its scaling (and shift) applied to the latents."""

    def __init__(self, vae, name: str):
        self.vae = vae.eval().requires_grad_(False)
        self.name = name
        cfg = vae.config
        self.channels, self.pixel_channels = cfg.latent_channels, cfg.in_channels
        self.downsample = 2 ** (len(cfg.block_out_channels) - 1)
        self.scaling_factor = float(cfg.scaling_factor)
        self.shift_factor = float(getattr(cfg, "shift_factor", None) or 0.0)

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @staticmethod
    def _flat(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, *x.shape[-3:])  # (..., C, H, W) -> (B, C, H, W)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Scaled latents: the posterior mean, or the posterior draw mean + std * noise when `noise`
        (the latents' shape) is given (DiT encodes ImageNet with one draw per image)."""
        self._check(x, self.pixel_channels, "encodes")
        dist = self.vae.encode(self._flat(x).to(self.device, torch.float32)).latent_dist
        z = dist.mean if noise is None else dist.mean + dist.std * self._flat(noise).to(dist.mean)
        z = (z - self.shift_factor) * self.scaling_factor                 # (B, channels, h, w)
        return z.reshape(*x.shape[:-3], *z.shape[1:]).to(x.device)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Pixels in about [-1, 1] (not clamped; `to_uint8` clamps)."""
        self._check(z, self.channels, "decodes")
        lat = self._flat(z).to(self.device, torch.float32) / self.scaling_factor + self.shift_factor
        x = self.vae.decode(lat).sample                                    # (B, pixel_channels, H, W)
        return x.reshape(*z.shape[:-3], *x.shape[1:]).to(z.device)


def load_codec(name: str, root: str | Path = "data", device: str | torch.device | None = None) -> VAECodec:
    """The VAE codec `name` from `<root>/codecs/<name>/` or else the Hugging Face hub."""
    if name not in VAES:
        raise CodecError(f"unknown codec '{name}' (known: {', '.join(CODECS)})")
    try:
        from diffusers import AutoencoderKL
        from diffusers.utils import logging as diffusers_logging
    except ImportError as e:
        raise CodecError(f"codec '{name}' needs the 'diffusers' package: pip install diffusers") from e
    local = Path(root) / CODEC_DIR / name
    source = str(local) if (local / "config.json").is_file() else VAES[name]
    diffusers_logging.set_verbosity_error()  # no hub chatter: one line on failure is ours to print
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            vae = AutoencoderKL.from_pretrained(source, low_cpu_mem_usage=False)
    except Exception as e:  # noqa: BLE001 - any failure to load ends in the same fix
        reason = (str(e).strip().splitlines() or [""])[0][:200].rstrip(".")
        if source == str(local):
            raise CodecError(f"codec '{name}': {local} is unreadable ({type(e).__name__}: {reason})") from e
        raise CodecError(
            f"codec '{name}': weights not in {local} and not loadable from the Hugging Face hub as "
            f"'{VAES[name]}' ({type(e).__name__}: {reason}). Fix: run once where there is a network (they go "
            f"to the hub cache), or put a diffusers AutoencoderKL directory (save_pretrained) at {local}") from e
    return VAECodec(vae.to(device or "cpu"), name)


def dataset_codec(dataset: str, root: str | Path = "data", device: str | torch.device | None = None) -> Codec:
    """The codec of a registered dataset's samples; its channel count must match the dataset's."""
    di = info(dataset)
    if di.codec == "identity":
        return IdentityCodec(di.channels)
    codec = load_codec(di.codec, root, device)
    if codec.channels != di.channels:
        raise CodecError(f"codec '{di.codec}' at {Path(root) / CODEC_DIR / di.codec} has {codec.channels}-channel "
                         f"latents; dataset '{dataset}' has {di.channels}")
    return codec
