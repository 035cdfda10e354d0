"""PoM mixer: block-causal parallel == frame-by-frame step, masks against naive references,
permutation equivariance, linear FLOP growth, shapes/dtypes, degree-1 sanity. Both forms (v1, v2)."""
import pytest
import torch
import torch.nn.functional as F

from common.bench import count_flops
from common.mixers import MixerContext, build_mixer
from common.mixers.pom import PoM

D, HEADS = 16, 4
VARIANTS = [  # constructor kwargs; coeff_init large so that v2's output is far from zero
    dict(form="v1"),
    dict(form="v1", degree=3, expand=1, gate_heads=1),
    dict(form="v2", coeff_init=0.5),
    dict(form="v2", degree=3, gate_heads=1, coeff_init=0.5),
]


def make(**kw) -> PoM:
    m = build_mixer("pom", D, HEADS, **kw)
    with torch.no_grad():  # non-zero biases so that they are exercised too
        for p in m.parameters():
            if p.ndim == 1:
                p.uniform_(-0.5, 0.5)
    return m.double()


def naive(m: PoM, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Masked-mean PoM with an explicit (N, N) mask (TEST ONLY: quadratic on purpose)."""
    z = F.linear(x, m.proj_in.weight, m.proj_in.bias)
    a, g = z.split([m.state_dim, m.gate_dim], -1)
    if m.form == "v1":
        h = F.gelu(a).chunk(m.degree, -1)
        p = [h[0]]
        for j in range(1, m.degree):
            p.append(p[-1] * h[j])
        P = torch.cat(p, -1)
        s = torch.sigmoid(g)
    else:
        h = F.leaky_relu(a, 0.01).clamp(-0.1, 6)
        P = sum(m.coeff[:, j] * h ** (j + 1) for j in range(m.degree))
        s = F.hardsigmoid(g + m.gate_bias)
    w = allowed.to(x.dtype)
    H = (w @ P) / w.sum(1, keepdim=True)  # (B, N, S)
    s = s.repeat_interleave(m.state_dim // m.gate_dim, -1)  # per-head gates -> channels
    return m.proj_out(s * H)


@pytest.mark.parametrize("kw", VARIANTS)
@pytest.mark.parametrize("sizes", [(6, 6, 6), (5, 1, 9, 3)])
def test_block_parallel_equals_step(kw, sizes):
    m = make(**kw).float()
    x = torch.randn(2, sum(sizes), D)
    y = m(x, MixerContext(frames=len(sizes), mask="block", frame_sizes=sizes))
    state, ys = None, []
    for xf in x.split(sizes, 1):
        yf, state = m.step(xf, state)
        ys.append(yf)
        assert state[0].shape == (2, m.state_dim)  # constant-size state
    assert state[1] == sum(sizes)  # counted in tokens
    assert (y - torch.cat(ys, 1)).abs().max().item() < 1e-5
    assert y.abs().max() > 1e-3  # not trivially zero


@pytest.mark.parametrize("kw", VARIANTS)
def test_masks_match_naive_reference(kw):
    m = make(**kw)
    N, sizes = 13, (4, 2, 7)
    x = torch.randn(2, N, D, dtype=torch.float64)
    f = torch.repeat_interleave(torch.arange(3), torch.tensor(sizes))
    cases = {
        "causal": (MixerContext(mask="causal"), torch.ones(N, N, dtype=torch.bool).tril()),
        "block": (MixerContext(frames=3, mask="block", frame_sizes=sizes), f[:, None] >= f[None, :]),
        "none": (MixerContext(), torch.ones(N, N, dtype=torch.bool)),
    }
    for name, (ctx, allowed) in cases.items():
        torch.testing.assert_close(m(x, ctx), naive(m, x, allowed), msg=f"mask {name}")


@pytest.mark.parametrize("kw", VARIANTS)
def test_gradients_match_naive_reference(kw):
    m = make(**kw)
    x = torch.randn(1, 9, D, dtype=torch.float64, requires_grad=True)
    f = torch.repeat_interleave(torch.arange(2), torch.tensor((4, 5)))
    for ctx, allowed in [(MixerContext(frames=2, mask="block", frame_sizes=(4, 5)), f[:, None] >= f[None, :]),
                         (MixerContext(), torch.ones(9, 9, dtype=torch.bool))]:
        g = torch.randn(1, 9, D, dtype=torch.float64)
        params = [x, *m.parameters()]
        got = torch.autograd.grad(m(x, ctx), params, g)
        want = torch.autograd.grad(naive(m, x, allowed), params, g)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("kw", VARIANTS)
def test_non_causal_is_permutation_equivariant(kw):
    m = make(**kw)
    x = torch.randn(2, 11, D, dtype=torch.float64)
    perm = torch.randperm(11)
    torch.testing.assert_close(m(x)[:, perm], m(x[:, perm]))
    # ... and the causal mask is not (sanity check that the test can fail)
    ctx = MixerContext(mask="causal")
    assert not torch.allclose(m(x, ctx)[:, perm], m(x[:, perm], ctx))


def _flops(name, N, dim=32, **kw):
    m = build_mixer(name, dim, 4, **kw)
    x = torch.randn(1, N, dim, requires_grad=True)
    return count_flops(lambda: m(x).sum().backward())


def test_flops_grow_linearly_attention_quadratically():
    n = 256
    pom = [_flops("pom", n * r) for r in (1, 2, 4)]
    assert abs(pom[1] / pom[0] - 2) < 0.06 and abs(pom[2] / pom[0] - 4) < 0.12, pom
    att = [_flops("attention", n * r) for r in (1, 2, 4)]
    assert att[1] / att[0] > 3.0 and att[2] / att[0] > 10.0, att


@pytest.mark.parametrize("form", ["v1", "v2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_shapes_and_dtypes(form, dtype):
    m = build_mixer("pom", D, HEADS, form=form).to(dtype)
    x = torch.randn(3, 10, D, dtype=dtype)
    for ctx in (MixerContext(), MixerContext(mask="causal"), MixerContext(frames=2, mask="block")):
        y = m(x, ctx)
        assert y.shape == x.shape and y.dtype == dtype and torch.isfinite(y).all()
    want = (2 if form == "v1" else 1) * 2 * D
    assert m.state_dim == want and m.proj_in.out_features == 2 * want  # one fused GEMM


def test_degree1_state_is_mean_of_gelu_features():
    m = make(form="v1", degree=1)
    x = torch.randn(2, 7, D, dtype=torch.float64)
    a = m.proj_in(x)[..., : m.state_dim]
    torch.testing.assert_close(m._state(a, "none", None), F.gelu(a).mean(1))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="form 'v3'"):
        PoM(D, HEADS, form="v3")
    with pytest.raises(ValueError, match="gate heads 3"):
        PoM(D, 3, gate_heads=1)
    with pytest.raises(ValueError, match="do not add up"):
        make()(torch.randn(1, 5, D, dtype=torch.float64), MixerContext(frames=2, mask="block", frame_sizes=(2, 2)))
