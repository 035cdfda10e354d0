"""Feature taps: what a forward pass computed inside the model, collected through hooks.

REPA/HASTE-style loss terms need block outputs and attention logits; a term may also need the
network's input and output. `Taps` collects them around any forward pass without changing what the
model returns (no `return_features`), so the sampling path and every caller stay untouched::

    with Taps(model, blocks=(2,), attn_logits=True) as taps:
        out = model(x, t, y)
    taps.features[2]       # (B, N, D): output of model.blocks[2], with its autograd graph
    taps.attn_logits[0]    # (B, heads, N, N): pre-softmax logits of block 0's mixer (if it computes maps)
    taps.input, taps.output  # the model's first positional argument (x_t) and its return value

- Block outputs: forward hooks on `model.blocks[i]` (a block returning a tuple contributes its first item).
- Attention logits: through the mixer contract (`common.mixers`): a mixer that computes attention maps
  appends its logits to `ctx.attn_logits` when that is a list. A pre-hook on every registered mixer of
  a tapped block makes the list exist for the call and a post-hook takes what the call appended.
- Works on a DDP-wrapped model (the hooks go on `model.module`). Values are those of the *last*
  forward pass inside the `with` block; hooks are removed on exit.
"""
from __future__ import annotations

import torch
from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel (or any `.module` wrapper); the model itself otherwise."""
    return getattr(model, "module", model)


class Taps:
    """Context manager collecting block outputs, attention logits and the model's input/output."""

    def __init__(self, model: nn.Module, blocks=(), attn_logits: bool = False, io: bool = True):
        self.model = unwrap(model)
        n = len(self.model.blocks)
        for i in blocks:
            if not -n <= i < n:
                raise IndexError(f"block index {i} is out of range for a model with {n} blocks")
        self.blocks = sorted({i % n for i in blocks})  # negative indices count from the last block
        self.attn_blocks = list(range(n)) if attn_logits else []
        self.io = io
        self.features: dict[int, torch.Tensor] = {}
        self.attn_logits: dict[int, torch.Tensor] = {}
        self.input: torch.Tensor | None = None
        self.output = None
        self._handles: list = []

    # ---- hooks ---------------------------------------------------------------------------------
    def _block_hook(self, i):
        def hook(module, args, out):
            self.features[i] = out[0] if isinstance(out, (tuple, list)) else out  # (B, N, D)
        return hook

    def _mixer_hooks(self, i):
        start = {}

        def pre(module, args, kwargs):
            ctx = args[1] if len(args) > 1 else kwargs.get("ctx")
            if ctx is not None:
                if ctx.attn_logits is None:
                    ctx.attn_logits = []
                start[id(module)] = (ctx, len(ctx.attn_logits))

        def post(module, args, kwargs, out):
            ctx, n0 = start.pop(id(module), (None, 0))
            if ctx is not None and len(ctx.attn_logits) > n0:
                self.attn_logits[i] = ctx.attn_logits[-1]  # (B, heads, N, N)

        return pre, post

    def _io_hook(self, module, args, kwargs, out):
        self.input = args[0] if args else kwargs.get("x")
        self.output = out

    def __enter__(self) -> Taps:
        for i in self.blocks:
            self._handles.append(self.model.blocks[i].register_forward_hook(self._block_hook(i)))
        for i in self.attn_blocks:
            for m in self.model.blocks[i].modules():
                if hasattr(m, "mixer_name"):  # set by common.mixers.register
                    pre, post = self._mixer_hooks(i)
                    self._handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
                    self._handles.append(m.register_forward_hook(post, with_kwargs=True))
        if self.io:
            self._handles.append(self.model.register_forward_hook(self._io_hook, with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


__all__ = ["Taps", "unwrap"]
