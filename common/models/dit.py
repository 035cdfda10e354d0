"""DiT: Scalable Diffusion Models with Transformers (Peebles & Xie, arXiv 2212.09748), generalised to
video tokens, per-frame timesteps and swappable token mixers.

Faithful to the paper/official model: patchify conv, fixed 2-D sin-cos positions (a frozen parameter,
counted in the parameter total like the official code), adaLN-Zero blocks (zero-initialised modulation
and final layer), label embedding with a "null" row for classifier-free guidance, optional learned sigma.

What it adds for the papers built on it:
- `mixer`: the token mixer by name (`common.mixers`), per block if a list is given (hybrids);
- video: input (B, F, C, H, W) -> F*h*w tokens with a space-time sin-cos embedding;
- per-frame timesteps: t of shape (B, F) gives every frame its own conditioning (FVDM);
- feature taps: `forward(..., return_features=True)` returns every block's output (REPA/HASTE), and
  attention logits are collected through `ctx.attn_logits`;
- `step_frame`: frame-by-frame inference through mixers' recurrent `step` (PoM video generation).
"""
from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from common.mixers import MixerContext, build_mixer
from common.nn import LabelEmbedder, Mlp, TimestepEmbedder, modulate, sincos_2d, sincos_3d


class DiTBlock(nn.Module):
    """adaLN-Zero block: x += a1 * mixer(mod(LN(x))); x += a2 * mlp(mod(LN(x)))."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, mixer: str = "attention",
                 mixer_kwargs: dict | None = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = build_mixer(mixer, hidden_size, num_heads, **(mixer_kwargs or {}))
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def _mods(self, c):
        return self.adaLN_modulation(c).chunk(6, dim=-1)

    def forward(self, x: torch.Tensor, c: torch.Tensor, ctx: MixerContext) -> torch.Tensor:
        sh1, sc1, g1, sh2, sc2, g2 = self._mods(c)  # each (B, D) or (B, N, D)
        if g1.dim() == 2:
            g1, g2 = g1.unsqueeze(1), g2.unsqueeze(1)
        x = x + g1 * self.attn(modulate(self.norm1(x), sh1, sc1), ctx)  # (B, N, D)
        x = x + g2 * self.mlp(modulate(self.norm2(x), sh2, sc2))  # (B, N, D)
        return x

    def step(self, x: torch.Tensor, c: torch.Tensor, state):
        """One frame's tokens through the block with the mixer's recurrent state."""
        sh1, sc1, g1, sh2, sc2, g2 = self._mods(c)
        if g1.dim() == 2:
            g1, g2 = g1.unsqueeze(1), g2.unsqueeze(1)
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
        mixer_kwargs: dict | None = None,
        frames: int = 0,
        mask: str = "none",
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
        self.blocks = nn.ModuleList(
            [DiTBlock(hidden_size, num_heads, mlp_ratio, m, mixer_kwargs if m != "attention" else None) for m in mixers]
        )
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
        for block in self.blocks:  # adaLN-Zero
            nn.init.constant_(block.adaLN_modulation[-1].weight, 0)
            nn.init.constant_(block.adaLN_modulation[-1].bias, 0)
        nn.init.constant_(self.final_layer.adaLN_modulation[-1].weight, 0)
        nn.init.constant_(self.final_layer.adaLN_modulation[-1].bias, 0)
        nn.init.constant_(self.final_layer.linear.weight, 0)
        nn.init.constant_(self.final_layer.linear.bias, 0)
        for block in self.blocks:  # mixers may have their own init
            if hasattr(block.attn, "reset_parameters"):
                block.attn.reset_parameters()

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

    def condition(self, t: torch.Tensor, y: torch.Tensor, force_drop_ids=None) -> torch.Tensor:
        """c = t_emb + y_emb: (B, D), or (B, F, D) for per-frame timesteps t: (B, F)."""
        c_t = self.t_embedder(t)  # (B, D) or (B, F, D)
        c_y = self.y_embedder(y, self.training, force_drop_ids)  # (B, D)
        return c_t + (c_y.unsqueeze(1) if c_t.dim() == 3 else c_y)

    def forward(self, x, t, y, ctx: MixerContext | None = None, force_drop_ids=None, return_features: bool = False):
        """x: (B, C, H, W) or (B, F, C, H, W); t: (B,) or (B, F); y: (B,) -> same shape as x (x2 channels
        when learn_sigma). With `return_features`, also the list of per-block token features (B, N, D)."""
        frames = x.shape[1] if x.dim() == 5 else 0
        if ctx is None:
            ctx = MixerContext(frames=max(frames, 1), height=self.grid, width=self.grid, mask=self.mask)
        h = self.embed(x)  # (B, N, D)
        c = self.condition(t, y, force_drop_ids)  # (B, D) or (B, F, D)
        if c.dim() == 3:  # per-frame conditioning -> per-token
            c = c.repeat_interleave(self.tokens_per_frame, dim=1)  # (B, N, D)
        feats = []
        for block in self.blocks:
            h = block(h, c, ctx)  # (B, N, D)
            if return_features:
                feats.append(h)
        out = self.unpatchify(self.final_layer(h, c), frames)  # (B, [F,] 2C, H, W)
        return (out, feats) if return_features else out

    def step_frame(self, x, t, y, states: list | None, frame_index: int, force_drop_ids=None):
        """One frame (B, C, H, W) at frame position `frame_index`, given per-block mixer states of the
        frames before it. Returns (out (B, C', H, W), new_states). Pass the returned states on only when
        the frame is final (clean); during denoising steps of the frame, discard them."""
        h = self.embed(x.unsqueeze(1), frame_offset=frame_index)  # (B, n, D)
        c = self.condition(t, y, force_drop_ids)  # (B, D)
        states = states or [None] * len(self.blocks)
        new_states = []
        for block, s in zip(self.blocks, states):
            h, s = block.step(h, c, s)
            new_states.append(s)
        out = self.unpatchify(self.final_layer(h, c))
        return out, new_states
