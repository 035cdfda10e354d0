"""Model registry keyed by the papers' names ('DiT-XL/2'), plus tiny CPU presets.

Paper sizes use the ImageNet-256 latent configuration (32x32x4 input, 1000 classes, learned sigma);
tiny presets use 32x32x1 digits and 10 classes. Every entry accepts constructor overrides, e.g.
`create_model("DiT-XL/2", depth=2)` builds a reduced copy for tests, `mixer="pom"` DiPoM, or
`block=MyBlock` a paper's own block (see common.models.dit); `register_family` names such a family.
"""
from __future__ import annotations

from functools import partial

from .dit import Cond, DiT, DiTBlock, FinalLayer, block_mixer_kwargs

PAPER_SIZES = {  # name: (depth, hidden, heads) -- DiT paper Table 1
    "S": (12, 384, 6),
    "B": (12, 768, 12),
    "L": (24, 1024, 16),
    "XL": (28, 1152, 16),
}
IMAGENET_LATENT = dict(input_size=32, in_channels=4, num_classes=1000, learn_sigma=True)
TINY_SIZES = {  # CPU presets for 32x32x1 digits: (depth, hidden, heads)
    "T": (4, 128, 4),   # ~1.3M parameters
    "M": (6, 64, 4),    # ~0.3M parameters, for tests and very quick runs
}
MNIST = dict(input_size=32, in_channels=1, num_classes=10, learn_sigma=True)


def _make(defaults: dict, **kw) -> DiT:
    return DiT(**{**defaults, **kw})


def register_family(prefix: str, **extra) -> None:
    """Register `<prefix>-<size>/<patch>` for the paper sizes (ImageNet-256 latents) and the tiny ones
    (32x32x1 digits); `extra` are constructor arguments shared by the family (e.g. mixer="pom")."""
    for sizes, data in ((PAPER_SIZES, IMAGENET_LATENT), (TINY_SIZES, MNIST)):
        for size, (depth, hidden, heads) in sizes.items():
            for p in (2, 4, 8):
                spec = dict(data, depth=depth, hidden_size=hidden, num_heads=heads, patch_size=p, **extra)
                MODELS[f"{prefix}-{size}/{p}"] = partial(_make, spec)


MODELS: dict = {}
register_family("DiT")


def create_model(name: str, **overrides) -> DiT:
    if name not in MODELS:
        raise KeyError(f"unknown model '{name}' (known: {', '.join(MODELS)})")
    return MODELS[name](**overrides)


def count_params(model) -> int:
    """All parameters including the frozen position embedding (the official DiT convention)."""
    return sum(p.numel() for p in model.parameters())


__all__ = ["Cond", "DiT", "DiTBlock", "FinalLayer", "MODELS", "block_mixer_kwargs", "count_params", "create_model",
           "register_family"]
