"""Token mixers behind one interface.

A mixer is an `nn.Module` built by `build_mixer(name, dim, num_heads, **kwargs)` whose forward is
`mixer(x, ctx) -> y` with `x, y: (B, N, D)`. `ctx` is a `MixerContext` holding the token layout
(frames x height x width, or explicit per-frame token counts) and the mask kind:

- `mask="none"`:  every token sees every token;
- `mask="causal"`: token i sees tokens <= i;
- `mask="block"`:  block-causal over frames: the tokens of frame f see all tokens of frames <= f.

A mixer with a recurrent form also offers `step(x_frame, state) -> (y_frame, state)` that consumes one
frame at a time (`state=None` to start); running `step` over the frames of a sequence must equal the
block-causal parallel forward. Mixers that compute attention maps append their pre-softmax logits
`(B, heads, N, N)` to `ctx.attn_logits` when it is a list (for REPA/HASTE-style alignment).

A mixer sees tokens and `ctx` only. One that needs the conditioning (timestep, class) gets it from its
block: a paper's own block (`DiT(block=...)`, common.models.dit) reads what it needs from the `Cond`
object it receives and passes it on. The DiT's `mixer_kwargs` reach the mixers' constructors as one
dict for every non-attention mixer, a dict keyed by mixer name, or one dict per block.

Register new mixers with `@register("name")`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

MIXERS: dict[str, type[nn.Module]] = {}


def register(name: str):
    def deco(cls):
        MIXERS[name] = cls
        cls.mixer_name = name
        return cls

    return deco


@dataclass
class MixerContext:
    frames: int = 1
    height: int = 0
    width: int = 0
    mask: str = "none"                      # none | causal | block
    frame_sizes: tuple[int, ...] | None = None  # tokens per frame when frames differ in size
    attn_logits: list | None = None         # set to [] to collect attention logits per block

    def __post_init__(self):
        if self.mask not in ("none", "causal", "block"):
            raise ValueError(f"unknown mask '{self.mask}' (known: none, causal, block)")

    def sizes(self, n: int) -> tuple[int, ...]:
        """Tokens per frame for a sequence of n tokens."""
        if self.frame_sizes is not None:
            if sum(self.frame_sizes) != n:
                raise ValueError(f"frame_sizes {self.frame_sizes} do not add up to {n} tokens")
            return tuple(self.frame_sizes)
        if n % self.frames:
            raise ValueError(f"{n} tokens do not split into {self.frames} equal frames")
        return (n // self.frames,) * self.frames

    def frame_index(self, n: int, device=None) -> torch.Tensor:
        """(n,) frame id of every token."""
        sizes = self.sizes(n)
        return torch.repeat_interleave(torch.arange(len(sizes), device=device), torch.tensor(sizes, device=device))


def build_mixer(name: str, dim: int, num_heads: int, **kwargs) -> nn.Module:
    if name not in MIXERS:
        raise KeyError(f"unknown mixer '{name}' (known: {', '.join(sorted(MIXERS))})")
    return MIXERS[name](dim, num_heads, **kwargs)


def attention_mask(ctx: MixerContext, n: int, device=None) -> torch.Tensor | None:
    """Boolean (n, n) mask, True where attention is allowed; None for full attention."""
    if ctx.mask == "none":
        return None
    if ctx.mask == "causal":
        return torch.ones(n, n, dtype=torch.bool, device=device).tril()
    f = ctx.frame_index(n, device)
    return f[:, None] >= f[None, :]


@register("attention")
class Attention(nn.Module):
    """Multi-head self-attention through `F.scaled_dot_product_attention` (qkv with bias, as DiT).

    `step` keeps a growing key/value cache (the baseline for constant-memory frame-by-frame PoM)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def _qkv(self, x):
        B, N, D = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv.unbind(0)  # 3 x (B, H, N, hd)

    def forward(self, x: torch.Tensor, ctx: MixerContext | None = None) -> torch.Tensor:
        ctx = ctx or MixerContext()
        B, N, D = x.shape
        q, k, v = self._qkv(x)
        mask = attention_mask(ctx, N, x.device)
        if ctx.attn_logits is not None:
            logits = (q @ k.transpose(-2, -1)) * self.head_dim**-0.5  # (B, H, N, N)
            ctx.attn_logits.append(logits)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, N, hd)
        return self.proj(y.transpose(1, 2).reshape(B, N, D))

    def step(self, x: torch.Tensor, state=None):
        """One frame (B, n, D) attending to itself and all cached frames; state = (k, v) cache."""
        B, n, D = x.shape
        q, k, v = self._qkv(x)
        if state is not None:
            k, v = torch.cat([state[0], k], 2), torch.cat([state[1], v], 2)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(B, n, D)), (k, v)


__all__ = ["MIXERS", "MixerContext", "build_mixer", "register", "attention_mask", "Attention"]


def _import_builtin_mixers():
    # PoM and other mixers register themselves on import.
    from importlib import import_module

    for mod in ("pom",):
        try:
            import_module(f"{__name__}.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{mod}":
                raise


_import_builtin_mixers()
