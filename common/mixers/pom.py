"""PoM, the Polynomial Mixer (Picard et al., arXiv 2411.12663; follow-up CVPR'26 Findings 2604.06129).

A drop-in replacement for self-attention that is linear in the number of tokens: every token is
mapped to polynomial features, their mean over the (masked) context is a fixed-size state H, and
every query reads H through its own gate: y_i = W_o(s_i * H).

Two forms, chosen with `form`:

- "v1" (2024 paper, default; the `HoM` layer of the official HoMM code):
  h = GELU(W_h x + b_h) in R^{k*e*D}, split in k chunks h_1..h_k; p_1 = h_1, p_m = p_{m-1} * h_m;
  P = [p_1; ...; p_k] (k*e*D channels); gate s = sigmoid(W_s x + b_s).
- "v2" (2026 follow-up, the `PoM` layer of the official pom code):
  h = clamp(leaky_relu(W_c x, 0.01), -0.1, 6) in R^{e*D}; P = sum_{p=1..k} alpha_p * h^p with
  per-channel learned alpha (init uniform in +-coeff_init, so the layer starts near zero);
  gate s = hardsigmoid(W_s x + b_s), no bias on W_c (as in the official code).

In both forms W_h (W_c) and W_s are ONE fused GEMM. With `gate_heads > 0` the gate is one scalar
per head (`num_heads` heads, the official `n_sel_heads = num_heads` setting), broadcast over the
state channels of that head; with 0 it is one gate per state channel.

Masks (`ctx.mask`): "none" mean over all tokens; "causal" prefix mean (cumsum / count); "block"
block-causal over frames (per-frame sums, cumsum over frames / token counts; frames may differ in
size via ctx.frame_sizes). All O(N) in time and memory. v1's state goes through
`common.kernels.poly_mean` (Triton on CUDA, a tiled torch reference elsewhere).

The readout never forms s * H when H is shared by many queries: W_o(s_i * H) = s_i @ M with
M = diag(H) W_o^T (or its per-head sum), one small (G, D) matrix per batch row (per frame for
"block"), so the readout is a single batched GEMM.

`lean=True` (v1, masks "none" and "block", when gradients are recorded) runs the layer as one
autograd.Function that keeps for backward only what a GEMM made ([W_h; W_s] x) and recomputes the
features and gates, chunk by chunk over tokens (`pom_lean.py`: the memory floor and why). Same
forward values; off by default, where autograd differentiates the plain forward below.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels import poly_mean
from ..kernels.pom_ref import aggregate, poly_features
from . import MixerContext, register
from .pom_lean import lean_pom, readout_matrix


@register("pom")
class PoM(nn.Module):
    def __init__(self, dim: int, num_heads: int, degree: int = 2, expand: int = 2, form: str = "v1",
                 gate_heads: int = 0, coeff_init: float = 1e-3, lean: bool = False):
        super().__init__()
        if form not in ("v1", "v2"):
            raise ValueError(f"unknown PoM form '{form}' (known: v1, v2)")
        if lean and form != "v1":
            raise ValueError("PoM lean=True (the memory-lean backward) is implemented for form v1 only")
        if degree < 1 or expand < 1:
            raise ValueError(f"PoM degree ({degree}) and expand ({expand}) must be >= 1")
        self.dim, self.degree, self.expand, self.form, self.lean = dim, degree, expand, form, lean
        # state channels: k*e*D for v1 (the k products are concatenated), e*D for v2 (alpha folds k in)
        self.state_dim = (degree if form == "v1" else 1) * expand * dim
        self.gate_dim = num_heads if gate_heads > 0 else self.state_dim
        if self.state_dim % self.gate_dim:
            raise ValueError(f"PoM state dim {self.state_dim} is not divisible by gate heads {self.gate_dim}")
        # fused [W_h; W_s] (v1, both biased) or [W_c; W_s] (v2, bias-free; only b_s below)
        self.proj_in = nn.Linear(dim, self.state_dim + self.gate_dim, bias=form == "v1")
        if form == "v2":
            self.gate_bias = nn.Parameter(torch.zeros(self.gate_dim))
            self.coeff = nn.Parameter(torch.empty(self.state_dim, degree).uniform_(-coeff_init, coeff_init))
        self.proj_out = nn.Linear(self.state_dim, dim)
        for lin in (self.proj_in, self.proj_out):  # DiT-style init
            nn.init.xavier_uniform_(lin.weight)
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, form={self.form}, degree={self.degree}, expand={self.expand}, "
                f"state_dim={self.state_dim}, gate_dim={self.gate_dim}" + (", lean=True" if self.lean else ""))

    # --- pieces -------------------------------------------------------------------------------
    def _split(self, x: torch.Tensor):
        z = self.proj_in(x)  # (B, N, S + G), one GEMM for both projections
        a, g = z.split([self.state_dim, self.gate_dim], -1)  # (B, N, S), (B, N, G)
        if self.form == "v1":
            return a, torch.sigmoid(g)
        return a, F.hardsigmoid(g + self.gate_bias)

    def features(self, a: torch.Tensor) -> torch.Tensor:
        """Per-token polynomial features P (B, N, S) from the pre-activation a (B, N, S)."""
        if self.form == "v1":
            return poly_features(a, self.degree)
        h = F.leaky_relu(a, 0.01).clamp(-0.1, 6.0)
        p = h * self.coeff[:, -1]  # Horner: h * (alpha_1 + h * (alpha_2 + ...))
        for j in range(self.degree - 2, -1, -1):
            p = h * (self.coeff[:, j] + p)
        return p

    def _state(self, a: torch.Tensor, mask: str, sizes) -> torch.Tensor:
        if self.form == "v1":
            return poly_mean(a, self.degree, mask, sizes)
        return aggregate(self.features(a), mask, sizes)

    def _readout_matrix(self, H: torch.Tensor) -> torch.Tensor:
        """(..., S) state -> (..., G, D) matrix M with W_o(s * H) = s @ M (bias excluded)."""
        return readout_matrix(H, self.proj_out.weight, self.gate_dim)

    def _readout(self, s: torch.Tensor, H: torch.Tensor, mask: str, sizes) -> torch.Tensor:
        """y = W_o(s * H) + b_o for gates s (B, N, G) and the state H of `poly_mean`'s shape."""
        B, N, G = s.shape
        bias = self.proj_out.bias
        if mask == "none":  # H (B, S)
            return torch.baddbmm(bias, s, self._readout_matrix(H))  # (B, N, D)
        if mask == "block":  # H (B, F, S)
            M = self._readout_matrix(H)  # (B, F, G, D)
            if len(set(sizes)) == 1:
                return (s.view(B, len(sizes), sizes[0], G) @ M).view(B, N, -1) + bias  # (B, N, D)
            ys = [sf @ M[:, f] for f, sf in enumerate(s.split(sizes, 1))]
            return torch.cat(ys, 1) + bias  # (B, N, D)
        # causal: H (B, N, S) differs per token, so form s * H explicitly
        u = (s[..., None] * H.unflatten(-1, (G, -1))).flatten(-2)  # (B, N, S)
        return self.proj_out(u)

    # --- interface ----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, ctx: MixerContext | None = None) -> torch.Tensor:
        ctx = ctx or MixerContext()
        B, N, D = x.shape
        sizes = ctx.sizes(N) if ctx.mask == "block" else None
        if self.lean and ctx.mask != "causal" and torch.is_grad_enabled():
            return lean_pom(x, self.proj_in, self.proj_out, self.degree, self.gate_dim, sizes or (N,))
        a, s = self._split(x)  # (B, N, S), (B, N, G)
        H = self._state(a, ctx.mask, sizes)  # (B, S) | (B, F, S) | (B, N, S)
        return self._readout(s, H, ctx.mask, sizes)  # (B, N, D)

    def step(self, x: torch.Tensor, state=None):
        """One frame x (B, n, D) -> (y (B, n, D), state); state = (sum of P over seen tokens (B, S), count).

        The frame's own P is added before reading (block-causal: a frame sees itself), and the mean
        is sum / count with count in TOKENS. (The official `state_forward` counts frames, which is
        exact only when all frames have the same size.) The state size does not grow with frames."""
        B, n, D = x.shape
        a, s = self._split(x)
        total = self.features(a).sum(1)  # (B, S)
        count = n
        if state is not None:
            total, count = state[0] + total, state[1] + n
        y = self._readout(s, total / count, "none", None)  # (B, n, D)
        return y, (total, count)


__all__ = ["PoM"]
