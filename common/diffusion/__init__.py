"""Diffusion objectives, parameterizations, time grids and samplers.

Time convention (one for the whole repository): **time grows with noise**. Flow matching uses
t in [0, 1] with x_t = (1 - t) x + t eps (t = 0 data, t = 1 noise) and velocity target v = eps - x,
which is REPA's / RAE's / SD3's convention; SiT's repository uses the opposite (t = 1 data), so a SiT
time s maps to ours as t = 1 - s and its velocity is the negative of ours. DDPM uses integer steps
0..T-1 with step 0 the least noisy; on a continuous time grid step k sits at t = (k + 1) / T and t = 0
is data (`times`). The network always receives t on a 0..1000 scale (flow: 1000 t; DDPM: the step).

Pieces, each swappable by a params key:
- objectives (`diffusion.objective`): `FlowMatching` (SiT: linear interpolant, velocity MSE) and
  `GaussianDiffusion` (DiT: linear betas, learned-range variance trained with the hybrid MSE + VLB loss);
- parameterizations (`diffusion.prediction`, `parameterization`): eps or v for ddpm, velocity for flow;
  the training target and the samplers' reading of the network both go through it;
- training times (`diffusion.t_sampling`): uniform (default) or logit-normal (`times`);
- time grids (`sample.time_grid`, `sample.shift`, `times`): uniform (flow's default), shifted, and DDPM
  respacing (ddpm's default);
- samplers (`sample.sampler`, `samplers`): plain functions `sampler(den, x, grid, *, seeds, held)` in
  one registry `SAMPLERS` that also says which objective each fits: flow -> euler (default), heun,
  euler_maruyama; ddpm -> ddpm (ancestral, default), ddim. Times may be per sample (B,) or per frame
  (B, F), and video frames can be held clean at t = 0 (FVDM); `video.sample_sequential` runs the same
  functions frame by frame;
- classifier-free guidance (`CFGDenoiser`) and per-sample seeds: results do not depend on batching.
"""
from __future__ import annotations

from .ddpm import GaussianDiffusion
from .flow import FlowMatching
from .guidance import CFGDenoiser, per_sample_noise
from .parameterization import PREDICTIONS, Level, Prediction, get_prediction
from .samplers import (
    OBJECTIVES,
    SAMPLERS,
    Denoiser,
    check_sampler,
    get_sampler,
    held_mask,
    nfe,
    register,
    sample,
    samplers_for,
)
from .times import GRIDS, T_SAMPLING, make_grid


def create_objective(objective: str, num_timesteps: int = 1000, learn_sigma: bool = True, prediction: str = "",
                     t_sampling: str = "uniform", t_mean: float = 0.0, t_std: float = 1.0):
    """An objective by name; `prediction` "" is its own (flow: velocity, ddpm: eps)."""
    t_kw = dict(t_sampling=t_sampling, t_mean=t_mean, t_std=t_std)
    if objective == "flow":
        return FlowMatching(prediction=prediction or "velocity", **t_kw)
    if objective == "ddpm":
        return GaussianDiffusion(num_timesteps=num_timesteps, learn_sigma=learn_sigma, prediction=prediction or "eps",
                                 **t_kw)
    raise KeyError(f"unknown objective '{objective}' (known: {', '.join(OBJECTIVES)})")


def objective_from_config(dc):
    """The objective of a `DiffusionConfig` (every key it has)."""
    return create_objective(dc.objective, num_timesteps=dc.num_timesteps, learn_sigma=dc.learn_sigma,
                            prediction=dc.prediction, t_sampling=dc.t_sampling, t_mean=dc.t_mean, t_std=dc.t_std)


__all__ = ["FlowMatching", "GaussianDiffusion", "CFGDenoiser", "Denoiser", "Prediction", "Level", "SAMPLERS",
           "PREDICTIONS", "GRIDS", "T_SAMPLING", "OBJECTIVES", "create_objective", "objective_from_config",
           "check_sampler", "get_sampler", "samplers_for", "register", "sample", "nfe", "held_mask", "make_grid",
           "get_prediction", "per_sample_noise"]
