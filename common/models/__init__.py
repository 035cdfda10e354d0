"""Model registry keyed by the papers' names ('DiT-XL/2'), plus tiny CPU presets.

Paper sizes use the ImageNet-256 latent configuration (32x32x4 input, 1000 classes, learned sigma);
tiny presets use 32x32x1 digits and 10 classes. Every entry accepts constructor overrides, e.g.
`create_model("DiT-XL/2", depth=2)` builds a reduced copy for tests, or `mixer="pom"` for DiPoM.
"""
from __future__ import annotations

from functools import partial

from .dit import DiT, DiTBlock, FinalLayer

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


def _make(depth, hidden_size, num_heads, patch_size, defaults, **kw):
    args = dict(defaults, depth=depth, hidden_size=hidden_size, num_heads=num_heads, patch_size=patch_size)
    args.update(kw)
    return DiT(**args)


MODELS: dict = {}
for _size, (_d, _h, _n) in PAPER_SIZES.items():
    for _p in (2, 4, 8):
        MODELS[f"DiT-{_size}/{_p}"] = partial(_make, _d, _h, _n, _p, IMAGENET_LATENT)
for _size, (_d, _h, _n) in TINY_SIZES.items():
    for _p in (2, 4, 8):
        MODELS[f"DiT-{_size}/{_p}"] = partial(_make, _d, _h, _n, _p, MNIST)


def create_model(name: str, **overrides) -> DiT:
    if name not in MODELS:
        raise KeyError(f"unknown model '{name}' (known: {', '.join(MODELS)})")
    return MODELS[name](**overrides)


def count_params(model) -> int:
    """All parameters including the frozen position embedding (the official DiT convention)."""
    return sum(p.numel() for p in model.parameters())


__all__ = ["DiT", "DiTBlock", "FinalLayer", "MODELS", "create_model", "count_params"]
