"""Plain torch reference of PoM's fused "polynomial + mean aggregation" (v1 / 2024 form).

Input is the pre-activation `a = x W_h + b_h` of shape (B, N, k*C) (C = expand * dim), split in k
chunks a_1..a_k. Per token, h_m = GELU(a_m) and the polynomial features are the cumulative Hadamard
products p_1 = h_1, p_m = p_{m-1} * h_m, concatenated to P = [p_1; ...; p_k] (k*C channels).
The aggregated state is a mean of P over tokens:

- mask "none":   H = mean_n P_n                                   -> (B, k*C)
- mask "block":  H_f = mean of P over all tokens of frames <= f    -> (B, F, k*C)
- mask "causal": H_i = mean of P over tokens <= i                  -> (B, N, k*C)

Everything is O(N) in time and memory (cumulative sums, never an N x N mask).

Three versions live here:
- `poly_features` / `aggregate` / `poly_mean_naive`: the readable definition, differentiated by autograd;
- `poly_mean_fwd` / `poly_mean_bwd`: explicit forward and backward with the same signatures as the
  Triton kernels (the backward recomputes everything from `a`), tiled over tokens so that the
  temporaries stay small and cache-resident; no (B, N, k*C) copy of P is ever kept;
- `PolyMeanRef`: the autograd.Function that pairs them (the CPU path of the mixer).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

TILE = 128  # tokens per tile in the explicit forward/backward (temporaries stay in cache)


def check_mask(mask: str) -> None:
    if mask not in ("none", "causal", "block"):
        raise ValueError(f"unknown mask '{mask}' (known: none, causal, block)")


def frame_sizes(n: int, sizes) -> tuple[int, ...]:
    """Tokens per frame; `sizes=None` means one frame holding all n tokens."""
    if sizes is None:
        return (n,)
    sizes = tuple(int(s) for s in sizes)
    if sum(sizes) != n or min(sizes) <= 0:
        raise ValueError(f"frame sizes {sizes} must be positive and add up to {n} tokens")
    return sizes


def poly_features(a: torch.Tensor, degree: int) -> torch.Tensor:
    """(..., k*C) pre-activation -> (..., k*C) features [p_1; ...; p_k], p_m = prod_{j<=m} GELU(a_j)."""
    h = F.gelu(a).chunk(degree, -1)
    p = [h[0]]
    for m in range(1, degree):
        p.append(p[-1] * h[m])
    return torch.cat(p, -1)


def aggregate(p: torch.Tensor, mask: str = "none", sizes=None) -> torch.Tensor:
    """Masked token mean of p (B, N, C): (B, C) | (B, F, C) cumulative frame means | (B, N, C) prefix means."""
    check_mask(mask)
    B, N, C = p.shape
    if mask == "none":
        return p.mean(1)  # (B, C)
    if mask == "causal":
        count = torch.arange(1, N + 1, device=p.device, dtype=p.dtype)
        return p.cumsum(1) / count[:, None]  # (B, N, C)
    sizes = frame_sizes(N, sizes)
    sums = torch.stack([s.sum(1) for s in p.split(sizes, 1)], 1)  # (B, F, C) per-frame sums
    count = torch.tensor(sizes, device=p.device, dtype=p.dtype).cumsum(0)  # (F,) tokens seen
    return sums.cumsum(1) / count[:, None]  # (B, F, C)


def poly_mean_naive(a: torch.Tensor, degree: int, mask: str = "none", sizes=None) -> torch.Tensor:
    """Readable definition (autograd does the backward); the ground truth for tests."""
    return aggregate(poly_features(a, degree), mask, sizes)


def _acc_dtype(t: torch.Tensor) -> torch.dtype:
    """Accumulate half/bfloat16 in fp32, keep fp32/fp64 as is."""
    return torch.promote_types(t.dtype, torch.float32)


def _tiles(sizes, tile: int = TILE):
    """Yield (frame, start, end) token tiles that never cross a frame boundary."""
    start = 0
    for f, n in enumerate(sizes):
        for t0 in range(start, start + n, tile):
            yield f, t0, min(t0 + tile, start + n)
        start += n


def _cumprod_(h: torch.Tensor, degree: int) -> torch.Tensor:
    """In place: chunks [h_1..h_k] -> [p_1..p_k] along the last dim."""
    c = h.shape[-1] // degree
    for m in range(1, degree):
        h[..., m * c:(m + 1) * c].mul_(h[..., (m - 1) * c:m * c])
    return h


def poly_mean_fwd(a: torch.Tensor, degree: int, mask: str = "block", sizes=None) -> torch.Tensor:
    """Explicit forward for masks "none" (-> (B, K)) and "block" (-> (B, F, K)), K = k*C.

    Per-frame sums of P are accumulated tile by tile, then a cumulative sum over frames divided by
    the number of tokens seen gives the block-causal means."""
    check_mask(mask)
    if mask == "causal":
        raise ValueError("poly_mean_fwd handles masks 'none' and 'block'; 'causal' uses poly_mean_naive")
    B, N, K = a.shape
    sizes = frame_sizes(N, sizes if mask == "block" else None)
    acc = _acc_dtype(a)
    sums = a.new_zeros(B, len(sizes), K, dtype=acc)  # (B, F, K)
    for f, t0, t1 in _tiles(sizes):
        p = _cumprod_(F.gelu(a[:, t0:t1].to(acc)), degree)  # (B, T, K)
        sums[:, f] += p.sum(1)
    count = torch.tensor(sizes, dtype=acc, device=a.device).cumsum(0)  # (F,)
    out = (sums.cumsum(1) / count[:, None]).to(a.dtype)
    return out[:, 0] if mask == "none" else out


def direct_grad(g: torch.Tensor, sizes) -> torch.Tensor:
    """Gradient of the cumulative frame means w.r.t. each token's P, one row per frame.

    H_f = S_{<=f} / n_{<=f}, so a token of frame f receives sum_{f' >= f} g_{f'} / n_{<=f'}."""
    acc = _acc_dtype(g)
    count = torch.tensor(sizes, dtype=acc, device=g.device).cumsum(0)  # (F,)
    g = g.to(acc) / count[:, None]  # (B, F, K)
    return g.flip(1).cumsum(1).flip(1)  # (B, F, K) reverse cumulative sum


def poly_mean_bwd(a: torch.Tensor, g: torch.Tensor, degree: int, mask: str = "block", sizes=None) -> torch.Tensor:
    """Explicit backward: grad of `poly_mean_fwd` w.r.t. `a`, recomputing GELU and products from `a`.

    With q_m = dL/dp_m for one token, the chain p_m = p_{m-1} h_m gives the suffix recursion
    G_k = q_k, G_m = q_m + G_{m+1} h_{m+1}, and dL/dh_m = G_m p_{m-1} (p_0 = 1)."""
    check_mask(mask)
    B, N, K = a.shape
    c = K // degree
    sizes = frame_sizes(N, sizes if mask == "block" else None)
    q = direct_grad(g[:, None] if mask == "none" else g, sizes)  # (B, F, K)
    da = torch.empty(B, N, K, dtype=a.dtype, device=a.device)  # (B, N, K)
    for f, t0, t1 in _tiles(sizes):
        for b in range(B):  # (T, K) tiles are contiguous slices of da, written in place
            at = a[b, t0:t1].to(q.dtype)  # (T, K)
            h = F.gelu(at)
            qf = q[b, f]  # (K,) same for every token of the frame
            dh = torch.empty_like(h)
            p_prev = _cumprod_(h[:, :(degree - 1) * c].clone(), degree - 1) if degree > 1 else None
            G = qf[(degree - 1) * c:].expand(h.shape[0], -1)  # (T, C) G_k
            for m in range(degree - 1, -1, -1):
                sl = slice(m * c, (m + 1) * c)
                if m == 0:
                    dh[:, sl] = G
                else:
                    torch.mul(G, p_prev[:, (m - 1) * c:m * c], out=dh[:, sl])
                    G = torch.addcmul(qf[(m - 1) * c:m * c], G, h[:, sl])  # G_{m-1}
            if da.dtype == dh.dtype:
                torch.ops.aten.gelu_backward.grad_input(dh, at, grad_input=da[b, t0:t1])
            else:
                da[b, t0:t1] = torch.ops.aten.gelu_backward(dh, at)
    return da


class PolyMeanRef(torch.autograd.Function):
    """autograd.Function over `poly_mean_fwd` / `poly_mean_bwd` (saves only `a`)."""

    @staticmethod
    def forward(ctx, a, degree, mask, sizes):
        ctx.save_for_backward(a)
        ctx.degree, ctx.mask, ctx.sizes = degree, mask, sizes
        return poly_mean_fwd(a, degree, mask, sizes)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        return poly_mean_bwd(a, g, ctx.degree, ctx.mask, ctx.sizes), None, None, None


def poly_mean_ref(a: torch.Tensor, degree: int, mask: str = "none", sizes=None) -> torch.Tensor:
    """CPU path: explicit tiled forward/backward for "none"/"block"; autograd over cumsum for "causal"."""
    check_mask(mask)
    if mask == "causal":
        return poly_mean_naive(a, degree, mask)
    return PolyMeanRef.apply(a, degree, mask, None if sizes is None else tuple(sizes))
