"""Atomic checkpoints holding plain data only (loadable with `torch.load(weights_only=True)`)."""
from __future__ import annotations

from pathlib import Path

import torch

from common.errors import UserError, short_reason
from common.io import atomic_write

RETRAIN = "Fix: delete it and re-run the train command (training restarts from step 0)"


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that is corrupt, unreadable or belongs to another configuration."""


def save_atomic(obj: dict, path: str | Path) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over `path`."""
    with atomic_write(path) as f:
        torch.save(obj, f)


def load(path: str | Path) -> dict:
    """A checkpoint's dict; CheckpointError (one line, naming the file and the fix) if it is corrupt.

    torch's own messages are not repeated whole: for a file that is not plain data they advise loading
    with `weights_only=False`, which is wrong (and unsafe) advice for a corrupt file."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        if "weights only load failed" in str(e).lower():
            reason = "it holds objects other than tensors and plain data"
        else:
            reason = short_reason(e)
        raise CheckpointError(f"checkpoint {path} is corrupt or not a checkpoint of this project ({reason}). "
                              f"{RETRAIN}") from e
    missing = {"model", "ema", "step", "config"} - set(ckpt) if isinstance(ckpt, dict) else {"<dict>"}
    if missing:
        raise CheckpointError(f"checkpoint {path} is incompatible: missing {sorted(missing)}. {RETRAIN}")
    return ckpt
