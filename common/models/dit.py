"""DiT: Scalable Diffusion Models with Transformers (Peebles & Xie, arXiv 2212.09748), generalised to
video tokens, per-frame timesteps, swappable token mixers and swappable blocks.

Faithful to the paper/official model: patchify conv, fixed 2-D sin-cos positions (a frozen parameter,
counted in the parameter total like the official code), adaLN-Zero blocks (zero-initialised modulation
and final layer), label embedding with a "null" row for classifier-free guidance, optional learned sigma.

Extension points (what a paper plugs in without editing this file):
- `mixer`: the token mixer by name (`common.mixers`, `@register`); a list gives one name per block, or a
  pattern repeated over the blocks (hybrids such as [attention, pom]).
- `mixer_kwargs`: the mixers' constructor arguments, in one of three forms (`block_mixer_kwargs`): a
  flat dict for every non-attention mixer (attention blocks get none), a dict keyed by mixer name, or a
  list with one dict per block (or a repeating pattern).
- `block`: the block class, called as `block(hidden_size=, num_heads=, mlp_ratio=, mixer=, mixer_kwargs=)`,
  or a function `block(i, **those)` building block i (dynamic width, token skipping, time-dependent
  norms). A block is `block(x, cond, ctx) -> x` on tokens (B, N, D), and `block.step(x, cond, state) ->
  (x, state)` for frame-by-frame inference. After the generic init (xavier on every Linear), each block's
  own `initialize_weights()` runs if it has one (DiTBlock: adaLN-Zero, then the mixer's own init).
- `Cond`: what every block is conditioned on, built once per call: the raw time input t, t_emb, y_emb
  and c = t_emb + y_emb (per frame when t is (B, F)), each also per token (`cond.per_token`). A block
  reads what it needs: DiT's adaLN reads c, a router the timestep alone, a time-dependent norm raw t.
- video: input (B, F, C, H, W) -> F*h*w tokens with a space-time sin-cos embedding; t of shape (B, F)
  gives every frame its own conditioning (FVDM).
- taps: block features through forward hooks on `model.blocks` (the return type never changes);
  attention logits are collected through `ctx.attn_logits`.
- `step_frame`: frame-by-frame inference through the mixers' recurrent `step` (PoM video generation).
- FLOPs at a chosen timestep: `common.flops.model_flops(model, t=...)` (dynamic blocks cost differently
  per t).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from einops import rearrange
from torch import nn

from common.mixers import MIXERS, MixerContext, build_mixer
from common.nn import LabelEmbedder, Mlp, TimestepEmbedder, modulate, sincos_2d, sincos_3d

COND_FIELDS = ("t", "t_emb", "y_emb", "c")


@dataclass
class Cond:
    """The conditioning every block receives, built once per call by `DiT.condition`.

    t:     the network's time input as given, (B,) or per frame (B, F)
    t_emb: timestep embedding, (B, D) or (B, F, D)
    y_emb: class embedding after label dropout, (B, D)
    c:     t_emb + y_emb, DiT's adaLN input, (B, D) or (B, F, D)
    `tokens_per_frame` and `num_tokens` give the token layout, so that `per_token` can map per-frame
    values onto the tokens of their frame."""

    t: torch.Tensor
    t_emb: torch.Tensor
    y_emb: torch.Tensor
    c: torch.Tensor
    tokens_per_frame: int
    num_tokens: int
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def per_frame(self) -> bool:
        return self.t.dim() == 2

    def per_token(self, name: str = "c", expand: bool = True) -> torch.Tensor:
        """`name` (t, t_emb, y_emb or c) for every token: (B, N, D), or (B, N) for t. With expand=False a
        value shared by all tokens stays (B, D) / (B,), which broadcasts and costs nothing (adaLN uses
        that form). Computed once per call and shared by the blocks."""
        if name not in COND_FIELDS:
            raise KeyError(f"unknown conditioning field '{name}' (known: {', '.join(COND_FIELDS)})")
        key = (name, expand)
        if key not in self._cache:
            v = getattr(self, name)
            if self.per_frame and name != "y_emb":  # (B, F[, D]) -> (B, F*n[, D])
                v = v.repeat_interleave(self.tokens_per_frame, dim=1)
            elif expand:  # (B[, D]) -> (B, N[, D])
                v = v.unsqueeze(1).expand(v.shape[0], self.num_tokens, *v.shape[1:])
            self._cache[key] = v
        return self._cache[key]


def block_mixer_kwargs(mixers: list[str], mixer_kwargs) -> list[dict]:
    """One kwargs dict per block from the DiT's `mixer_kwargs`, which takes one of three forms:

    - None or a flat dict {kwarg: value}: every non-attention block gets the dict, attention blocks get
      none (DiPoM's `mixer="pom", mixer_kwargs={"degree": 2}`; the behaviour before the other forms);
    - a dict keyed by mixer name whose values are all dicts ({"pom": {...}, "attention": {...}}): each
      block gets the entry of its mixer, or none; every key must be a registered mixer, and keys of
      mixers this model does not use are ignored (one params section can serve variants of both kinds);
    - a list of dicts: one per block, or a pattern repeated over the blocks like the mixer names.
    Anything else is a ValueError naming the culprit."""
    depth = len(mixers)
    if mixer_kwargs is None:
        mixer_kwargs = {}
    if isinstance(mixer_kwargs, (list, tuple)):
        if not mixer_kwargs or depth % len(mixer_kwargs):
            raise ValueError(f"mixer_kwargs: a list of {len(mixer_kwargs)} dicts does not tile {depth} blocks "
                             "(give one dict per block or a repeating pattern)")
        for i, kw in enumerate(mixer_kwargs):
            if not isinstance(kw, dict):
                raise ValueError(f"mixer_kwargs[{i}] must be a dict of mixer arguments, got {type(kw).__name__}")
        return [dict(mixer_kwargs[i % len(mixer_kwargs)]) for i in range(depth)]
    if not isinstance(mixer_kwargs, dict):
        raise ValueError(f"mixer_kwargs must be a dict or a list of dicts, got {type(mixer_kwargs).__name__}")
    nested = [k for k, v in mixer_kwargs.items() if isinstance(v, dict)]
    if nested and len(nested) < len(mixer_kwargs):
        flat = [k for k in mixer_kwargs if k not in nested]
        raise ValueError(f"mixer_kwargs mixes per-mixer dicts ({', '.join(nested)}) with plain arguments "
                         f"({', '.join(flat)}); use one form")
    if nested:  # keyed by mixer name
        for k in nested:
            if k not in MIXERS:
                raise ValueError(f"mixer_kwargs: unknown mixer key '{k}' (known mixers: {', '.join(sorted(MIXERS))})")
        return [dict(mixer_kwargs.get(m, {})) for m in mixers]
    return [dict(mixer_kwargs) if m != "attention" else {} for m in mixers]


class DiTBlock(nn.Module):
    """adaLN-Zero block: x += a1 * mixer(mod(LN(x))); x += a2 * mlp(mod(LN(x))), modulated by cond.c."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, mixer: str = "attention",
                 mixer_kwargs: dict | None = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = build_mixer(mixer, hidden_size, num_heads, **(mixer_kwargs or {}))
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def initialize_weights(self):
        """adaLN-Zero (the residual branches start shut), then the mixer's own init if it has one."""
        nn.init.constant_(self.adaLN_modulation[-1].weight, 0)
        nn.init.constant_(self.adaLN_modulation[-1].bias, 0)
        if hasattr(self.attn, "reset_parameters"):
            self.attn.reset_parameters()

    def _mods(self, cond: Cond):
        c = cond.per_token("c", expand=False)  # (B, D), or (B, N, D) for per-frame times
        sh1, sc1, g1, sh2, sc2, g2 = self.adaLN_modulation(c).chunk(6, dim=-1)  # each (B, [N,] D)
        if g1.dim() == 2:
            g1, g2 = g1.unsqueeze(1), g2.unsqueeze(1)
        return sh1, sc1, g1, sh2, sc2, g2

    def forward(self, x: torch.Tensor, cond: Cond, ctx: MixerContext) -> torch.Tensor:
        sh1, sc1, g1, sh2, sc2, g2 = self._mods(cond)
        x = x + g1 * self.attn(modulate(self.norm1(x), sh1, sc1), ctx)  # (B, N, D)
        x = x + g2 * self.mlp(modulate(self.norm2(x), sh2, sc2))  # (B, N, D)
        return x

    def step(self, x: torch.Tensor, cond: Cond, state):
        """One frame's tokens through the block with the mixer's recurrent state."""
        sh1, sc1, g1, sh2, sc2, g2 = self._mods(cond)
        y, state = self.attn.step(modulate(self.norm1(x), sh1, sc1), state)
        x = x + g1 * y
        x = x + g2 * self.mlp(modulate(self.norm2(x), sh2, sc2))
        return x, state


class FinalLayer(nn.Module):
    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    """The backbone; see the module docstring for `mixer`, `mixer_kwargs` and `block`."""

    def __init__(
        self,
        input_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        class_dropout_prob: float = 0.1,
        num_classes: int = 1000,
        learn_sigma: bool = True,
        mixer: str | list = "attention",
        mixer_kwargs: dict | list | None = None,
        frames: int = 0,
        mask: str = "none",
        block=DiTBlock,
    ):
        super().__init__()
        if input_size % patch_size:
            raise ValueError(f"input_size {input_size} is not divisible by patch_size {patch_size}")
        self.in_channels, self.patch_size, self.num_heads = in_channels, patch_size, num_heads
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.learn_sigma, self.num_classes, self.input_size = learn_sigma, num_classes, input_size
        self.frames, self.mask = frames, mask
        self.grid = input_size // patch_size
        self.x_embedder = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        n_tokens = self.grid**2 * max(frames, 1)
        # Fixed sin-cos embedding; a frozen Parameter so that it is saved and counted like the official DiT.
        self.pos_embed = nn.Parameter(torch.zeros(1, n_tokens, hidden_size), requires_grad=False)
        mixers = list(mixer) if isinstance(mixer, (list, tuple)) else [mixer]
        if depth % len(mixers):  # a list is a pattern repeated over the blocks, e.g. [attention, pom]
            raise ValueError(f"a pattern of {len(mixers)} mixer names does not tile {depth} blocks")
        mixers = mixers * (depth // len(mixers))
        self.mixers = list(mixers)
        kwargs = block_mixer_kwargs(self.mixers, mixer_kwargs)
        make = (lambda i, **kw: block(**kw)) if isinstance(block, type) else block  # class or (i, **kw) -> block
        self.blocks = nn.ModuleList([
            make(i, hidden_size=hidden_size, num_heads=num_heads, mlp_ratio=mlp_ratio, mixer=m, mixer_kwargs=kw)
            for i, (m, kw) in enumerate(zip(mixers, kwargs))
        ])
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    def initialize_weights(self):
        def _basic_init(module):
            if isinstance(module, nn.Linear):
                torch.nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0)

        self.apply(_basic_init)
        d = self.pos_embed.shape[-1]
        pe = sincos_3d(d, self.frames, self.grid) if self.frames else sincos_2d(d, self.grid)
        self.pos_embed.data.copy_(torch.from_numpy(pe).float().unsqueeze(0))
        w = self.x_embedder.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.constant_(self.x_embedder.bias, 0)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        nn.init.constant_(self.final_layer.adaLN_modulation[-1].weight, 0)
        nn.init.constant_(self.final_layer.adaLN_modulation[-1].bias, 0)
        nn.init.constant_(self.final_layer.linear.weight, 0)
        nn.init.constant_(self.final_layer.linear.bias, 0)
        for block in self.blocks:  # blocks own the rest (DiTBlock: adaLN-Zero, then the mixer's init)
            if hasattr(block, "initialize_weights"):
                block.initialize_weights()

    # ---- tokens <-> images -------------------------------------------------------------------
    @property
    def tokens_per_frame(self) -> int:
        return self.grid**2

    def embed(self, x: torch.Tensor, frame_offset: int = 0) -> torch.Tensor:
        """(B, C, H, W) or (B, F, C, H, W) -> (B, N, D) tokens with position embedding.

        Frame f (counting from `frame_offset`) uses temporal position f of the space-time sin-cos code
        and the trained spatial grid: row f*h*w + i of the table. Frames within the built count read
        the stored table (`pos_embed`); frames beyond it (longer videos than trained) get the same
        code computed for their index, so the table extends to any number of frames."""
        video = x.dim() == 5
        if video:
            B, F = x.shape[:2]
            x = x.flatten(0, 1)
        x = self.x_embedder(x).flatten(2).transpose(1, 2)  # (B*F, h*w, D)
        if video:
            x = x.reshape(B, F * x.shape[1], -1)  # (B, F*h*w, D)
        n0 = frame_offset * self.tokens_per_frame
        n1 = n0 + x.shape[1]
        pos = self.pos_embed
        if self.frames and n1 > pos.shape[1]:  # beyond the built frames: extend the sin-cos table
            pe = sincos_3d(pos.shape[-1], -(-n1 // self.tokens_per_frame), self.grid)
            pos = torch.from_numpy(pe[pos.shape[1] :]).to(pos).unsqueeze(0)
            pos = torch.cat([self.pos_embed, pos], 1)  # (1, >= n1, D)
        return x + pos[:, n0:n1]

    def unpatchify(self, x: torch.Tensor, frames: int = 0) -> torch.Tensor:
        """(B, N, p*p*C) -> (B, C, H, W), or (B, F, C, H, W) for video."""
        p, h = self.patch_size, self.grid
        if frames:
            return rearrange(x, "b (f h w) (p q c) -> b f c (h p) (w q)", f=frames, h=h, p=p, q=p)
        return rearrange(x, "b (h w) (p q c) -> b c (h p) (w q)", h=h, p=p, q=p)

    def condition(self, t: torch.Tensor, y: torch.Tensor, num_tokens: int, force_drop_ids=None) -> Cond:
        """The blocks' conditioning for `num_tokens` tokens: t (B,) or per frame (B, F); y (B,)."""
        B = y.shape[0]
        frames = num_tokens // self.tokens_per_frame
        if t.shape != (B,) and t.shape != (B, frames):
            raise ValueError(f"t has shape {tuple(t.shape)}; expected (B,) = ({B},) or per frame (B, F) = ({B}, {frames})")
        t_emb = self.t_embedder(t)  # (B, D) or (B, F, D)
        y_emb = self.y_embedder(y, self.training, force_drop_ids)  # (B, D)
        c = t_emb + (y_emb.unsqueeze(1) if t_emb.dim() == 3 else y_emb)  # (B, D) or (B, F, D)
        return Cond(t=t, t_emb=t_emb, y_emb=y_emb, c=c, tokens_per_frame=self.tokens_per_frame, num_tokens=num_tokens)

    def forward(self, x, t, y, ctx: MixerContext | None = None, force_drop_ids=None):
        """x: (B, C, H, W) or (B, F, C, H, W); t: (B,) or (B, F); y: (B,) -> same shape as x (x2 channels
        when learn_sigma)."""
        frames = x.shape[1] if x.dim() == 5 else 0
        if ctx is None:
            ctx = MixerContext(frames=max(frames, 1), height=self.grid, width=self.grid, mask=self.mask)
        h = self.embed(x)  # (B, N, D)
        cond = self.condition(t, y, h.shape[1], force_drop_ids)
        for block in self.blocks:
            h = block(h, cond, ctx)  # (B, N, D)
        h = self.final_layer(h, cond.per_token("c", expand=False))  # (B, N, p*p*C')
        return self.unpatchify(h, frames)  # (B, [F,] C', H, W)

    def step_frame(self, x, t, y, states: list | None, frame_index: int, force_drop_ids=None):
        """One frame (B, C, H, W) at frame position `frame_index`, given per-block mixer states of the
        frames before it. Returns (out (B, C', H, W), new_states). Pass the returned states on only when
        the frame is final (clean); during denoising steps of the frame, discard them."""
        h = self.embed(x.unsqueeze(1), frame_offset=frame_index)  # (B, n, D)
        cond = self.condition(t, y, h.shape[1], force_drop_ids)  # t (B,): one frame
        states = states or [None] * len(self.blocks)
        new_states = []
        for block, s in zip(self.blocks, states):
            h, s = block.step(h, cond, s)
            new_states.append(s)
        out = self.unpatchify(self.final_layer(h, cond.per_token("c", expand=False)))
        return out, new_states
