"""Samplers: plain functions with one signature, chosen by name from one registry (k-diffusion style).

    x = sampler(den, x, grid, *, seeds=None, held=None, **options)

- `den`: a `Denoiser`, the objective's view of the (guided) network: `den(x, t, held)` returns a
  `Prediction` read as x0, eps or velocity whatever the network predicts (eps / v / velocity, see
  `parameterization`), so samplers never branch on the parameterization;
- `x`: the starting noise (B, C, H, W) or video (B, F, C, H, W), holding the given clean frames at the
  held frames;
- `grid`: times from 1 down to the chain's end (`times`). Flow samplers step along it; a flow grid may
  also be (n + 1, B) or (n + 1, B, F), one time per sample or per frame at every step. DDPM samplers
  run the chain respaced to the grid's steps (`GaussianDiffusion.chain`, 1-D grids);
- `seeds`: one integer per row (default 0..B-1) seeding the per-step noise of the stochastic samplers,
  so row i depends only on seeds[i], never on the batch it was drawn in;
- `held`: frames given clean (FVDM): a boolean (B, F) or (F,) mask, or a list of frame indices held in
  every row. Held frames are returned bit-exactly (the given values are put back after every update)
  and the network sees t = 0 for them at every step (the other frames get the step's time, so the
  network's times are (B, F)). Holding nothing is the plain sampler.

| name           | objective | kind                                     | network calls / step |
|----------------|-----------|------------------------------------------|----------------------|
| euler          | flow      | ODE, 1st order (default)                 | 1 |
| heun           | flow      | ODE, 2nd order                           | 2 |
| euler_maruyama | flow      | SDE, diffusion w(t) = t (SiT)            | 1 |
| ddpm           | ddpm      | ancestral, learned-range variance (default) | 1 |
| ddim           | ddpm      | ODE (eta = 0)                            | 1 |

A new sampler is a function with this signature registered with `@register(name, objective)`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from common.seeding import STEP_NOISE, derive_seed

from .guidance import per_sample_noise
from .parameterization import Prediction


# ---- held frames and times ------------------------------------------------------------------------
def held_mask(held, x: torch.Tensor) -> torch.Tensor | None:
    """`held` (None, a bool (B, F) / (F,) mask, or frame indices) -> a bool (B, F) mask, or None when no
    frame is held."""
    if held is None:
        return None
    if x.dim() != 5:
        raise ValueError(f"held frames need a video x (B, F, C, H, W), got shape {tuple(x.shape)}")
    B, F = x.shape[:2]
    h = torch.as_tensor(held)
    if h.numel() == 0:
        return None
    if h.dtype == torch.bool:
        mask = h.expand(B, F) if h.shape == (F,) else h
        if mask.shape != (B, F):
            raise ValueError(f"held mask of shape {tuple(h.shape)} does not fit (B, F) = ({B}, {F})")
    else:
        if h.is_floating_point() or h.dim() != 1:
            raise ValueError(f"held frames are a bool (B, F) mask or a list of frame indices, got {held!r}")
        bad = [int(i) for i in h if not 0 <= i < F]
        if bad:
            raise ValueError(f"held frame index {bad[0]} is out of range for {F} frames (0..{F - 1})")
        mask = torch.zeros(B, F, dtype=torch.bool)
        mask[:, h] = True
    mask = mask.to(x.device)
    return mask if mask.any() else None


def keep_held(x_new: torch.Tensor, given: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """x_new with the held frames of `given` put back (bit-exact); x_new itself when nothing is held."""
    if mask is None:
        return x_new
    return torch.where(mask.reshape(mask.shape + (1,) * (x_new.dim() - 2)), given, x_new)


def model_times(t: torch.Tensor, x: torch.Tensor, held: torch.Tensor | None) -> torch.Tensor:
    """The network's times for x: t of shape (), (B,) or (B, F) -> (B,) or (B, F), 0 at held frames."""
    B = x.shape[0]
    video = x.dim() == 5
    if t.dim() == 0:
        t = t.expand(B)
    elif t.shape != (B,) and not (video and t.shape == x.shape[:2]):
        want = f"(), (B,) = ({B},)" + (f" or (B, F) = {tuple(x.shape[:2])}" if video else "")
        raise ValueError(f"times of shape {tuple(t.shape)} do not fit x of shape {tuple(x.shape)} (expected {want})")
    if held is not None:
        t = torch.where(held, torch.zeros((), dtype=t.dtype, device=t.device), t.reshape(B, -1).expand_as(held))
    return t


