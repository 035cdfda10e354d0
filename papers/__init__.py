"""The paper registry: every folder of `papers/` with a `params.yaml` and an `__init__.py` is a paper.

A paper is found by convention, never by a hand-written list: `names()` lists the folders, `load(name)`
imports one paper module (which registers its models, mixers and loss terms on import), `load_all()`
imports every one. Stage CLIs that resolve a model name call `load_all()` first, so a name registered by
any paper (`DiPoM-T/4`) resolves everywhere. See papers/README.md for what a paper module holds.
"""
from __future__ import annotations

from importlib import import_module
from pathlib import Path
from types import ModuleType

PAPERS_DIR = Path(__file__).resolve().parent


def names() -> list[str]:
    """Registered papers: folders holding both `__init__.py` and `params.yaml`, sorted."""
    return sorted(d.name for d in PAPERS_DIR.iterdir()
                  if (d / "__init__.py").is_file() and (d / "params.yaml").is_file())


def load(name: str) -> ModuleType:
    """Import `papers.<name>` (its registrations run on import); KeyError names the known papers."""
    if name not in names():
        raise KeyError(f"unknown paper '{name}' (known: {', '.join(names())})")
    return import_module(f"{__name__}.{name}")


def load_all() -> dict[str, ModuleType]:
    """Import every paper, so every paper-registered name (models, mixers, loss terms) is known."""
    return {name: load(name) for name in names()}
