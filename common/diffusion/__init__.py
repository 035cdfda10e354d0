"""Diffusion objectives and samplers.

Time convention (one for the whole repository): **time grows with noise**. Flow matching uses
t in [0, 1] with x_t = (1 - t) x + t eps (t = 0 data, t = 1 noise) and velocity target v = eps - x,
which is REPA's / RAE's / SD3's convention; SiT's repository uses the opposite (t = 1 data), so a SiT
time s maps to ours as t = 1 - s and its velocity is the negative of ours. DDPM uses integer steps
0..T-1 with step 0 the least noisy. The network always receives t on a 0..1000 scale (flow: 1000 t).

Objectives: `FlowMatching` (SiT: linear interpolant, velocity MSE) and `GaussianDiffusion` (DiT:
linear betas, epsilon prediction, learned-range variance trained with the hybrid MSE + VLB loss).
Samplers share one signature, `sample(model, noise, y, sampler=..., steps=..., cfg_scale=..., seed=...)`,
chosen by name: flow -> `euler`, `heun` (ODE), `euler_maruyama` (SDE); ddpm -> `ddpm` (respaced
ancestral), `ddim` (eta = 0). Per-sample seeds make results independent of the batch split.
"""
from __future__ import annotations

from .ddpm import GaussianDiffusion
from .flow import FlowMatching
from .guidance import CFGDenoiser, per_sample_noise

SAMPLERS = {
    "flow": ("euler", "heun", "euler_maruyama"),
    "ddpm": ("ddpm", "ddim"),
}


def create_objective(objective: str, **kw):
    if objective == "flow":
        return FlowMatching()
    if objective == "ddpm":
        return GaussianDiffusion(num_timesteps=kw.get("num_timesteps", 1000), learn_sigma=kw.get("learn_sigma", True))
    raise KeyError(f"unknown objective '{objective}' (known: flow, ddpm)")


def check_sampler(objective: str, sampler: str) -> None:
    if sampler not in SAMPLERS.get(objective, ()):
        known = ", ".join(f"{o}: {'/'.join(s)}" for o, s in SAMPLERS.items())
        raise KeyError(f"unknown sampler '{sampler}' for objective '{objective}' (known: {known})")


__all__ = ["FlowMatching", "GaussianDiffusion", "CFGDenoiser", "SAMPLERS", "create_objective", "check_sampler",
           "per_sample_noise"]
