"""Shared bits of the stage CLIs: locating a paper's params, one clear error message and exit code."""
from __future__ import annotations

import functools
import sys
from pathlib import Path

import papers
from common.config import ConfigError, load_params

ROOT = Path(__file__).resolve().parent.parent
PAPERS_DIR = ROOT / "papers"


def known_papers() -> list[str]:
    return papers.names()


def paper_params(paper: str, params_path: str | None = None) -> dict:
    papers.load_all()  # any paper may register models (e.g. DiPoM-*) that another paper's params name
    if params_path:
        return load_params(params_path)
    if paper not in known_papers():
        raise ConfigError(f"unknown paper '{paper}' (known: {', '.join(known_papers())})")
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
