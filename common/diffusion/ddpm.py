"""DDPM as trained by DiT (improved-DDPM formulation, Nichol & Dhariwal 2021): linear betas
1e-4..0.02 over T = 1000 steps, epsilon prediction, and with `learn_sigma` a learned-range variance
(the network's second half v interpolates log beta_t and log beta~_t) trained by the hybrid loss
MSE(eps) + L_vb, where L_vb (in bits/dim) sees a stop-gradient mean so it only trains the variance.

`prediction="v"` trains v = sqrt(alpha-bar) eps - sqrt(1 - alpha-bar) x0 instead (MSE on v), and with
learned sigma keeps L_vb on the stop-gradient mean of the x0 that v gives (as ADM does for its other
mean parameterizations). `t_sampling="logit_normal"` draws training steps through a logit-normal
continuous time (`common.diffusion.times`).

Samplers (`common.diffusion.samplers`: ddpm ancestral, ddim) run the chain respaced to a time grid's
steps (`chain`); the default grid is DiT's evenly spaced respacing (`times.respaced`).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .parameterization import Level, get_prediction
from .times import check_grid, check_t_sampling, continuous_to_step, logit_normal, make_grid


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
    default_grid = "respaced"

    def __init__(self, num_timesteps: int = 1000, learn_sigma: bool = True, prediction: str = "eps",
                 t_sampling: str = "uniform", t_mean: float = 0.0, t_std: float = 1.0):
        scale = 1000 / num_timesteps
        self.base = _Schedule(np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64))
        self.num_timesteps, self.learn_sigma = num_timesteps, learn_sigma
        self.prediction = get_prediction(prediction, self.name)
        check_t_sampling(t_sampling, t_mean, t_std)
        self.t_sampling, self.t_mean, self.t_std = t_sampling, t_mean, t_std

    # ---- forward process ----------------------------------------------------------------------
    def q_sample(self, x0, t, noise, s: _Schedule | None = None):
        s = s or self.base
        return _extract(s.sqrt_alphas_cumprod, t, x0) * x0 + _extract(s.sqrt_one_minus_alphas_cumprod, t, x0) * noise

    def q_posterior(self, x0, x_t, t, s: _Schedule):
        mean = _extract(s.posterior_mean_coef1, t, x_t) * x0 + _extract(s.posterior_mean_coef2, t, x_t) * x_t
        return mean, _extract(s.posterior_log_variance_clipped, t, x_t)

    # ---- the process, as the parameterization and the samplers read it ---------------------------
    def level(self, t, x, s: _Schedule | None = None) -> Level:
        """alpha, sigma (and DDPM's 1 / alpha, sigma / alpha) at integer steps t of schedule s (default:
        the full chain), broadcast to x."""
        s = s or self.base
        t = torch.as_tensor(t, dtype=torch.long, device=x.device)
        return Level(alpha=_extract(s.sqrt_alphas_cumprod, t, x), sigma=_extract(s.sqrt_one_minus_alphas_cumprod, t, x),
                     recip_alpha=_extract(s.sqrt_recip_alphas_cumprod, t, x),
                     sigma_over_alpha=_extract(s.sqrt_recipm1_alphas_cumprod, t, x))

    @staticmethod
    def alpha_bar_prev(t, x, s: _Schedule) -> torch.Tensor:
        """float32 alpha-bar of the step after t toward data (1 after step 0), broadcast to x."""
        return _extract(s.alphas_cumprod_prev, t, x)

    @staticmethod
    def network_time(t) -> torch.Tensor:
        """The network sees the (original, not respaced) step index."""
        return torch.as_tensor(t).float()

    def split(self, out, x):
        """(prediction half, learned-range variance half or None) of the network output."""
        cdim = 2 if x.dim() == 5 else 1
        C = x.shape[cdim]
        pred = out.narrow(cdim, 0, C)
        var = out.narrow(cdim, C, C) if self.learn_sigma and out.shape[cdim] == 2 * C else None
        return pred, var

    def p_mean_variance(self, x0, var, x_t, t, s: _Schedule):
        """Model mean / log-variance of step t from a predicted x0 and variance interpolation `var`
        (learned range: log-variance between log beta~_t and log beta_t; None = beta~_t, fixed small)."""
        if var is not None:
            min_log = _extract(s.posterior_log_variance_clipped, t, x_t)
            max_log = _extract(np.log(s.betas), t, x_t)
            frac = (var + 1) / 2
            log_var = frac * max_log + (1 - frac) * min_log
        else:  # fixed small variance
            log_var = _extract(s.posterior_log_variance_clipped, t, x_t)
        mean, _ = self.q_posterior(x0, x_t, t, s)
        return mean, log_var

    # ---- training -----------------------------------------------------------------------------
    def sample_t(self, x, generator=None, per_frame: bool = False):
        shape = x.shape[:2] if (per_frame and x.dim() == 5) else x.shape[:1]
        if self.t_sampling == "logit_normal":
            u = logit_normal(shape, self.t_mean, self.t_std, generator=generator, device=x.device)
            return continuous_to_step(u, self.num_timesteps)
        return torch.randint(0, self.num_timesteps, shape, generator=generator, device=x.device)

    def training_losses(self, model, x, y, t=None, noise=None, per_frame_t: bool = False, **kw) -> dict:
        """Per-sample loss terms, each (B,) (ADM's `training_losses` shape): "mse" (of the prediction:
        eps or v), "vb" (L_vb in bits/dim on a stop-grad mean; only with learned sigma) and "loss" = mse + vb."""
        t = self.sample_t(x, per_frame=per_frame_t) if t is None else t
        noise = torch.randn_like(x) if noise is None else noise
        x_t = self.q_sample(x, t, noise)
        out, var = self.split(model(x_t, t.float(), y, **kw), x)
        level = self.level(t, x)
        terms = {"mse": (out - self.prediction.target(x, noise, level)).pow(2).flatten(1).mean(1)}
        terms["loss"] = terms["mse"]
        if var is not None:
            s = self.base
            x0 = self.prediction.x0(out.detach(), x_t, level)
            mean, log_var = self.p_mean_variance(x0, var, x_t, t, s)
            true_mean, true_log_var = self.q_posterior(x, x_t, t, s)
            kl = normal_kl(true_mean, true_log_var, mean, log_var) / math.log(2.0)
            nll = -discretized_gaussian_log_likelihood(x, mean, 0.5 * log_var) / math.log(2.0)
            tb = t.reshape(t.shape + (1,) * (x.dim() - t.dim())).expand_as(x)
            terms["vb"] = torch.where(tb == 0, nll, kl).flatten(1).mean(1)
            terms["loss"] = terms["mse"] + terms["vb"]
        return terms

    # ---- sampling -----------------------------------------------------------------------------
    def grid(self, steps: int, name: str = "", shift: float = 1.0) -> torch.Tensor:
        return make_grid(name or self.default_grid, steps, shift, self.num_timesteps)

    def chain(self, grid: torch.Tensor) -> tuple[_Schedule, np.ndarray]:
        """The chain respaced to a grid: a schedule over the grid's steps and the original step of each
        (ascending). Time t > 0 runs step round(t T) - 1; the grid must end at t = 0 (data)."""
        grid = check_grid(grid)
        if grid[-1] != 0:
            raise ValueError(f"a DDPM grid ends at t = 0 (data), got {grid[-1].item()}")
        steps = np.round(grid[:-1].double().cpu().numpy() * self.num_timesteps).astype(np.int64) - 1
        use = np.unique(steps.clip(0, self.num_timesteps - 1))
        ac = self.base.alphas_cumprod[use]
        betas = 1 - ac / np.append(1.0, ac[:-1])
        return _Schedule(betas), use