class Denoiser:
    """The network as the samplers see it: `den(x, t, held=None, level=None) -> Prediction`.

    Wraps the model (or a `CFGDenoiser`), its labels `y` and keyword arguments with the objective's
    conventions: `t` is the objective's time (flow: continuous; DDPM: the original step index), mapped
    to the network's scale (`objective.network_time`); `held` a (B, F) mask (`held_mask`); `level` the
    noise level at which to read the prediction (default: the objective's at t; DDPM samplers pass
    the respaced chain's)."""

    def __init__(self, objective, model, y, **model_kwargs):
        self.objective, self.model, self.y, self.model_kwargs = objective, model, y, model_kwargs

    def __call__(self, x, t, held=None, level=None) -> Prediction:
        t = torch.as_tensor(t, device=x.device)
        tt = model_times(self.objective.network_time(t), x, held)  # (B,) or (B, F)
        out, var = self.objective.split(self.model(x, tt, self.y, **self.model_kwargs), x)
        level = self.objective.level(t, x) if level is None else level
        return Prediction(out, var, x, level, self.objective.prediction)


# ---- registry -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sampler:
    fn: Callable
    objective: str  # the objective whose process it integrates
    calls_per_step: int = 1
    stochastic: bool = False


SAMPLERS: dict[str, Sampler] = {}  # name -> Sampler; the first registered for an objective is its default
OBJECTIVES = ("flow", "ddpm")


def register(name: str, objective: str, calls_per_step: int = 1, stochastic: bool = False):
    def deco(fn):
        SAMPLERS[name] = Sampler(fn, objective, calls_per_step, stochastic)
        return fn

    return deco


def samplers_for(objective: str) -> list[str]:
    return [n for n, s in SAMPLERS.items() if s.objective == objective]


def check_sampler(objective: str, sampler: str) -> None:
    """KeyError naming the culprit: an unknown objective, an unknown sampler or one that does not fit."""
    if objective not in OBJECTIVES:
        raise KeyError(f"unknown objective '{objective}' (known: {', '.join(OBJECTIVES)})")
    if sampler not in SAMPLERS:
        known = ", ".join(f"{o}: {'/'.join(samplers_for(o))}" for o in OBJECTIVES)
        raise KeyError(f"unknown sampler '{sampler}' (known: {known})")
    if SAMPLERS[sampler].objective != objective:
        raise KeyError(f"sampler '{sampler}' does not fit objective '{objective}' "
                       f"({objective} takes: {', '.join(samplers_for(objective))})")


def get_sampler(objective: str, sampler: str | None = None) -> Sampler:
    """The registered sampler `sampler` (None or "": the objective's default), checked to fit."""
    if not sampler and objective in OBJECTIVES:
        sampler = samplers_for(objective)[0]
    check_sampler(objective, sampler or "")
    return SAMPLERS[sampler]


def nfe(sampler: str, steps: int) -> int:
    """Network evaluations of `steps` steps (per row; classifier-free guidance doubles the rows)."""
    return SAMPLERS[sampler].calls_per_step * steps


