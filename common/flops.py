"""FLOPs and parameter counting with `torch.utils.flop_counter.FlopCounterMode` (formula-based).

FLOPs count a multiply-add as 2 (PyTorch's convention); DiT's paper "Gflops" are multiply-adds, so
`gmacs = flops / 2` is the number comparable with the DiT paper's table."""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode


def count_flops(fn, *args, **kwargs) -> int:
    """Total FLOPs of `fn(*args, **kwargs)` (forward only unless fn runs backward)."""
    with FlopCounterMode(display=False) as counter:
        fn(*args, **kwargs)
    return int(counter.get_total_flops())


@torch.no_grad()
def model_flops(model, batch: int = 1) -> dict:
    """Forward FLOPs of one DiT call on `batch` samples at its native input shape."""
    was_training = model.training
    model.eval()
    shape = (batch, model.in_channels, model.input_size, model.input_size)
    if model.frames:
        shape = (batch, model.frames) + shape[1:]
    x = torch.zeros(shape)
    t = torch.zeros(batch)
    y = torch.zeros(batch, dtype=torch.long)
    flops = count_flops(model, x, t, y)
    model.train(was_training)
    return {"flops": flops, "gflops": flops / 1e9 / batch, "gmacs": flops / 2e9 / batch}
