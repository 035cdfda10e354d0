"""Flow matching with the linear interpolant (SiT, arXiv 2401.08740), in this repository's time
convention: x_t = (1 - t) x + t eps, t = 0 data, t = 1 noise, velocity target v = eps - x.

Loss: ||v_theta(x_t, t, y) - (eps - x)||^2 with t ~ U[0, 1] (per frame for video when
`per_frame_t=True`). The network's learned-sigma half, if present, is ignored (as in SiT)."""
from __future__ import annotations

import torch

from .guidance import per_sample_noise

T_SCALE = 1000.0  # the network sees 1000 t, the same scale as DDPM steps


class FlowMatching:
    name = "flow"

    def _velocity(self, model, x, t, y, **kw):
        out = model(x, t * T_SCALE, y, **kw)
        cdim = 2 if x.dim() == 5 else 1
        return out.narrow(cdim, 0, x.shape[cdim])

    @staticmethod
    def _bcast(t, x):
        """t: (B,) or (B, F) -> broadcastable to x (B, [F,] C, H, W)."""
        return t.reshape(t.shape + (1,) * (x.dim() - t.dim()))

    def sample_t(self, x, generator=None, per_frame: bool = False):
        shape = x.shape[:2] if (per_frame and x.dim() == 5) else x.shape[:1]
        return torch.rand(shape, generator=generator, device=x.device)

    def training_losses(self, model, x, y, t=None, noise=None, per_frame_t: bool = False, **kw) -> dict:
        """Per-sample loss terms, each (B,): {"mse": velocity MSE, "loss": the total}."""
        t = self.sample_t(x, per_frame=per_frame_t) if t is None else t
        noise = torch.randn_like(x) if noise is None else noise
        tb = self._bcast(t, x)
        x_t = (1 - tb) * x + tb * noise
        v = self._velocity(model, x_t, t, y, **kw)
        mse = (v - (noise - x)).pow(2).flatten(1).mean(1)
        return {"mse": mse, "loss": mse}

    @torch.no_grad()
    def sample(self, model, noise, y, sampler: str = "euler", steps: int = 50, seeds=None, t_min: float = 0.0,
               **kw):
        """Integrate from t = 1 (noise) to t = t_min (data). `model` may be a CFGDenoiser."""
        x = noise
        ts = torch.linspace(1.0, t_min, steps + 1, device=x.device)
        B = x.shape[0]
        seeds = list(range(B)) if seeds is None else list(seeds)
        for i in range(steps):
            t, t_next = ts[i], ts[i + 1]
            h = t - t_next  # > 0
            tt = t.expand(B)
            v = self._velocity(model, x, tt, y, **kw)
            if sampler == "euler":
                x = x - h * v
            elif sampler == "heun":
                v2 = self._velocity(model, x - h * v, t_next.expand(B), y, **kw)
                x = x - h * 0.5 * (v + v2)
            elif sampler == "euler_maruyama":
                # Reverse SDE with diffusion w(t) = t (SiT's "sigma" form): dx = (v - w s) dt + sqrt(2 w) dW,
                # score s = -(x_t + (1 - t) v) / t. The last step is deterministic.
                if i == steps - 1:
                    x = x - h * v
                else:
                    score = -(x + (1 - t) * v) / t
                    w = t
                    z = per_sample_noise(x.shape, [s * 100003 + i for s in seeds], x.device, x.dtype)
                    x = x - h * (v - w * score) + torch.sqrt(2 * w * h) * z
            else:
                raise KeyError(f"unknown flow sampler '{sampler}' (known: euler, heun, euler_maruyama)")
        return x

    @staticmethod
    def nfe(sampler: str, steps: int) -> int:
        return 2 * steps if sampler == "heun" else steps


__all__ = ["FlowMatching", "T_SCALE"]
