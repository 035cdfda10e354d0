"""FLOPs and parameter counting with `torch.utils.flop_counter.FlopCounterMode` (formula-based).

FLOPs count a multiply-add as 2 (PyTorch's convention); DiT's paper "Gflops" are multiply-adds, so
`gmacs = flops / 2` is the number comparable with the DiT paper's table.

PyTorch's counter has no formula for the CPU kernel of `F.scaled_dot_product_attention`
(`_scaled_dot_product_flash_attention_for_cpu`), so without the mapping below attention's QK^T and AV
would count as zero on the CPU (DiT-XL/2 would show 114.4 GMACs instead of the paper's 118.6).

`model_flops(model, t=...)` counts at a chosen timestep, since dynamic models (DyDiT's routers, token
skipping) execute different work at different t."""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count


def _cpu_sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


_EXTRA_FORMULAS = {  # FlopCounterMode passes these tensor shapes, not tensors
    op: formula
    for name, formula in (("_scaled_dot_product_flash_attention_for_cpu", _cpu_sdpa),
                          ("_scaled_dot_product_flash_attention_for_cpu_backward", _cpu_sdpa_backward))
    if (op := getattr(torch.ops.aten, name, None)) is not None
}


def count_flops(fn, *args, **kwargs) -> int:
    """Total FLOPs of `fn(*args, **kwargs)` (forward only unless fn runs backward)."""
    with FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS) as counter:
        fn(*args, **kwargs)
    return int(counter.get_total_flops())


@torch.no_grad()
def model_flops(model, batch: int = 1, t: float | torch.Tensor = 0.0) -> dict:
    """Forward FLOPs of one DiT call on `batch` samples at its native input shape and time input `t`.

    `t` is the network's time input (a number for every sample, or a (batch,) or per-frame (batch, F)
    tensor). Static models cost the same at every t; dynamic ones (blocks that read `cond.t` to skip
    work) cost what their branches at this t execute. Such a model must be counted on a real device:
    a "meta" model has shapes but no values to branch on."""
    was_training = model.training
    model.eval()
    shape = (batch, model.in_channels, model.input_size, model.input_size)
    if model.frames:
        shape = (batch, model.frames) + shape[1:]
    device = model.pos_embed.device  # works for CUDA and for "meta" models (FLOPs need shapes only)
    x = torch.zeros(shape, device=device)
    t = torch.as_tensor(t, dtype=torch.float32, device=device)
    t = t.expand(batch) if t.dim() == 0 else t  # (batch,) or (batch, F)
    y = torch.zeros(batch, dtype=torch.long, device=device)
    flops = count_flops(model, x, t, y)
    model.train(was_training)
    return {"flops": flops, "gflops": flops / 1e9 / batch, "gmacs": flops / 2e9 / batch}
