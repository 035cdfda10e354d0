"""PoM's memory-lean forward + backward (`PoM(..., lean=True)`, form v1, masks "none" and "block").

Autograd over the plain layer keeps, per token, the fused projection z = [a; g] (S + G floats: state
pre-activation a, gate pre-activation g), the gates s = sigmoid(g) (G more), and in backward it builds
full-length gradients of all of them at once. Of these only z costs a GEMM to rebuild; the rest is
elementwise in z. So this autograd.Function keeps z (plus x, which the caller holds anyway, and the
tiny (B, F, S) state) and recomputes the polynomial features and the gates where they are needed.

The floor without recomputing the input GEMM is therefore S + G floats a token (and, not per token, one
(G, D) readout matrix per batch row and frame, which forward and backward both need). With one gate per
state channel (G = S = k*e*D: 2,048 floats at k = e = 2) that is 8x a D = 256 token, more than
attention keeps (q, k, v, output: ~4D); with one gate per head (G = heads) it is about half of that.
Rebuilding z from x instead would cost one more input GEMM (2*D*(S+G) FLOPs a token, about a fifth
of the layer's forward+backward), past the 15% time budget this layer is held to.

Everything full-length in backward is computed chunk by chunk over tokens (chunks never cross a
frame), so the temporaries (s, ds, dg, the features' gradient, dz = [da; dg]) stay chunk-sized:
1. dM = sum_i s_i^T dy_i, the gradient of each frame's readout matrix M = diag(H) W_o^T;
2. from dM a tiny autograd graph gives dH and dW_o, and the masked mean turns dH into q_f, the gradient
   w.r.t. the features P of every token of frame f (`pom_ref.direct_grad`);
3. per chunk: dg = sigmoid'(g) * (dy M^T), da = the features' vector-Jacobian product with q_f,
   dz = [da; dg], dx = dz W_in, dW_in += dz^T x.
Same FLOPs as autograd's backward, no GEMM is recomputed. Forward values are those of the plain layer
(the same ops); gradients agree to rounding (tests/test_pom_lean.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..kernels import use_triton
from ..kernels.pom_ref import direct_grad, poly_mean_fwd

CHUNK_ELEMS = 1 << 19  # elements of one (B, T, S + G) chunk temporary (2 MB in fp32): smaller chunks save
#   little memory and slow the per-chunk GEMMs (at N = 4,096, batch 4: 1 << 18 was 1.09-1.17x slower than autograd,
#   1 << 20 kept 9% above the floor)


def readout_matrix(H: torch.Tensor, w_out: torch.Tensor, gate_dim: int) -> torch.Tensor:
    """(..., S) state -> (..., G, D) matrix M with W_o(s * H) = s @ M (bias excluded); w_out is (D, S)."""
    wt = w_out.t()  # (S, D)
    if gate_dim == wt.shape[0]:
        return H[..., :, None] * wt  # (..., S, D)
    Hg = H.unflatten(-1, (gate_dim, -1))  # (..., G, S/G)
    return torch.einsum("...gc,gcd->...gd", Hg, wt.unflatten(0, (gate_dim, -1)))  # (..., G, D)


def readout_vjp(dM: torch.Tensor, H: torch.Tensor, w_out: torch.Tensor, gate_dim: int):
    """(dH, dW_o) from the gradient dM (..., G, D) of `readout_matrix(H, w_out, gate_dim)`.

    One gate per channel: M[., s, d] = H[., s] W[d, s], so dH[., s] = sum_d dM[., s, d] W[d, s] and
    dW[d, s] = sum_. dM[., s, d] H[., s], taken one (S, D) slab at a time (no (..., S, D) temporaries
    beside dM). One gate per head: M is (..., heads, D), small enough for autograd."""
    if gate_dim != w_out.shape[1]:
        with torch.enable_grad():
            Hr, Wr = H.detach().requires_grad_(), w_out.detach().requires_grad_()
            return torch.autograd.grad(readout_matrix(Hr, Wr, gate_dim), (Hr, Wr), dM)
    wt = w_out.t()  # (S, D)
    dH, dwt = torch.empty_like(H), torch.zeros_like(wt)
    flat_dM, flat_H, flat_dH = dM.reshape(-1, *dM.shape[-2:]), H.reshape(-1, H.shape[-1]), dH.view(-1, H.shape[-1])
    for i in range(flat_dM.shape[0]):  # batch rows (x frames)
        flat_dH[i] = (flat_dM[i] * wt).sum(-1)
        dwt.addcmul_(flat_dM[i], flat_H[i, :, None])
    return dH, dwt.t()


def features_vjp(a: torch.Tensor, q: torch.Tensor, degree: int) -> torch.Tensor:
    """dL/da for tokens a (B, T, k*C) whose features P all receive the same gradient q (B, k*C).

    p_m = p_{m-1} h_m with h_m = GELU(a_m): the suffix recursion G_k = q_k, G_m = q_m + G_{m+1} h_{m+1}
    gives dL/dh_m = G_m p_{m-1} (p_0 = 1), as `pom_ref.poly_mean_bwd` does tile by tile."""
    h = F.gelu(a).unflatten(-1, (degree, -1))  # (B, T, k, C)
    qc = q.unflatten(-1, (degree, -1))[:, None]  # (B, 1, k, C)
    prefix = [h[..., 0, :]]  # p_1 .. p_{k-1}
    for m in range(1, degree - 1):
        prefix.append(prefix[-1] * h[..., m, :])
    dh = torch.empty_like(h)
    G = qc[..., degree - 1, :]
    for m in range(degree - 1, 0, -1):
        torch.mul(G, prefix[m - 1], out=dh[..., m, :])
        G = qc[..., m - 1, :] + G * h[..., m, :]
    dh[..., 0, :] = G
    return torch.ops.aten.gelu_backward(dh.flatten(-2), a)


def token_chunks(sizes, per_chunk: int):
    """(frame, start, end) token ranges of at most `per_chunk` tokens that never cross a frame."""
    start = 0
    for f, n in enumerate(sizes):
        for t0 in range(start, start + n, per_chunk):
            yield f, t0, min(t0 + per_chunk, start + n)
        start += n


def chunk_tokens(batch: int, width: int, elems: int | None = None) -> int:
    """Tokens a chunk holds so that a (batch, tokens, width) temporary has about `elems` (CHUNK_ELEMS) elements."""
    return max(1, (elems or CHUNK_ELEMS) // max(1, batch * width))


def _state(a: torch.Tensor, degree: int, sizes) -> torch.Tensor:
    """Block-causal frame means of the features (B, F, S), by the Triton kernel on CUDA."""
    if use_triton(a):
        from ..kernels.pom_triton import poly_mean_fwd_triton

        return poly_mean_fwd_triton(a, degree, "block", sizes)
    return poly_mean_fwd(a, degree, "block", sizes)


class LeanPoM(torch.autograd.Function):
    """y = W_o(sigmoid(g) * H(a)) + b_o with [a; g] = W_in x + b_in, saving only x, [a; g] and H."""

    @staticmethod
    def forward(ctx, x, w_in, b_in, w_out, b_out, degree: int, gate_dim: int, sizes: tuple, per_chunk: int):
        B, N, D = x.shape
        S = w_out.shape[1]
        z = F.linear(x, w_in, b_in)  # (B, N, S + G): the one tensor kept for backward
        a, g = z.split([S, gate_dim], -1)
        H = _state(a, degree, sizes)  # (B, F, S)
        M = readout_matrix(H, w_out, gate_dim)  # (B, F, G, D)
        y = x.new_empty(B, N, D)
        for f, t0, t1 in token_chunks(sizes, per_chunk):
            y[:, t0:t1] = torch.baddbmm(b_out, torch.sigmoid(g[:, t0:t1]), M[:, f])
        ctx.save_for_backward(x, z, H, w_in, w_out)
        ctx.degree, ctx.gate_dim, ctx.sizes, ctx.per_chunk = degree, gate_dim, sizes, per_chunk
        ctx.has_b_in = b_in is not None
        return y

    @staticmethod
    def backward(ctx, dy):
        x, z, H, w_in, w_out = ctx.saved_tensors
        degree, G, sizes, per_chunk = ctx.degree, ctx.gate_dim, ctx.sizes, ctx.per_chunk
        S = w_out.shape[1]
        a, g = z.split([S, G], -1)
        chunks = list(token_chunks(sizes, per_chunk))
        M = readout_matrix(H, w_out, G)  # (B, F, G, D)
        dM = torch.zeros_like(M)
        for f, t0, t1 in chunks:  # 1. the readout matrices' gradient
            dM[:, f] += torch.sigmoid(g[:, t0:t1]).transpose(1, 2) @ dy[:, t0:t1]
        dH, dw_out = readout_vjp(dM, H, w_out, G)  # 2. through the (B, F, G, D) readout
        del dM  # before dx exists: the two never live together
        q = direct_grad(dH, sizes).to(z.dtype)  # (B, F, S): dL/dP for each token of frame f
        dx = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        dw_in = torch.zeros_like(w_in)
        db_in = z.new_zeros(z.shape[-1])
        for f, t0, t1 in chunks:  # 3. per chunk: dz = [da; dg] -> dx, dW_in, db_in
            s = torch.sigmoid(g[:, t0:t1])  # (B, T, G)
            dg = torch.ops.aten.sigmoid_backward(dy[:, t0:t1] @ M[:, f].transpose(1, 2), s)
            dz = torch.cat([features_vjp(a[:, t0:t1], q[:, f], degree), dg], -1)  # (B, T, S + G)
            if dx is not None:
                dx[:, t0:t1] = dz @ w_in
            dw_in += dz.flatten(0, 1).t() @ x[:, t0:t1].flatten(0, 1)  # out of place: FLOP counters see it
            db_in += dz.sum((0, 1))
            del s, dg, dz  # before the next chunk's: two chunks' temporaries never live together
        return (dx, dw_in, db_in if ctx.has_b_in else None, dw_out, dy.sum((0, 1)),
                None, None, None, None)


def lean_pom(x: torch.Tensor, proj_in, proj_out, degree: int, gate_dim: int, sizes) -> torch.Tensor:
    """The lean layer on x (B, N, D) with the PoM's fused input and output projections (nn.Linear)."""
    per_chunk = chunk_tokens(x.shape[0], proj_in.out_features)
    return LeanPoM.apply(x, proj_in.weight, proj_in.bias, proj_out.weight, proj_out.bias, degree, gate_dim,
                         tuple(sizes), per_chunk)


__all__ = ["CHUNK_ELEMS", "LeanPoM", "chunk_tokens", "features_vjp", "lean_pom", "readout_matrix",
           "readout_vjp", "token_chunks"]
