"""Moving MNIST made from the bundled `mnist5k` digits: deterministic bouncing-digit videos.

One video per source digit of the split (4,500 `train`, 500 `heldout`), so the split of the videos
follows the fixed digit split and no heldout digit ever appears in a training video. Each video:

- digit 1 is the split's i-th digit; digits 2.. are drawn from the same split by a seeded RNG;
- every digit is the 28x28 MNIST crop (the 2-px padding of mnist5k removed) downscaled by area
  averaging to size // 2 px (16 px on the 32x32 canvas), so two digits have room to move;
- start position uniform on the canvas, direction uniform on the circle, speed uniform in
  [1, 2.5] px/frame; a digit bounces (reflects) off the canvas edges; positions are rounded to pixels;
- overlapping digits combine by pixelwise max (as the original Moving MNIST);
- label = class of the first digit.

All random draws happen before the frame loop, so the first k frames of a `frames=F` video equal the
video generated with `frames=k`. Results are cached in memory (`lru_cache`): the same arguments return
the same `TensorDataset` object, which callers must not modify in place.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

SPLIT_CODES = {"train": 0, "heldout": 1, "test": 1, "all": 2}
SPEED = (1.0, 2.5)  # px per frame


@lru_cache(maxsize=3)
def _split_digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    """`mnist5k_split`, cached: reading the digits takes seconds, generating the videos less."""
    from . import mnist5k_split

    return mnist5k_split(split)


def _digit_sprites(u8: np.ndarray, px: int) -> np.ndarray:
    """uint8 (N, 32, 32) padded digits -> uint8 (N, px, px) sprites from the 28x28 crop."""
    crop = torch.from_numpy(u8[:, 2:30, 2:30]).float()[:, None]  # (N, 1, 28, 28)
    small = F.interpolate(crop, size=(px, px), mode="area")  # (N, 1, px, px)
    return small[:, 0].round().clamp(0, 255).to(torch.uint8).numpy()


def _trajectories(rng: np.random.Generator, n: int, frames: int, room: int) -> np.ndarray:
    """int (n, frames, 2) top-left (row, col) positions bouncing inside [0, room]."""
    pos = rng.uniform(0, room, size=(n, 2))
    angle = rng.uniform(0, 2 * np.pi, size=n)
    speed = rng.uniform(*SPEED, size=n)
    vel = np.stack([np.sin(angle), np.cos(angle)], 1) * speed[:, None]  # (n, 2)
    out = np.empty((n, frames, 2), dtype=np.int64)
    for f in range(frames):
        out[:, f] = np.rint(pos)
        pos = pos + vel
        for _ in range(2):  # reflect off both walls (twice covers any step shorter than the room)
            low, high = pos < 0, pos > room
            pos = np.where(low, -pos, np.where(high, 2 * room - pos, pos))
            vel = np.where(low | high, -vel, vel)
    return np.clip(out, 0, room)


def moving_mnist_uint8(split: str, frames: int = 16, size: int = 32, digits: int = 2,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 videos (N, F, size, size) and int64 labels (N,), without caching (see `moving_mnist`)."""
    from . import DataError

    if split not in SPLIT_CODES:
        raise DataError(f"unknown split '{split}' for 'moving_mnist' (known: train, heldout, all)")
    if frames < 1 or digits < 1 or size < 8:
        raise DataError(f"moving_mnist needs frames >= 1, digits >= 1, size >= 8 (got {frames}, {digits}, {size})")
    X, y = _split_digits(split)  # (N, 32, 32) uint8, (N,)
    n, px = len(y), size // 2
    sprites = _digit_sprites(X, px)  # (N, px, px)
    rng = np.random.default_rng([seed, SPLIT_CODES[split]])
    # draw everything first (frame-count independent): partners, then one trajectory per digit slot
    which = np.concatenate([np.arange(n)[:, None], rng.integers(0, n, size=(n, digits - 1))], 1)  # (N, digits)
    paths = [_trajectories(rng, n, frames, size - px) for _ in range(digits)]  # digits x (N, F, 2)
    video = np.zeros((n, frames, size, size), dtype=np.uint8)
    vid = np.arange(n)[:, None, None]  # (N, 1, 1)
    offs = np.arange(px)
    for d in range(digits):
        sprite = sprites[which[:, d]]  # (N, px, px)
        for f in range(frames):
            rows = (paths[d][:, f, 0, None] + offs)[:, :, None]  # (N, px, 1)
            cols = (paths[d][:, f, 1, None] + offs)[:, None, :]  # (N, 1, px)
            frame = video[:, f]  # (N, size, size) view
            frame[vid, rows, cols] = np.maximum(frame[vid, rows, cols], sprite)
    return video, y.astype(np.int64)


@lru_cache(maxsize=4)
def moving_mnist(split: str, frames: int = 16, size: int = 32, digits: int = 2, seed: int = 0) -> TensorDataset:
    """TensorDataset(videos float32 in [-1, 1] (N, F, 1, size, size), labels int64 (N,))."""
    from . import to_float

    video, labels = moving_mnist_uint8(split, frames, size, digits, seed)
    return TensorDataset(to_float(video[:, :, None]), torch.from_numpy(labels))


__all__ = ["moving_mnist", "moving_mnist_uint8"]
