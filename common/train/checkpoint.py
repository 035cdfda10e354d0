"""Atomic checkpoints holding plain data only (loadable with `torch.load(weights_only=True)`), and loading
another run's weights into a model whose keys may differ (fine-tuning, `train.init_from`)."""
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


def kept_path(ckpt_dir: str | Path, step: int) -> Path:
    """Where `train.keep_every` keeps the checkpoint of `step`: ckpt/step_000500.pt."""
    return Path(ckpt_dir) / f"step_{step:06d}.pt"


def kept_checkpoints(ckpt_dir: str | Path) -> list[tuple[int, Path]]:
    """[(step, path), ...] of the kept checkpoints in a run's ckpt/ directory, by step."""
    found = []
    for p in Path(ckpt_dir).glob("step_*.pt"):
        digits = p.stem[len("step_"):]
        if digits.isdigit():
            found.append((int(digits), p))
    return sorted(found)


def load_matching(module: torch.nn.Module, state: dict) -> dict:
    """Load the tensors of `state` whose key and shape fit `module`; the rest is reported, not raised:
    {"loaded": n, "new_keys": the module's keys absent from `state` (they keep their initialisation),
    "dropped_keys": keys of `state` the module does not have, "shape_mismatch": "key (src) -> (ours)"}."""
    own = module.state_dict()
    fits = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    module.load_state_dict(fits, strict=False)
    return {
        "loaded": len(fits),
        "new_keys": sorted(k for k in own if k not in state),
        "dropped_keys": sorted(k for k in state if k not in own),
        "shape_mismatch": sorted(f"{k} {tuple(state[k].shape)} -> {tuple(own[k].shape)}"
                                 for k in state if k in own and k not in fits),
    }
