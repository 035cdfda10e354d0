"""Time grids for sampling and time distributions for training, apart from samplers and objectives.

A grid is a 1-D tensor of n + 1 times falling from t = 1 (noise) to the end of the chain (t = 0, data):
a sampler evaluates the model at the first n times and steps from each time to the next. Grids are
continuous and shared by both objectives; each objective says how it reads them:

- flow: as they are (the network sees 1000 t);
- ddpm: step k of the T-step chain lives at time (k + 1) / T and t = 0 is clean data (the chain's
  end, alpha-bar = 1). A grid time t > 0 runs the step nearest to it, k = round(t T) - 1 (at least 0),
  so `respaced`'s times land exactly on their steps; grid times that fall on the same step are
  merged, so a grid finer than the chain runs fewer steps (`GaussianDiffusion.chain`).

Grids:
- `uniform(n)`: t_i = 1 - i / n (flow's default).
- `shifted(n, s)`: t' = s t / (1 + (s - 1) t) of the uniform t (SD3 / RAE): s > 1 spends more steps at
  high noise; s = 1 is `uniform` exactly; s < 1 is refused.
- `respaced(n, T)`: DDPM respacing (IDDPM / DiT): n steps evenly spaced over the chain's steps
  0..T-1 (rounded, the first and last included), then data (ddpm's default).

Training times (`draw_t`): `uniform` (flow: t ~ U[0, 1]; ddpm: k ~ U{0..T-1}) or `logit_normal`
(SD3: t = sigmoid(m + s n), n ~ N(0, 1)). For ddpm a continuous draw u becomes the step whose
interval (k / T, (k + 1) / T] holds it, k = ceil(u T) - 1 (clamped to 0..T-1): U[0, 1] would give every
step the same probability, and logit-normal weights each step by the mass of its interval.
"""
from __future__ import annotations

import math

import numpy as np
import torch


def uniform(steps: int, end: float = 0.0) -> torch.Tensor:
    """(steps + 1,) float32 times 1 -> end, evenly spaced."""
    if steps < 1:
        raise ValueError(f"a grid needs at least 1 step, got {steps}")
    return torch.linspace(1.0, end, steps + 1)


def shifted(steps: int, shift: float, end: float = 0.0) -> torch.Tensor:
    """(steps + 1,) uniform times mapped by t' = s t / (1 + (s - 1) t), s = `shift` >= 1."""
    if not shift >= 1:  # also refuses NaN
        raise ValueError(f"grid shift {shift} must be >= 1 (1 = uniform; > 1 spends more steps near noise)")
    t = uniform(steps, end)
    return shift * t / (1 + (shift - 1) * t)


def respaced(steps: int, num_timesteps: int) -> torch.Tensor:
    """(steps + 1,) float64 DDPM times (k + 1) / T of `steps` evenly spaced steps k (IDDPM's respacing), then 0."""
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"cannot respace {num_timesteps} steps to {steps}")
    k = np.unique(np.round(np.linspace(0, num_timesteps - 1, steps)).astype(np.int64))  # ascending
    return torch.from_numpy(np.append((k[::-1] + 1) / num_timesteps, 0.0))


GRIDS = ("uniform", "shifted", "respaced")


def make_grid(name: str, steps: int, shift: float = 1.0, num_timesteps: int = 1000) -> torch.Tensor:
    """The grid called `name` (see the module docstring); `shift` is read by `shifted` only."""
    if name == "uniform":
        return uniform(steps)
    if name == "shifted":
        return shifted(steps, shift)
    if name == "respaced":
        return respaced(steps, num_timesteps)
    raise KeyError(f"unknown time grid '{name}' (known: {', '.join(GRIDS)})")


def check_grid(grid: torch.Tensor) -> torch.Tensor:
    """A grid must be 1-D and fall strictly within [0, 1] (it usually starts at 1, pure noise)."""
    if not torch.is_tensor(grid) or grid.dim() != 1 or len(grid) < 2:
        raise ValueError(f"a time grid is a 1-D tensor of at least 2 times, got {getattr(grid, 'shape', grid)}")
    if not (grid[0] <= 1 and (grid[1:] < grid[:-1]).all() and grid[-1] >= 0):
        raise ValueError(f"a time grid falls strictly within [0, 1], got {grid.tolist()}")
    return grid


# ---- training times ------------------------------------------------------------------------------
T_SAMPLING = ("uniform", "logit_normal")


def logit_normal(shape, mean: float, std: float, generator=None, device=None) -> torch.Tensor:
    """u = sigmoid(mean + std n), n ~ N(0, 1): float32 in (0, 1)."""
    return torch.sigmoid(mean + std * torch.randn(shape, generator=generator, device=device))


def continuous_to_step(u: torch.Tensor, num_timesteps: int) -> torch.Tensor:
    """DDPM step k = ceil(u T) - 1 in 0..T-1 of a continuous time u in [0, 1] (long)."""
    return (torch.ceil(u.double() * num_timesteps) - 1).clamp(0, num_timesteps - 1).long()


def check_t_sampling(kind: str, mean: float, std: float) -> None:
    if kind not in T_SAMPLING:
        raise KeyError(f"unknown training time distribution '{kind}' (known: {', '.join(T_SAMPLING)})")
    if kind == "logit_normal" and not (math.isfinite(mean) and std > 0):
        raise ValueError(f"logit-normal training times need a finite mean and std > 0, got {mean}, {std}")


__all__ = ["uniform", "shifted", "respaced", "GRIDS", "make_grid", "check_grid", "T_SAMPLING", "logit_normal",
           "continuous_to_step", "check_t_sampling"]
