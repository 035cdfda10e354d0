"""PoM's memory-lean backward (common/mixers/pom_lean.py) against autograd over the plain layer.

What the lean layer promises: the same forward values and gradients as the plain PoM (float64, to rounding),
for every mask it takes, both gate kinds and several degrees, with chunks that split frames; and that it
keeps for backward only x, the fused projection [a; g] and the small state (counted with saved-tensor hooks,
so no timing or process memory is involved)."""
from __future__ import annotations

import pytest
import torch

from common.kernels.pom_ref import poly_features
from common.mixers import MixerContext
from common.mixers.pom import PoM
from common.mixers.pom_lean import features_vjp, token_chunks

CASES = [  # (degree, expand, gate_heads, mask, frame sizes)
    (2, 2, 0, "none", None),
    (2, 2, 1, "none", None),
    (1, 3, 0, "block", (5, 5, 5, 5)),
    (3, 1, 1, "block", (7, 2, 9, 4)),
    (4, 1, 0, "block", (6, 3, 11)),
]


def _pair(degree, expand, gate_heads, dim=12, heads=3):
    torch.manual_seed(0)
    plain = PoM(dim, heads, degree=degree, expand=expand, gate_heads=gate_heads).double()
    lean = PoM(dim, heads, degree=degree, expand=expand, gate_heads=gate_heads, lean=True).double()
    lean.load_state_dict(plain.state_dict())
    for p in plain.parameters():  # non-zero biases, so that every gradient path is exercised
        p.data.add_(0.1 * torch.randn_like(p))
    lean.load_state_dict(plain.state_dict())
    return plain, lean


@pytest.mark.parametrize("degree,expand,gate_heads,mask,sizes", CASES)
@pytest.mark.parametrize("per_chunk", [3, 1000])
def test_lean_equals_autograd(degree, expand, gate_heads, mask, sizes, per_chunk, monkeypatch):
    import common.mixers.pom_lean as pl

    monkeypatch.setattr(pl, "chunk_tokens", lambda batch, width: per_chunk)  # small chunks split the frames
    plain, lean = _pair(degree, expand, gate_heads)
    N = sum(sizes) if sizes else 17
    ctx = MixerContext(mask=mask, frame_sizes=sizes, frames=len(sizes) if sizes else 1)
    x = torch.randn(2, N, 12, dtype=torch.float64)
    dy = torch.randn(2, N, 12, dtype=torch.float64)
    outs, grads = [], []
    for m in (plain, lean):
        xi = x.clone().requires_grad_()
        y = m(xi, ctx)
        y.backward(dy)
        outs.append(y.detach())
        grads.append([xi.grad] + [p.grad for p in m.parameters()])
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=1e-13)
    for g_lean, g_plain in zip(grads[1], grads[0]):
        torch.testing.assert_close(g_lean, g_plain, rtol=1e-11, atol=1e-12)


def test_lean_without_input_grad_and_at_inference():
    plain, lean = _pair(2, 2, 0)
    x = torch.randn(2, 9, 12, dtype=torch.float64)
    lean(x).sum().backward()  # x needs no gradient: the parameters still get theirs
    assert all(p.grad is not None for p in lean.parameters())
    with torch.no_grad():  # no gradients recorded: the plain forward
        torch.testing.assert_close(lean(x), plain(x))


def test_lean_refuses_v2():
    with pytest.raises(ValueError, match="lean"):
        PoM(8, 2, form="v2", lean=True)


def test_features_vjp_matches_autograd():
    torch.manual_seed(1)
    for degree in (1, 2, 3, 4):
        a = torch.randn(2, 5, degree * 6, dtype=torch.float64, requires_grad=True)
        q = torch.randn(2, degree * 6, dtype=torch.float64)
        (poly_features(a, degree) * q[:, None]).sum().backward()
        torch.testing.assert_close(features_vjp(a.detach(), q, degree), a.grad)


def test_chunks_cover_tokens_within_frames():
    sizes = (5, 1, 8)
    got = list(token_chunks(sizes, 3))
    assert got == [(0, 0, 3), (0, 3, 5), (1, 5, 6), (2, 6, 9), (2, 9, 12), (2, 12, 14)]


def _saved_bytes(module, x, ctx=None) -> int:
    """Bytes of the distinct tensors autograd keeps for backward, beyond x and the parameters."""
    own = {x.data_ptr()} | {p.data_ptr() for p in module.parameters()}
    seen = {}

    def pack(t):
        if t.data_ptr() not in own:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x, ctx)
    return sum(seen.values())


@pytest.mark.parametrize("gate_heads", [0, 1])
def test_lean_keeps_only_the_projection(gate_heads):
    """The property the lean layer exists for: per token it keeps S + G floats (the fused projection), while
    autograd over the plain layer keeps more (the gates' sigmoid besides)."""
    B, N, D, heads = 2, 256, 16, 4
    plain = PoM(D, heads, gate_heads=gate_heads)
    lean = PoM(D, heads, gate_heads=gate_heads, lean=True)
    x = torch.randn(B, N, D, requires_grad=True)
    z_bytes = B * N * (lean.state_dim + lean.gate_dim) * 4
    state_bytes = B * lean.state_dim * 4  # H, one frame
    assert _saved_bytes(lean, x) == z_bytes + state_bytes
    assert _saved_bytes(plain, x) >= z_bytes + B * N * lean.gate_dim * 4
