"""Atomic checkpoints holding plain data only (loadable with `torch.load(weights_only=True)`), and loading
another run's weights into a model whose keys may differ (fine-tuning, `train.init_from`)."""
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


def _reason(e: Exception) -> str:
    """torch.load's error on one line. Its weights-only advice (load with weights_only=False) is wrong for a
    corrupt file, so only the unpickler's own reason is kept."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if lines and lines[0].startswith("Weights only load failed"):
        lines = [ln for ln in lines[1:] if not ln.startswith(("Please file", "Check the documentation"))]
        lines = lines or ["not plain data"]
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def load(path: str | Path) -> dict:
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({_reason(e)})") from e
    missing = {"model", "ema", "step", "config"} - set(ckpt) if isinstance(ckpt, dict) else {"<dict>"}
    if missing:
        raise CheckpointError(f"checkpoint {path} is incompatible: missing {sorted(missing)}")
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
