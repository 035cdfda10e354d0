"""Triton kernels for PoM's fused "polynomial + mean aggregation" (v1 form), forward and backward.

Same maths and signatures as `pom_ref.poly_mean_fwd` / `poly_mean_bwd` (read that file first):
input the pre-activation `a` (B, N, k*C), output the state (B, k*C) for mask "none" or the
block-causal cumulative frame means (B, F, k*C) for mask "block".

Work split: the tokens are cut into tiles of at most `TOKENS_PER_PROG` tokens that never cross a
frame boundary (a small host-side table of (frame, start, end)). One program handles one tile x one
block of channels x one batch row:

- forward: loads the k chunks of `a`, computes GELU, the cumulative Hadamard products and their
  token sum in registers, and atomically adds the sums into a (B, F, k*C) fp32 buffer; a tiny torch
  cumsum over frames divided by token counts then gives the means. No (B, N, k*C) P is written.
- backward: the per-frame gradient w.r.t. every token's P (`pom_ref.direct_grad`, (B, F, k*C)) is
  read; GELU and the products are recomputed from `a`; dL/da is written once. The suffix recursion
  G_m = q_m + G_{m+1} h_{m+1} is evaluated by recomputation (O(k^2) GELUs for degree k) so that
  nothing but named scalars/tiles is carried through loops (k is small: 1..4 in practice).

Tested on CPU with TRITON_INTERPRET=1 against the torch reference (tests/test_pom_kernels.py).
This module imports triton at import time; import it lazily (common.kernels does).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .pom_ref import check_mask, direct_grad, frame_sizes

TOKENS_PER_PROG = 512  # tokens per program (then split in BLOCK_N rows inside)


@triton.jit
def _gelu(x):
    return 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))


@triton.jit
def _gelu_grad(x):
    cdf = 0.5 * (1.0 + tl.math.erf(x * 0.7071067811865476))
    return cdf + x * 0.3989422804014327 * tl.exp(-0.5 * x * x)


@triton.jit
def _poly_sum_fwd_kernel(
    a_ptr, sums_ptr, tiles_ptr, C, F,
    stride_ab, stride_an,
    DEGREE: tl.constexpr, KP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_c, pid_t, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    f = tl.load(tiles_ptr + 3 * pid_t)
    t_start = tl.load(tiles_ptr + 3 * pid_t + 1)
    t_end = tl.load(tiles_ptr + 3 * pid_t + 2)
    rc = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)  # (BLOCK_C,) channel within a chunk
    rk = tl.arange(0, KP)  # (KP,) chunk index (padded to a power of 2)
    cmask = rc < C
    acc = tl.zeros((KP, BLOCK_C), dtype=tl.float32)  # per-chunk token sums
    base = a_ptr + b * stride_ab
    for t0 in range(t_start, t_end, BLOCK_N):
        rn = t0 + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
        m2 = (rn < t_end)[:, None] & cmask[None, :]
        p = tl.zeros((BLOCK_N, BLOCK_C), dtype=tl.float32)
        for m in tl.static_range(DEGREE):
            x = tl.load(base + rn[:, None] * stride_an + (m * C + rc)[None, :], mask=m2, other=0.0)
            h = _gelu(x.to(tl.float32))
            if m == 0:
                p = h
            else:
                p = p * h
            s = tl.sum(tl.where(m2, p, 0.0), axis=0)  # (BLOCK_C,)
            acc = tl.where(rk[:, None] == m, acc + s[None, :], acc)
    out = sums_ptr + (b * F + f) * (DEGREE * C) + rk[:, None] * C + rc[None, :]
    tl.atomic_add(out, acc, mask=(rk < DEGREE)[:, None] & cmask[None, :])


@triton.jit
def _poly_mean_bwd_kernel(
    a_ptr, q_ptr, da_ptr, tiles_ptr, C, F,
    stride_ab, stride_an, stride_db, stride_dn,
    DEGREE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_c, pid_t, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    f = tl.load(tiles_ptr + 3 * pid_t)
    t_start = tl.load(tiles_ptr + 3 * pid_t + 1)
    t_end = tl.load(tiles_ptr + 3 * pid_t + 2)
    rc = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = rc < C
    base = a_ptr + b * stride_ab
    qbase = q_ptr + (b * F + f) * (DEGREE * C)  # q: (B, F, k*C) contiguous fp32
    for t0 in range(t_start, t_end, BLOCK_N):
        rn = t0 + tl.arange(0, BLOCK_N)
        m2 = (rn < t_end)[:, None] & cmask[None, :]
        offs = rn[:, None] * stride_an + rc[None, :]
        for m in tl.static_range(DEGREE):
            x_m = tl.load(base + offs + m * C, mask=m2, other=0.0).to(tl.float32)
            # G_m = q_m + sum_{j>m} q_j * h_{m+1} ... h_j
            G = tl.zeros((BLOCK_N, BLOCK_C), dtype=tl.float32) + tl.load(qbase + m * C + rc, mask=cmask, other=0.0)[None, :]
            r = tl.full((BLOCK_N, BLOCK_C), 1.0, tl.float32)
            for j in tl.static_range(m + 1, DEGREE):
                r = r * _gelu(tl.load(base + offs + j * C, mask=m2, other=0.0).to(tl.float32))
                G += tl.load(qbase + j * C + rc, mask=cmask, other=0.0)[None, :] * r
            # p_{m-1} = h_1 ... h_{m-1} (1 for the first chunk)
            for i in tl.static_range(m):
                G = G * _gelu(tl.load(base + offs + i * C, mask=m2, other=0.0).to(tl.float32))
            da = G * _gelu_grad(x_m)
            dptr = da_ptr + b * stride_db + rn[:, None] * stride_dn + (m * C + rc)[None, :]
            tl.store(dptr, da.to(da_ptr.dtype.element_ty), mask=m2)


def _tile_table(sizes, device) -> torch.Tensor:
    """(T, 3) int32 rows (frame, start, end): token tiles that never cross a frame boundary."""
    rows, start = [], 0
    for f, n in enumerate(sizes):
        for t0 in range(start, start + n, TOKENS_PER_PROG):
            rows.append((f, t0, min(t0 + TOKENS_PER_PROG, start + n)))
        start += n
    return torch.tensor(rows, dtype=torch.int32, device=device)


def _blocks(C: int) -> tuple[int, int]:
    return 32, min(64, triton.next_power_of_2(C))  # BLOCK_N, BLOCK_C


def poly_mean_fwd_triton(a: torch.Tensor, degree: int, mask: str = "block", sizes=None) -> torch.Tensor:
    """Triton forward; same contract as `pom_ref.poly_mean_fwd`."""
    check_mask(mask)
    if mask == "causal":
        raise ValueError("the Triton kernel handles masks 'none' and 'block'; 'causal' stays in torch")
    if a.stride(-1) != 1:
        a = a.contiguous()
    B, N, K = a.shape
    C = K // degree
    sizes = frame_sizes(N, sizes if mask == "block" else None)
    tiles = _tile_table(sizes, a.device)
    sums = torch.zeros(B, len(sizes), K, device=a.device, dtype=torch.float32)  # (B, F, K)
    BLOCK_N, BLOCK_C = _blocks(C)
    grid = (triton.cdiv(C, BLOCK_C), tiles.shape[0], B)
    _poly_sum_fwd_kernel[grid](
        a, sums, tiles, C, len(sizes), a.stride(0), a.stride(1),
        DEGREE=degree, KP=triton.next_power_of_2(degree), BLOCK_N=BLOCK_N, BLOCK_C=BLOCK_C,
    )
    count = torch.tensor(sizes, dtype=torch.float32, device=a.device).cumsum(0)  # (F,)
    out = (sums.cumsum(1) / count[:, None]).to(a.dtype)
    return out[:, 0] if mask == "none" else out


def poly_mean_bwd_triton(a: torch.Tensor, g: torch.Tensor, degree: int, mask: str = "block", sizes=None) -> torch.Tensor:
    """Triton backward; same contract as `pom_ref.poly_mean_bwd`."""
    check_mask(mask)
    if a.stride(-1) != 1:
        a = a.contiguous()
    B, N, K = a.shape
    C = K // degree
    sizes = frame_sizes(N, sizes if mask == "block" else None)
    q = direct_grad(g[:, None] if mask == "none" else g, sizes).float().contiguous()  # (B, F, K)
    tiles = _tile_table(sizes, a.device)
    da = torch.empty(B, N, K, device=a.device, dtype=a.dtype)
    BLOCK_N, BLOCK_C = _blocks(C)
    grid = (triton.cdiv(C, BLOCK_C), tiles.shape[0], B)
    _poly_mean_bwd_kernel[grid](
        a, q, da, tiles, C, len(sizes), a.stride(0), a.stride(1), da.stride(0), da.stride(1),
        DEGREE=degree, BLOCK_N=BLOCK_N, BLOCK_C=BLOCK_C,
    )
    return da


class PolyMeanTriton(torch.autograd.Function):
    """autograd.Function over the Triton forward/backward (saves only `a`)."""

    @staticmethod
    def forward(ctx, a, degree, mask, sizes):
        ctx.save_for_backward(a)
        ctx.degree, ctx.mask, ctx.sizes = degree, mask, sizes
        return poly_mean_fwd_triton(a, degree, mask, sizes)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        return poly_mean_bwd_triton(a, g, ctx.degree, ctx.mask, ctx.sizes), None, None, None


def poly_mean_triton(a: torch.Tensor, degree: int, mask: str = "none", sizes=None) -> torch.Tensor:
    return PolyMeanTriton.apply(a, degree, mask, None if sizes is None else tuple(sizes))
