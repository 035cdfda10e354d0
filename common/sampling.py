"""Drawing a set of samples from a trained run: class-balanced labels, per-sample seeds, CFG, batches.

Sample i has label i mod num_classes and noise seeded by `derive_seed(seed, i, 3)`, so the set does not depend on the
batch size or on how many processes share the work. The objective, its parameterization, the sampler
and the time grid come from the run's `diffusion` and `sample` sections (`common.diffusion`)."""
from __future__ import annotations

import inspect
import time

import torch

from common.config import ConfigError
from common.diffusion import (
    CFGDenoiser,
    check_sampler,
    get_sampler,
    objective_from_config,
    per_sample_noise,
    sample,
)
from common.seeding import SAMPLE_NOISE, derive_seed


def _sample_seed(seed: int, i: int) -> int:
    return derive_seed(seed, i, SAMPLE_NOISE)


@torch.no_grad()
def generate(model, cfg, num_samples: int | None = None, indices=None, progress: bool = True,
             video_mode: str = "parallel", clamp: bool = True):
    """Returns (images float in [-1, 1] (N, C, H, W) or (N, F, C, H, W), labels (N,), seconds).

    `clamp=False` keeps the raw samples: latents are decoded by their codec, not clamped."""
    sc = cfg.sample
    objective = objective_from_config(cfg.diffusion)
    check_sampler(cfg.diffusion.objective, sc.sampler)
    try:
        objective.grid(sc.steps, sc.time_grid, sc.shift)  # fail before sampling anything
    except ValueError as e:
        raise ConfigError(f"params key 'sample.time_grid' = {sc.time_grid!r}: {e}") from e
    if video_mode == "sequential":  # frame-by-frame generation needs a block-causal video model
        from common.diffusion.video import check_sequential_model

        try:
            check_sequential_model(model)
        except ValueError as e:
            raise ConfigError(f"video mode 'sequential': {e}") from None
    if sc.frames and not model.frames:
        raise ConfigError(f"params key 'sample.frames' = {sc.frames} is for video models; this model makes images")
    n = num_samples or sc.num_samples
    indices = list(range(n)) if indices is None else list(indices)
    shape = (model.in_channels, model.input_size, model.input_size)
    if model.frames:
        shape = (sc.frames or model.frames,) + shape
    denoiser = CFGDenoiser(model, sc.cfg_scale, sc.cfg_channels)
    # latents are not pixels: the DDPM samplers must not clip their x0 estimate to [-1, 1] either
    options = {} if clamp or "clip" not in inspect.signature(get_sampler(objective.name, sc.sampler).fn).parameters \
        else {"clip": False}
    chunks = [indices[i : i + sc.batch_size] for i in range(0, len(indices), sc.batch_size)]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(indices), desc="sample", disable=None)
    outs, labels = [], []
    t0 = time.time()
    for chunk in chunks:
        seeds = [_sample_seed(sc.seed, i) for i in chunk]
        noise = per_sample_noise((len(chunk),) + shape, seeds)
        y = torch.tensor([i % model.num_classes for i in chunk], dtype=torch.long)
        if model.frames and video_mode == "sequential":
            from common.diffusion.video import sample_sequential

            x = sample_sequential(objective, model, noise, y, sc.steps, sc.cfg_scale, sc.cfg_channels,
                                  sampler=sc.sampler, seeds=seeds, grid=sc.time_grid, shift=sc.shift)
        else:
            x = sample(objective, denoiser, noise, y, sampler=sc.sampler, steps=sc.steps, grid=sc.time_grid,
                       shift=sc.shift, seeds=seeds, **options)
        outs.append(x.clamp(-1, 1) if clamp else x)
        labels.append(y)
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return torch.cat(outs), torch.cat(labels), time.time() - t0
