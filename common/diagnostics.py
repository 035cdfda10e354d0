"""Diagnostics of a trained denoiser, read through the same parameterization the samplers use.

`x0_error`: on noised held-out data at a grid of log-SNR values, the mean squared error of the model's
x0 estimate. It separates what a network predicts from how its objective trains it: an eps-predicting
DDPM network, a v-predicting one and a velocity-predicting flow network are all read as x0 by
`Prediction.x0` (`common.diffusion.parameterization`), exactly as the samplers read them, so their errors
are comparable point by point. Where an arm fails at sampling, the curve says at which noise levels its
x0 estimate is worse (an eps network's x0 = (x_t - sigma eps) / alpha amplifies its eps error by
sigma / alpha at high noise, which is the known weakness that v and velocity avoid).

Protocol, the same for every run so curves overlay: log-SNR lambda = log(alpha^2 / sigma^2) on an
evenly spaced grid (low noise at the high end); x_t = alpha x0 + sigma eps with alpha, sigma of the run's
objective at lambda (flow: t = sigmoid(-lambda / 2), so alpha = 1 - t, sigma = t; DDPM: the step of the
1000-step chain whose log-SNR is nearest, its own lambda reported); the noise of digit i seeded by
(seed, i) alone, so every run sees the same eps; the true labels, guidance off (the conditional branch
alone). The DDPM arms' two processes differ only in alpha^2 + sigma^2 (1 for DDPM), so at equal lambda
the inputs agree up to a scale.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from common.diffusion import Denoiser
from common.diffusion.guidance import per_sample_noise
from common.seeding import derive_seed

X0_NOISE = 6  # the stream tag of the diagnostic's noise (common.seeding's table stops at 5)
LOG_SNR_RANGE = (-8.0, 8.0)  # inside the DDPM chain's range (about -10.1 .. 9.2) and easy for flow


def log_snr_grid(points: int, lo: float = LOG_SNR_RANGE[0], hi: float = LOG_SNR_RANGE[1]) -> np.ndarray:
    """`points` log-SNR values evenly spaced from `lo` (noisy) to `hi` (clean), increasing."""
    if points < 2:
        raise ValueError(f"an x0-error grid needs at least 2 points, got {points}")
    if not hi > lo:
        raise ValueError(f"log-SNR range [{lo}, {hi}] is empty")
    return np.linspace(lo, hi, points)


def ddpm_log_snr(objective) -> np.ndarray:
    """log(alpha-bar / (1 - alpha-bar)) of every step of a DDPM chain (decreasing with the step)."""
    ac = objective.base.alphas_cumprod
    return np.log(ac) - np.log1p(-ac)


def time_at(objective, lam: float):
    """(the objective's time at log-SNR `lam`, the log-SNR actually used): flow's continuous t exactly,
    DDPM's nearest step of its chain."""
    if objective.name == "flow":
        return 1.0 / (1.0 + math.exp(lam / 2)), float(lam)
    lams = ddpm_log_snr(objective)
    k = int(np.abs(lams - lam).argmin())
    return k, float(lams[k])


@torch.no_grad()
def x0_error(model, objective, x0: torch.Tensor, y: torch.Tensor, log_snr, seed: int = 0,
             batch_size: int = 250) -> list[dict]:
    """One point per log-SNR: {"log_snr" (asked), "log_snr_used", "t" (the objective's time), "mse" (mean
    over digits of the per-pixel squared error of x0), "sem" (its standard error)}.

    `model` is called with the true labels `y`, no guidance; its x0 is `Denoiser(...)(x_t, t).x0`, the
    samplers' reading of the network."""
    seeds = [derive_seed(seed, i, X0_NOISE) for i in range(len(x0))]
    out = []
    for lam in log_snr:
        t, used = time_at(objective, float(lam))
        errs = []
        for s in range(0, len(x0), batch_size):
            xb, yb = x0[s:s + batch_size], y[s:s + batch_size]
            eps = per_sample_noise(xb.shape, seeds[s:s + batch_size], xb.device, xb.dtype)
            tb = torch.full((len(xb),), t, dtype=torch.long if objective.name == "ddpm" else xb.dtype)
            level = objective.level(tb, xb)
            x_t = level.alpha * xb + level.sigma * eps
            pred = Denoiser(objective, model, yb)(x_t, tb)
            errs.append((pred.x0 - xb).pow(2).flatten(1).mean(1))
        e = torch.cat(errs).double()
        sem = e.std().item() / math.sqrt(len(e)) if len(e) > 1 else float("nan")
        out.append({"log_snr": float(lam), "log_snr_used": used, "t": float(t), "mse": e.mean().item(), "sem": sem})
    return out


__all__ = ["x0_error", "log_snr_grid", "ddpm_log_snr", "time_at", "LOG_SNR_RANGE", "X0_NOISE"]
