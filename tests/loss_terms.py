"""A loss term for the tests, registered on import (also by the DDP test's worker processes)."""
from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from common.losses import LossConfig, LossTerm, register_loss


@register_loss("probe")
class Probe(LossTerm):
    """||P h_k||^2 averaged over tokens: a term with its own parameters (P) on a tapped block output."""

    @dataclass
    class Config(LossConfig):
        block: int = 0
        dim: int = 4
        ranges: ClassVar[dict] = {**LossConfig.ranges, "dim": (1, None)}

    def __init__(self, cfg, model):
        super().__init__(cfg, model)
        self.tap_blocks = (cfg.block,)
        self.proj = nn.Linear(model.pos_embed.shape[-1], cfg.dim, bias=False)

    def forward(self, ctx):
        return self.proj(ctx.features[self.cfg.block]).pow(2).sum(-1).mean(-1)  # (B,)


if __name__ == "__main__":  # python tests/loss_terms.py <pipelines.train arguments>: train with the term known
    import sys

    from pipelines.train import main

    main(sys.argv[1:])
