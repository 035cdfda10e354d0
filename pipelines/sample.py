"""Sample a trained variant: uint8 `.npz` (ADM layout, `arr_0` N x H x W x C) + `samples.json` + grid PNG.

Samples of a latent dataset are decoded into pixels by the dataset's codec (e.g. the SD-VAE for the
ImageNet latents of the `paper` presets) before they are written; pixel datasets are written as drawn.

    python -m pipelines.sample <paper> <variant> [--seed S] [--run DIR] [--set sample.steps=20 ...]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from common.data.codec import dataset_codec
from common.sampling import generate
from common.train import load_for_sampling

from ._cli import friendly_errors
from .train import config_from_args


def save_grid(images: torch.Tensor, labels: torch.Tensor, path: Path, n: int, num_classes: int,
              decode=lambda x: x) -> None:
    """A grid with one column per class (rows = successive samples); video: first sample's frames per row.
    `decode` turns the picked samples into pixels (a codec's decode)."""
    from torchvision.utils import save_image

    if n <= 0:
        return
    if images.dim() == 5:  # (N, F, C, H, W): one video per row
        rows = decode(images[: min(n, 8)])
        save_image((rows.flatten(0, 1) + 1) / 2, path, nrow=images.shape[1], padding=1)
        return
    cols = min(num_classes, 10)
    per = max(1, n // cols)
    picked = []
    for r in range(per):
        for c in range(cols):
            idx = (labels == c).nonzero().flatten()
            if r < len(idx):
                picked.append(images[idx[r]])
    save_image((decode(torch.stack(picked)) + 1) / 2, path, nrow=cols, padding=1)


@friendly_errors
def main(argv=None):
    from .train import parse_args

    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--run", default=None)
    ap.add_argument("--video-mode", choices=("parallel", "sequential"), default="parallel")
    own, rest = ap.parse_known_args(argv)
    args = parse_args(rest)
    cfg = config_from_args(args)
    run = Path(own.run or args.out or f"runs/{cfg.paper}/{cfg.variant}/s{cfg.train.seed}")
    model, train_cfg, step = load_for_sampling(run, use_ema=cfg.sample.use_ema)
    train_cfg.sample = cfg.sample
    sc = cfg.sample
    codec = dataset_codec(train_cfg.data.name, root=cfg.data.root)  # load it before sampling, not after
    imgs, labels, secs = generate(model, train_cfg, video_mode=own.video_mode, clamp=codec.is_identity)
    arr = codec.decode_uint8(imgs, sc.batch_size)  # (N, [F,] C, H, W) uint8 pixels
    arr = arr.movedim(-3, -1).numpy()  # (N, [F,] H, W, C)
    np.savez(run / "samples.npz", arr_0=arr, labels=labels.numpy())
    meta = {"sampler": sc.sampler, "steps": sc.steps, "cfg_scale": sc.cfg_scale, "ema": sc.use_ema,
            "num_samples": len(arr), "sample_s_per_img": secs / len(arr), "seed": sc.seed,
            "train_step": step, "video_mode": own.video_mode if model.frames else None, "codec": codec.name}
    (run / "samples.json").write_text(json.dumps(meta, indent=2))
    save_grid(imgs, labels, run / "grid.png", sc.grid, model.num_classes, decode=codec.decode)
    print(f"sampled {len(arr)} images from {run} ({secs / len(arr) * 1000:.1f} ms/img) -> {run / 'samples.npz'}")


if __name__ == "__main__":
    main()
