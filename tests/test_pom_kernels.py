"""PoM's fused polynomial + mean kernels: Triton (interpreter on CPU) and the tiled torch reference
against the readable definition, values and gradients, over a grid of shapes.

Shapes are tiny because TRITON_INTERPRET=1 (set in conftest.py) is slow; token counts that are not
multiples of the block (and of the per-program tile) and unequal frames are included."""
import pytest
import torch

from common.kernels import poly_mean, use_triton
from common.kernels import pom_ref as ref

CASES = [  # (B, N, C per chunk, mask, frame sizes)
    (1, 1, 5, "none", None),
    (2, 37, 12, "none", None),
    (2, 40, 8, "block", (10, 10, 10, 10)),
    (1, 33, 16, "block", (3, 17, 1, 12)),
    (2, 7, 32, "block", (7,)),
]


def _check(fn, B, N, C, degree, mask, sizes, dtype=torch.float64, atol=1e-10):
    a = torch.randn(B, N, degree * C, dtype=dtype, requires_grad=True)
    y0 = ref.poly_mean_naive(a, degree, mask, sizes)
    g = torch.randn_like(y0)
    (d0,) = torch.autograd.grad(y0, a, g)
    y1 = fn(a, degree, mask, sizes)
    (d1,) = torch.autograd.grad(y1, a, g)
    assert y1.shape == y0.shape and y1.dtype == a.dtype
    torch.testing.assert_close(y1, y0, atol=atol, rtol=atol)
    torch.testing.assert_close(d1, d0, atol=atol, rtol=atol)


@pytest.mark.parametrize("degree", [1, 2, 3])
@pytest.mark.parametrize("B,N,C,mask,sizes", CASES)
def test_reference_matches_naive(B, N, C, mask, sizes, degree):
    _check(ref.poly_mean_ref, B, N, C, degree, mask, sizes)


def test_reference_tiles_cross_many_tiles(monkeypatch):
    monkeypatch.setattr(ref, "TILE", 4)  # many tiles per frame, ragged last tile
    _check(ref.poly_mean_ref, 2, 30, 6, 3, "block", (9, 2, 19))
    _check(ref.poly_mean_ref, 2, 30, 6, 2, "none", None)


@pytest.mark.parametrize("degree", [1, 2, 3])
@pytest.mark.parametrize("B,N,C,mask,sizes", CASES)
def test_triton_matches_reference(B, N, C, mask, sizes, degree, monkeypatch):
    pt = pytest.importorskip("common.kernels.pom_triton")
    monkeypatch.setattr(pt, "TOKENS_PER_PROG", 16)  # several programs per frame (atomic adds)
    _check(pt.poly_mean_triton, B, N, C, degree, mask, sizes, dtype=torch.float32, atol=2e-5)


def test_triton_strided_input_and_explicit_backward():
    """Non-contiguous `a` (a slice of the fused projection) and the bare fwd/bwd entry points."""
    pt = pytest.importorskip("common.kernels.pom_triton")
    z = torch.randn(2, 21, 2 * 24)
    a = z[..., :24]  # (B, N, 24) with token stride 48
    g = torch.randn(2, 3, 24)
    sizes = (5, 8, 8)
    torch.testing.assert_close(pt.poly_mean_fwd_triton(a, 2, "block", sizes),
                               ref.poly_mean_fwd(a, 2, "block", sizes), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pt.poly_mean_bwd_triton(a, g, 2, "block", sizes),
                               ref.poly_mean_bwd(a, g, 2, "block", sizes), atol=1e-5, rtol=1e-5)


def test_causal_is_prefix_mean_and_dispatch_stays_on_cpu():
    a = torch.randn(2, 11, 6, dtype=torch.float64)
    y = poly_mean(a, 2, "causal")  # (B, N, K)
    p = ref.poly_features(a, 2)
    for i in range(11):
        torch.testing.assert_close(y[:, i], p[:, : i + 1].mean(1))
    assert not use_triton(a)


def test_bad_inputs_name_the_problem():
    a = torch.randn(1, 10, 4)
    with pytest.raises(ValueError, match="mask 'diag'"):
        ref.poly_mean_ref(a, 2, "diag")
    with pytest.raises(ValueError, match="add up to 10"):
        ref.poly_mean_ref(a, 2, "block", (3, 3))


def test_kernel_switch_sends_cuda_tensors_to_the_reference(monkeypatch):
    """`DIFFREPRO_DISABLE_KERNELS=1` keeps even a CUDA tensor on the torch reference (any kernel)."""
    import types

    from common import kernels

    cuda = types.SimpleNamespace(is_cuda=True)  # dispatch only looks at the device
    monkeypatch.setenv(kernels.DISABLE_ENV, "1")
    assert kernels.kernels_disabled() and not use_triton(cuda)
    monkeypatch.setenv(kernels.DISABLE_ENV, "0")
    pytest.importorskip("triton")
    assert not kernels.kernels_disabled() and use_triton(cuda)
