"""DDPM as trained by DiT (improved-DDPM formulation, Nichol & Dhariwal 2021): linear betas
1e-4..0.02 over T = 1000 steps, epsilon prediction, and with `learn_sigma` a learned-range variance
(the network's second half v interpolates log beta_t and log beta~_t) trained by the hybrid loss
MSE(eps) + L_vb, where L_vb (in bits/dim) sees a stop-gradient mean so it only trains the variance.

Sampling respaces the schedule to `steps` evenly spaced steps (`ddpm`, ancestral) or runs DDIM (eta=0).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .guidance import per_sample_noise


def _extract(arr: np.ndarray, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    out = torch.as_tensor(arr, dtype=torch.float32, device=x.device)[t]
    return out.reshape(t.shape + (1,) * (x.dim() - t.dim()))


def normal_kl(mean1, logvar1, mean2, logvar2):
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_std_normal_cdf(x):
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(x, means, log_scales):
    """Log-likelihood of data in [-1, 1] quantised to 256 bins under a Gaussian (ADM's decoder term)."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = _approx_std_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = _approx_std_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    cdf_delta = cdf_plus - cdf_min
    return torch.where(x < -0.999, log_cdf_plus,
                       torch.where(x > 0.999, log_one_minus_cdf_min, torch.log(cdf_delta.clamp(min=1e-12))))


class _Schedule:
    """All per-step quantities of a beta schedule (float64 numpy)."""

    def __init__(self, betas: np.ndarray):
        self.betas = betas = np.asarray(betas, dtype=np.float64)
        self.num_timesteps = len(betas)
        alphas = 1.0 - betas
        self.alphas_cumprod = ac = np.cumprod(alphas)
        self.alphas_cumprod_prev = acp = np.append(1.0, ac[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(ac)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - ac)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / ac)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / ac - 1)
        self.posterior_variance = pv = betas * (1.0 - acp) / (1.0 - ac)
        self.posterior_log_variance_clipped = np.log(np.append(pv[1], pv[1:])) if len(pv) > 1 else np.log(betas)
        self.posterior_mean_coef1 = betas * np.sqrt(acp) / (1.0 - ac)
        self.posterior_mean_coef2 = (1.0 - acp) * np.sqrt(alphas) / (1.0 - ac)


