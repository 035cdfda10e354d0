"""Fused kernels, each beside a plain torch reference, and the dispatch between them.

Rule: a CUDA tensor goes to the Triton kernel, anything else to the torch reference. Set the
environment variable `DIFFREPRO_DISABLE_KERNELS=1` to force every torch reference on GPU too
(debugging, or to compare a kernel with its reference). Triton is imported lazily, only when a kernel
is actually used, so CPU-only code never imports it.
"""
from __future__ import annotations

import os

import torch

from .pom_ref import poly_mean_ref

DISABLE_ENV = "DIFFREPRO_DISABLE_KERNELS"


def kernels_disabled() -> bool:
    """True when `DIFFREPRO_DISABLE_KERNELS` is set to anything but "" or "0"."""
    return os.environ.get(DISABLE_ENV, "0") not in ("", "0")


def use_triton(t: torch.Tensor) -> bool:
    """True when `t` should go through a Triton kernel (CUDA tensor, triton importable, not disabled)."""
    if not t.is_cuda or kernels_disabled():
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def poly_mean(a: torch.Tensor, degree: int, mask: str = "none", sizes=None) -> torch.Tensor:
    """PoM v1 state from the pre-activation a (B, N, k*C): GELU, cumulative Hadamard products, masked mean.

    Returns (B, k*C) for mask "none", (B, F, k*C) block-causal frame means for "block" (frames of
    `sizes` tokens), (B, N, k*C) prefix means for "causal" (always the torch path). See pom_ref.py."""
    if mask != "causal" and use_triton(a):
        from .pom_triton import poly_mean_triton

        return poly_mean_triton(a, degree, mask, sizes)
    return poly_mean_ref(a, degree, mask, sizes)


__all__ = ["DISABLE_ENV", "kernels_disabled", "poly_mean", "poly_mean_ref", "use_triton"]
