"""Shared bits of the stage CLIs: locating a paper's params, one clear error message and exit code."""
from __future__ import annotations

import functools
import sys
from importlib import import_module
from pathlib import Path

from common.config import ConfigError, load_params

ROOT = Path(__file__).resolve().parent.parent
PAPERS_DIR = ROOT / "papers"


def known_papers() -> list[str]:
    return sorted(p.name for p in PAPERS_DIR.iterdir() if (p / "params.yaml").is_file())


def paper_params(paper: str, params_path: str | None = None) -> dict:
    if params_path:
        return load_params(params_path)
    if paper not in known_papers():
        raise ConfigError(f"unknown paper '{paper}' (known: {', '.join(known_papers())})")
    import_module(f"papers.{paper}")  # a paper may register its own models (e.g. DiPoM-*)
    return load_params(PAPERS_DIR / paper / "params.yaml")


def friendly_errors(main):
    """Turn expected failures into one line on stderr and a non-zero exit (no traceback)."""
    from common.data import DataError
    from common.train import TrainingError
    from common.train.checkpoint import CheckpointError

    @functools.wraps(main)
    def wrapper(*a, **kw):
        try:
            return main(*a, **kw)
        except (ConfigError, DataError, CheckpointError, TrainingError) as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except KeyError as e:  # unknown registry names (model, mixer, sampler, objective)
            msg = e.args[0] if e.args else str(e)
            print(f"error: {msg}", file=sys.stderr)
            sys.exit(2)

    return wrapper
