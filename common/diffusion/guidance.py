"""Classifier-free guidance and per-sample random numbers."""
from __future__ import annotations

import torch


def per_sample_noise(shape, seeds, device=None, dtype=torch.float32) -> torch.Tensor:
    """Noise of `shape` whose row i depends only on seeds[i] (so samples do not depend on how a set of
    samples is split into batches or processes)."""
    rows = []
    for s in seeds:
        g = torch.Generator().manual_seed(int(s))
        rows.append(torch.randn(tuple(shape[1:]), generator=g, dtype=dtype))
    return torch.stack(rows).to(device)


class CFGDenoiser:
    """Wraps a DiT so that `self(x, t, y)` returns the guided output.

    out = uncond + scale * (cond - uncond) on the first `channels` output channels (0 = all; the
    official DiT guides 3 of its 4 latent channels, a quirk kept as an option). The learned-variance
    half (if any) is taken from the conditional pass. scale = 1 runs a single conditional pass."""

    def __init__(self, model, scale: float = 1.0, channels: int = 0, in_channels: int | None = None):
        self.model, self.scale, self.channels = model, scale, channels
        self.in_channels = in_channels or model.in_channels

    def __call__(self, x, t, y, **kw):
        if self.scale == 1.0:
            return self.model(x, t, y, **kw)
        B = x.shape[0]
        drop = torch.cat([torch.zeros(B, dtype=torch.long), torch.ones(B, dtype=torch.long)]).to(x.device)
        out = self.model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, y]), force_drop_ids=drop, **kw)
        cond, uncond = out[:B], out[B:]
        ch = self.channels or self.in_channels
        cdim = 2 if x.dim() == 5 else 1
        c_eps, u_eps = cond.narrow(cdim, 0, ch), uncond.narrow(cdim, 0, ch)
        guided = u_eps + self.scale * (c_eps - u_eps)
        rest = cond.narrow(cdim, ch, cond.shape[cdim] - ch)
        return torch.cat([guided, rest], dim=cdim)
