"""Extra loss terms: a registry of `nn.Module`s that the training loop weights, logs and checkpoints.

A run's total per-sample loss is the objective's `terms["loss"]` (flow: the velocity MSE; DDPM: MSE + VLB)
plus `weight * term(ctx)` for every term named in the params file's `losses:` section::

    losses:
      repa: {weight: 0.5, depth: 2, dim: 64}    # the term's own keys, validated like every params key

A paper adds a term in its `papers/<p>/__init__.py` without editing `common/`::

    @register_loss("repa")
    class REPA(LossTerm):
        @dataclass
        class Config(LossConfig):        # `weight` comes from LossConfig
            depth: int = 2
            dim: int = 64
            ranges: ClassVar[dict] = {**LossConfig.ranges, "depth": (0, None), "dim": (1, None)}

        def __init__(self, cfg, model):
            super().__init__(cfg, model)
            self.tap_blocks = (cfg.depth,)                      # the features the term asks for
            self.proj = nn.Linear(hidden_size_of(model), cfg.dim)  # trained with the model, checkpointed

        def forward(self, ctx):                                  # -> (B,)
            h = self.proj(ctx.features[self.cfg.depth])          # (B, N, dim)
            return 1 - F.cosine_similarity(h, target(ctx.x), dim=-1).mean(1)

What a term receives (`LossContext`), computed once per step from the objective's own forward pass:
`model` (the DiT, unwrapped from DDP), `x` (clean batch), `y` (labels), `t` (the objective's
timesteps: flow t in [0, 1], DDPM integer steps; (B,) or (B, F)), `noise`, `drop` (label-drop flags),
`x_t` (the network's input) and `out` (its raw output, learned-sigma channels included), `features`
({block index: (B, N, D)} for the blocks in `tap_blocks`), `attn_logits` ({block index: (B, heads, N, N)}
when `tap_attn`), `terms` (the objective's per-sample terms) and `step`. Taps come from forward hooks
(`common.models.taps`), so the model's return type never changes.

How the planned papers fit: REPA = projector on `features[k]` aligned with a frozen encoder of `x`;
HASTE = the same plus `attn_logits[k]` against the encoder's attention (`tap_attn = True`); DyDiT =
a FLOPs-ratio penalty read from the model's routers (`ctx.model`) at `ctx.t`; DiMR = a low-resolution
head (the term's own module) on a tapped feature against a downsampled target.

Rules: `__init__(cfg, model)` may read the model's sizes but must not keep it as an attribute (it would
become a submodule, duplicated in the checkpoint); `forward` returns a (B,) tensor (unweighted: the loop
applies `cfg.weight` and logs the unweighted mean as `train/<name>`); its parameters are optimised with
the model's (same AdamW group, gradient clipping over both, no EMA) and saved in the checkpoint under
"losses". A term that runs the network a second time should be aware that under DDP the objective's
forward went through the wrapper.
"""
from __future__ import annotations

from dataclasses import dataclass, field, is_dataclass
from typing import Any, ClassVar

import torch
from torch import nn

LOSSES: dict[str, type[LossTerm]] = {}
RESERVED = ("loss", "lr", "mse", "vb")  # names the loop already logs (train/loss, train/lr, objective terms)


@dataclass
class LossConfig:
    """Keys every term has; a term's `Config` subclasses this and adds its own."""

    weight: float = 1.0
    ranges: ClassVar[dict] = {"weight": (0.0, None)}  # key -> (lo, hi), checked by common.config


@dataclass
class LossContext:
    """What every term sees at one training step (see the module docstring)."""

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    t: torch.Tensor
    noise: torch.Tensor
    drop: torch.Tensor | None
    x_t: torch.Tensor
    out: torch.Tensor
    terms: dict
    step: int = 0
    features: dict = field(default_factory=dict)
    attn_logits: dict = field(default_factory=dict)


class LossTerm(nn.Module):
    """Base class of the registered terms: `forward(ctx: LossContext) -> (B,)`."""

    Config: ClassVar[type] = LossConfig
    loss_name: ClassVar[str] = ""

    def __init__(self, cfg: Any, model: nn.Module):
        super().__init__()
        self.cfg = cfg
        self.tap_blocks: tuple[int, ...] = ()   # block outputs the term reads (ctx.features)
        self.tap_attn: bool = False             # whether it reads ctx.attn_logits

    def forward(self, ctx: LossContext) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


def register_loss(name: str):
    """Class decorator: make a `LossTerm` subclass available as `losses.<name>` in params files."""

    def deco(cls):
        if not (isinstance(cls, type) and issubclass(cls, LossTerm)):
            raise TypeError(f"@register_loss('{name}') expects a LossTerm subclass, got {cls!r}")
        if not (is_dataclass(cls.Config) and issubclass(cls.Config, LossConfig)):
            raise TypeError(f"loss term '{name}': Config must be a dataclass subclassing LossConfig")
        if name in RESERVED:
            raise ValueError(f"loss term name '{name}' is reserved (taken: {', '.join(RESERVED)})")
        LOSSES[name] = cls
        cls.loss_name = name
        return cls

    return deco


def build_loss_terms(configs: dict, model: nn.Module) -> nn.ModuleDict:
    """{name: term} for the validated `RunConfig.losses` ({name: its Config}); empty when none is configured.
    Tap indices are checked against the model here, so a bad index fails before anything is written."""
    from common.config import ConfigError

    terms = nn.ModuleDict()
    n = len(model.blocks)
    for name, cfg in configs.items():
        if name not in LOSSES:
            raise ConfigError(f"unknown loss term 'losses.{name}' (known: {', '.join(sorted(LOSSES)) or 'none'})")
        term = LOSSES[name](cfg, model)
        bad = [i for i in term.tap_blocks if not -n <= i < n]
        if bad:
            raise ConfigError(f"params key 'losses.{name}': taps block {bad[0]}, the model has {n} blocks")
        terms[name] = term
    return terms


__all__ = ["LOSSES", "LossConfig", "LossContext", "LossTerm", "register_loss", "build_loss_terms"]