class GaussianDiffusion:
    name = "ddpm"

    def __init__(self, num_timesteps: int = 1000, learn_sigma: bool = True):
        scale = 1000 / num_timesteps
        self.base = _Schedule(np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64))
        self.num_timesteps, self.learn_sigma = num_timesteps, learn_sigma

    # ---- forward process ----------------------------------------------------------------------
    def q_sample(self, x0, t, noise, s: _Schedule | None = None):
        s = s or self.base
        return _extract(s.sqrt_alphas_cumprod, t, x0) * x0 + _extract(s.sqrt_one_minus_alphas_cumprod, t, x0) * noise

    def q_posterior(self, x0, x_t, t, s: _Schedule):
        mean = _extract(s.posterior_mean_coef1, t, x_t) * x0 + _extract(s.posterior_mean_coef2, t, x_t) * x_t
        return mean, _extract(s.posterior_log_variance_clipped, t, x_t)

    def _split(self, out, x):
        cdim = 2 if x.dim() == 5 else 1
        C = x.shape[cdim]
        eps = out.narrow(cdim, 0, C)
        v = out.narrow(cdim, C, C) if self.learn_sigma and out.shape[cdim] == 2 * C else None
        return eps, v

    def p_mean_variance(self, eps, v, x_t, t, s: _Schedule, clip: bool = False):
        """Model mean / log-variance from predicted eps and variance interpolation v (learned range)."""
        if v is not None:
            min_log = _extract(s.posterior_log_variance_clipped, t, x_t)
            max_log = _extract(np.log(s.betas), t, x_t)
            frac = (v + 1) / 2
            log_var = frac * max_log + (1 - frac) * min_log
        else:  # fixed small variance
            log_var = _extract(s.posterior_log_variance_clipped, t, x_t)
        x0 = _extract(s.sqrt_recip_alphas_cumprod, t, x_t) * x_t - _extract(s.sqrt_recipm1_alphas_cumprod, t, x_t) * eps
        if clip:
            x0 = x0.clamp(-1, 1)
        mean, _ = self.q_posterior(x0, x_t, t, s)
        return mean, log_var, x0

    # ---- training -----------------------------------------------------------------------------
    def sample_t(self, x, generator=None, per_frame: bool = False):
        shape = x.shape[:2] if (per_frame and x.dim() == 5) else x.shape[:1]
        return torch.randint(0, self.num_timesteps, shape, generator=generator, device=x.device)

    def training_losses(self, model, x, y, t=None, noise=None, per_frame_t: bool = False, **kw) -> dict:
        """Per-sample loss terms, each (B,) (ADM's `training_losses` shape): "mse" (eps), "vb" (L_vb in
        bits/dim on a stop-grad mean; only with learned sigma) and "loss" = mse + vb."""
        t = self.sample_t(x, per_frame=per_frame_t) if t is None else t
        noise = torch.randn_like(x) if noise is None else noise
        x_t = self.q_sample(x, t, noise)
        out = model(x_t, t.float(), y, **kw)
        eps, v = self._split(out, x)
        terms = {"mse": (eps - noise).pow(2).flatten(1).mean(1)}
        terms["loss"] = terms["mse"]
        if v is not None:
            s = self.base
            mean, log_var, _ = self.p_mean_variance(eps.detach(), v, x_t, t, s)
            true_mean, true_log_var = self.q_posterior(x, x_t, t, s)
            kl = normal_kl(true_mean, true_log_var, mean, log_var) / math.log(2.0)
            nll = -discretized_gaussian_log_likelihood(x, mean, 0.5 * log_var) / math.log(2.0)
            tb = t.reshape(t.shape + (1,) * (x.dim() - t.dim())).expand_as(x)
            terms["vb"] = torch.where(tb == 0, nll, kl).flatten(1).mean(1)
            terms["loss"] = terms["mse"] + terms["vb"]
        return terms

    # ---- sampling -----------------------------------------------------------------------------
    def respaced(self, steps: int) -> tuple[_Schedule, np.ndarray]:
        """Schedule over `steps` evenly spaced original steps and the map new index -> original step."""
        if steps > self.num_timesteps:
            raise ValueError(f"cannot respace {self.num_timesteps} steps to {steps}")
        use = np.unique(np.round(np.linspace(0, self.num_timesteps - 1, steps)).astype(np.int64))
        ac = self.base.alphas_cumprod[use]
        betas = 1 - ac / np.append(1.0, ac[:-1])
        return _Schedule(betas), use

    @torch.no_grad()
    def sample(self, model, noise, y, sampler: str = "ddpm", steps: int = 250, seeds=None, clip: bool = True, **kw):
        s, tmap = self.respaced(steps)
        x = noise
        B = x.shape[0]
        seeds = list(range(B)) if seeds is None else list(seeds)
        for i in reversed(range(s.num_timesteps)):
            t = torch.full((B,), i, dtype=torch.long, device=x.device)
            t_model = torch.full((B,), float(tmap[i]), device=x.device)
            eps, v = self._split(model(x, t_model, y, **kw), x)
            if sampler == "ddpm":
                mean, log_var, _ = self.p_mean_variance(eps, v, x, t, s, clip=clip)
                if i > 0:
                    z = per_sample_noise(x.shape, [sd * 100003 + i for sd in seeds], x.device, x.dtype)
                    x = mean + torch.exp(0.5 * log_var) * z
                else:
                    x = mean
            elif sampler == "ddim":
                x0 = _extract(s.sqrt_recip_alphas_cumprod, t, x) * x - _extract(s.sqrt_recipm1_alphas_cumprod, t, x) * eps
                if clip:
                    x0 = x0.clamp(-1, 1)
                    eps = (_extract(s.sqrt_recip_alphas_cumprod, t, x) * x - x0) / _extract(s.sqrt_recipm1_alphas_cumprod, t, x)
                ac_prev = _extract(s.alphas_cumprod_prev, t, x)
                x = x0 * ac_prev.sqrt() + (1 - ac_prev).sqrt() * eps
            else:
                raise KeyError(f"unknown ddpm sampler '{sampler}' (known: ddpm, ddim)")
        return x

    @staticmethod
    def nfe(sampler: str, steps: int) -> int:
        return steps
