"""Flow matching with the linear interpolant (SiT, arXiv 2401.08740), in this repository's time
convention: x_t = (1 - t) x + t eps, t = 0 data, t = 1 noise, velocity target v = eps - x.

Loss: ||v_theta(x_t, t, y) - (eps - x)||^2 with t ~ U[0, 1] (per frame for video when
`per_frame_t=True`), or t = sigmoid(N(t_mean, t_std^2)) with `t_sampling="logit_normal"` (SD3). The
network's learned-sigma half, if present, is ignored (as in SiT). Samplers: `common.diffusion.samplers`
(euler, heun, euler_maruyama) on a grid from `common.diffusion.times` (uniform by default)."""
from __future__ import annotations

import torch

from .parameterization import Level, get_prediction
from .times import check_t_sampling, logit_normal, make_grid

T_SCALE = 1000.0  # the network sees 1000 t, the same scale as DDPM steps


class FlowMatching:
    name = "flow"
    default_grid = "uniform"

    def __init__(self, prediction: str = "velocity", t_sampling: str = "uniform", t_mean: float = 0.0,
                 t_std: float = 1.0):
        self.prediction = get_prediction(prediction, self.name)
        check_t_sampling(t_sampling, t_mean, t_std)
        self.t_sampling, self.t_mean, self.t_std = t_sampling, t_mean, t_std

    @staticmethod
    def _bcast(t, x):
        """t: (), (B,) or (B, F) -> broadcastable to x (B, [F,] C, H, W)."""
        return t.reshape(t.shape + (1,) * (x.dim() - t.dim()))

    # ---- the process, as the parameterization and the samplers read it ---------------------------
    def q_sample(self, x0, t, noise):
        tb = self._bcast(t, x0)
        return (1 - tb) * x0 + tb * noise

    def level(self, t, x) -> Level:
        """alpha = 1 - t, sigma = t at flow times t ((), (B,) or (B, F)), broadcast to x."""
        tb = self._bcast(torch.as_tensor(t, dtype=x.dtype, device=x.device), x)
        return Level(alpha=1 - tb, sigma=tb)

    @staticmethod
    def network_time(t) -> torch.Tensor:
        return torch.as_tensor(t).float() * T_SCALE

    @staticmethod
    def split(out, x):
        """(prediction half, None): the learned-sigma half is ignored."""
        cdim = 2 if x.dim() == 5 else 1
        return out.narrow(cdim, 0, x.shape[cdim]), None

    def grid(self, steps: int, name: str = "", shift: float = 1.0) -> torch.Tensor:
        name = name or self.default_grid
        if name == "respaced":
            raise ValueError("time grid 'respaced' is DDPM's step respacing; flow takes: uniform, shifted")
        return make_grid(name, steps, shift)

    # ---- training -----------------------------------------------------------------------------
    def sample_t(self, x, generator=None, per_frame: bool = False):
        shape = x.shape[:2] if (per_frame and x.dim() == 5) else x.shape[:1]
        if self.t_sampling == "logit_normal":
            return logit_normal(shape, self.t_mean, self.t_std, generator=generator, device=x.device)
        return torch.rand(shape, generator=generator, device=x.device)

    def training_losses(self, model, x, y, t=None, noise=None, per_frame_t: bool = False, **kw) -> dict:
        """Per-sample loss terms, each (B,): {"mse": velocity MSE, "loss": the total}."""
        t = self.sample_t(x, per_frame=per_frame_t) if t is None else t
        noise = torch.randn_like(x) if noise is None else noise
        x_t = self.q_sample(x, t, noise)
        out, _ = self.split(model(x_t, t * T_SCALE, y, **kw), x)
        target = self.prediction.target(x, noise, None)  # eps - x
        mse = (out - target).pow(2).flatten(1).mean(1)
        return {"mse": mse, "loss": mse}


__all__ = ["FlowMatching", "T_SCALE"]
