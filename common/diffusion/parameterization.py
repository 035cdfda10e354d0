"""What the network predicts: eps, v or velocity, as parameterizations of one interface.

Both objectives noise data the same way, x_t = alpha x0 + sigma eps, with their own alpha and sigma at
a time t (`Level`): DDPM alpha = sqrt(alpha-bar), sigma = sqrt(1 - alpha-bar); flow alpha = 1 - t,
sigma = t. A parameterization maps (x0, eps) to the training target and maps a network output back
to x0, eps (and the velocity), so that the training loss and every sampler read the prediction
through the same formulas:

| name     | objective | target                          | x0                    | eps                   |
|----------|-----------|---------------------------------|-----------------------|-----------------------|
| eps      | ddpm      | eps                             | (x_t - sigma out) / alpha | out               |
| v        | ddpm      | alpha eps - sigma x0 (Salimans & Ho 2022) | alpha x_t - sigma out | sigma x_t + alpha out |
| velocity | flow      | eps - x0 (d x_t / dt)           | x_t - sigma out       | x_t + alpha out       |

(v's inverses use alpha^2 + sigma^2 = 1, true on the DDPM schedule; velocity's use alpha = 1 - t.)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Level:
    """x_t = alpha x0 + sigma eps at one time; every field a float32 tensor broadcastable to x.

    `recip_alpha` = 1 / alpha and `sigma_over_alpha` = sigma / alpha are DDPM's precomputed
    sqrt(1 / alpha-bar) and sqrt(1 / alpha-bar - 1) (None for flow)."""

    alpha: torch.Tensor
    sigma: torch.Tensor
    recip_alpha: torch.Tensor | None = None
    sigma_over_alpha: torch.Tensor | None = None

    def eps_from_x0(self, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """The eps that, with x0, gives x (DDIM's eps after clipping x0)."""
        if self.recip_alpha is not None:
            return (self.recip_alpha * x - x0) / self.sigma_over_alpha
        return (x - self.alpha * x0) / self.sigma


class Parameterization:
    name: str = ""
    objective: str = ""

    def target(self, x0, noise, level: Level):
        raise NotImplementedError

    def x0(self, out, x, level: Level):
        raise NotImplementedError

    def eps(self, out, x, level: Level):
        raise NotImplementedError

    def velocity(self, out, x, level: Level):
        raise ValueError(f"the '{self.name}' parameterization has no velocity (a flow quantity)")


class Eps(Parameterization):
    """The noise (DDPM, DiT)."""

    name, objective = "eps", "ddpm"

    def target(self, x0, noise, level):
        return noise

    def x0(self, out, x, level):
        return level.recip_alpha * x - level.sigma_over_alpha * out

    def eps(self, out, x, level):
        return out


class V(Parameterization):
    """v = alpha eps - sigma x0 on the DDPM schedule (progressive distillation; the tiny preset's choice)."""

    name, objective = "v", "ddpm"

    def target(self, x0, noise, level):
        return level.alpha * noise - level.sigma * x0

    def x0(self, out, x, level):
        return level.alpha * x - level.sigma * out

    def eps(self, out, x, level):
        return level.sigma * x + level.alpha * out


class Velocity(Parameterization):
    """The flow's velocity eps - x0 of the linear interpolant (SiT)."""

    name, objective = "velocity", "flow"

    def target(self, x0, noise, level):
        return noise - x0

    def x0(self, out, x, level):
        return x - level.sigma * out

    def eps(self, out, x, level):
        return x + level.alpha * out

    def velocity(self, out, x, level):
        return out


PREDICTIONS = {p.name: p for p in (Eps(), V(), Velocity())}


def get_prediction(name: str, objective: str) -> Parameterization:
    """The parameterization `name` ("" = the objective's own: ddpm eps, flow velocity), checked to fit."""
    if not name:
        name = {"ddpm": "eps", "flow": "velocity"}[objective]
    if name not in PREDICTIONS:
        raise KeyError(f"unknown parameterization '{name}' (known: {', '.join(PREDICTIONS)})")
    p = PREDICTIONS[name]
    if p.objective != objective:
        fits = ", ".join(n for n, q in PREDICTIONS.items() if q.objective == objective)
        raise ValueError(f"parameterization '{name}' does not fit objective '{objective}' ({objective} takes: {fits})")
    return p


class Prediction:
    """One network evaluation at x (noisy, at `level`), readable as x0, eps or velocity.

    `out` is the prediction half of the network output in the parameterization's form, `var` the
    learned-range variance half (DDPM with learned sigma) or None. Conversions are computed once."""

    def __init__(self, out, var, x, level: Level, param: Parameterization):
        self.out, self.var, self.x, self.level, self.param = out, var, x, level, param
        self._cache: dict = {}

    def _get(self, kind: str):
        if kind not in self._cache:
            self._cache[kind] = getattr(self.param, kind)(self.out, self.x, self.level)
        return self._cache[kind]

    @property
    def x0(self):
        return self._get("x0")

    @property
    def eps(self):
        return self._get("eps")

    @property
    def velocity(self):
        return self._get("velocity")


__all__ = ["Level", "Parameterization", "Eps", "V", "Velocity", "PREDICTIONS", "get_prediction", "Prediction"]