# ---- flow samplers --------------------------------------------------------------------------------
def _bc(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(), (B,) or (B, F) -> broadcastable to x."""
    return t.reshape(t.shape + (1,) * (x.dim() - t.dim()))


def _seeds(seeds, x) -> list[int]:
    seeds = list(range(x.shape[0])) if seeds is None else [int(s) for s in seeds]
    if len(seeds) != x.shape[0]:
        raise ValueError(f"{len(seeds)} seeds for {x.shape[0]} rows: give one seed per row")
    return seeds


def _step_noise(x, seeds, i):
    """Noise of step i, row r seeded by (seeds[r], i) alone."""
    return per_sample_noise(x.shape, [derive_seed(s, i, STEP_NOISE) for s in seeds], x.device, x.dtype)


@register("euler", "flow")
def euler(den, x, grid, *, seeds=None, held=None):
    """Euler on the probability-flow ODE dx/dt = v: x <- x - (t - t') v."""
    mask, given = held_mask(held, x), x
    grid = grid.to(x.device, x.dtype)
    for i in range(len(grid) - 1):
        h = _bc(grid[i] - grid[i + 1], x)
        v = den(x, grid[i], mask).velocity
        x = keep_held(x - h * v, given, mask)
    return x


@register("heun", "flow", calls_per_step=2)
def heun(den, x, grid, *, seeds=None, held=None):
    """Heun's method (2nd order): Euler to t', then the mean of the velocities at both ends."""
    mask, given = held_mask(held, x), x
    grid = grid.to(x.device, x.dtype)
    for i in range(len(grid) - 1):
        h = _bc(grid[i] - grid[i + 1], x)
        v = den(x, grid[i], mask).velocity
        v2 = den(keep_held(x - h * v, given, mask), grid[i + 1], mask).velocity
        x = keep_held(x - h * 0.5 * (v + v2), given, mask)
    return x


@register("euler_maruyama", "flow", stochastic=True)
def euler_maruyama(den, x, grid, *, seeds=None, held=None):
    """Reverse SDE with diffusion w(t) = t (SiT's "sigma" form): dx = (v - w s) dt + sqrt(2 w) dW with
    score s = -eps / t. The last step is deterministic (Euler)."""
    seeds = _seeds(seeds, x)
    mask, given = held_mask(held, x), x
    grid = grid.to(x.device, x.dtype)
    n = len(grid) - 1
    for i in range(n):
        t = _bc(grid[i], x)
        h = _bc(grid[i] - grid[i + 1], x)
        p = den(x, grid[i], mask)
        v = p.velocity
        if i == n - 1:
            x_new = x - h * v
        else:
            score = -p.eps / t
            w = t
            x_new = x - h * (v - w * score) + torch.sqrt(2 * w * h) * _step_noise(x, seeds, i)
        x = keep_held(x_new, given, mask)
    return x


# ---- DDPM samplers --------------------------------------------------------------------------------
@register("ddpm", "ddpm", stochastic=True)
def ddpm(den, x, grid, *, seeds=None, held=None, clip: bool = True):
    """Ancestral sampling (Ho et al. 2020) on the chain respaced to the grid: x <- posterior mean + std z,
    the variance learned (range interpolation) when the network has that half, else beta~. The last
    step returns the mean. `clip` clamps x0 to [-1, 1] (pixel data)."""
    obj = den.objective
    s, steps = obj.chain(grid)
    seeds = _seeds(seeds, x)
    mask, given = held_mask(held, x), x
    B = x.shape[0]
    for i in reversed(range(s.num_timesteps)):
        t = torch.full((B,), i, dtype=torch.long, device=x.device)
        p = den(x, steps[i], mask, level=obj.level(t, x, s))
        x0 = p.x0.clamp(-1, 1) if clip else p.x0
        mean, log_var = obj.p_mean_variance(x0, p.var, x, t, s)
        x_new = mean + torch.exp(0.5 * log_var) * _step_noise(x, seeds, i) if i > 0 else mean
        x = keep_held(x_new, given, mask)
    return x


@register("ddim", "ddpm")
def ddim(den, x, grid, *, seeds=None, held=None, clip: bool = True):
    """DDIM with eta = 0 (the probability-flow ODE of the respaced chain): x <- sqrt(ab') x0 + sqrt(1 - ab') eps."""
    obj = den.objective
    s, steps = obj.chain(grid)
    mask, given = held_mask(held, x), x
    B = x.shape[0]
    for i in reversed(range(s.num_timesteps)):
        t = torch.full((B,), i, dtype=torch.long, device=x.device)
        level = obj.level(t, x, s)
        p = den(x, steps[i], mask, level=level)
        x0, eps = p.x0, p.eps
        if clip:
            x0 = x0.clamp(-1, 1)
            eps = level.eps_from_x0(x, x0)
        ac_prev = obj.alpha_bar_prev(t, x, s)
        x = keep_held(x0 * ac_prev.sqrt() + (1 - ac_prev).sqrt() * eps, given, mask)
    return x


# ---- entry point ----------------------------------------------------------------------------------
@torch.no_grad()
def sample(objective, model, noise, y, *, sampler: str | None = None, steps: int = 50, grid="", shift: float = 1.0,
           seeds=None, held=None, **options) -> torch.Tensor:
    """Samples from noise (B, [F,] C, H, W) (the given clean frames in place at `held` frames) with
    labels y (B,): `sampler` by name (default: the objective's), on the grid `grid` (a name from
    `times`, "" = the objective's default, or a tensor) of `steps` steps. `model` may be a
    `CFGDenoiser`; `options` go to the sampler (e.g. `clip=False`)."""
    spec = get_sampler(objective.name, sampler)
    ts = grid if torch.is_tensor(grid) else objective.grid(steps, grid, shift)
    return spec.fn(Denoiser(objective, model, y), noise, ts, seeds=seeds, held=held, **options)


__all__ = ["SAMPLERS", "Sampler", "Denoiser", "register", "samplers_for", "check_sampler", "get_sampler", "nfe",
           "sample", "held_mask", "keep_held", "model_times", "euler", "heun", "euler_maruyama", "ddpm", "ddim"]
