"""Drawing a set of samples from a trained run: class-balanced labels, per-sample seeds, CFG, batches.

Sample i has label i mod num_classes and noise seeded by (seed, i), so the set does not depend on the
batch size or on how many processes share the work."""
from __future__ import annotations

import time

import torch

from common.diffusion import CFGDenoiser, check_sampler, create_objective, per_sample_noise


def _sample_seed(seed: int, i: int) -> int:
    return seed * 1_000_003 + i


@torch.no_grad()
def generate(model, cfg, num_samples: int | None = None, indices=None, progress: bool = True,
             video_mode: str = "parallel", clamp: bool = True):
    """Returns (images float in [-1, 1] (N, C, H, W) or (N, F, C, H, W), labels (N,), seconds).

    `clamp=False` keeps the raw samples: latents are decoded by their codec, not clamped."""
    sc = cfg.sample
    objective = create_objective(cfg.diffusion.objective, num_timesteps=cfg.diffusion.num_timesteps,
                                 learn_sigma=cfg.diffusion.learn_sigma)
    check_sampler(cfg.diffusion.objective, sc.sampler)
    n = num_samples or sc.num_samples
    indices = list(range(n)) if indices is None else list(indices)
    shape = (model.in_channels, model.input_size, model.input_size)
    if model.frames:
        shape = (model.frames,) + shape
    denoiser = CFGDenoiser(model, sc.cfg_scale, sc.cfg_channels)
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
                                  sampler=sc.sampler, seeds=seeds)
        else:
            x = objective.sample(denoiser, noise, y, sampler=sc.sampler, steps=sc.steps, seeds=seeds)
        outs.append(x.clamp(-1, 1) if clamp else x)
        labels.append(y)
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return torch.cat(outs), torch.cat(labels), time.time() - t0
