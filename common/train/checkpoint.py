"""Atomic checkpoints holding plain data only (loadable with `torch.load(weights_only=True)`)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch


class CheckpointError(RuntimeError):
    """A checkpoint that is corrupt, unreadable or belongs to another configuration."""


def save_atomic(obj: dict, path: str | Path) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load(path: str | Path) -> dict:
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({type(e).__name__}: {e})") from e
    missing = {"model", "ema", "step", "config"} - set(ckpt) if isinstance(ckpt, dict) else {"<dict>"}
    if missing:
        raise CheckpointError(f"checkpoint {path} is incompatible: missing {sorted(missing)}")
    return ckpt
