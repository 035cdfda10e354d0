"""Sample a trained variant: uint8 `.npz` (ADM layout, `arr_0` N x H x W x C) + `samples.json` + grid PNG.

Samples of a latent dataset are decoded into pixels by the dataset's codec (e.g. the SD-VAE for the
ImageNet latents of the `paper` presets) before they are written; pixel datasets are written as drawn.

    python -m pipelines.sample <paper> <variant> [--seed S] [--run DIR] [--set sample.steps=20 ...]

The run must hold that paper's variant: its run.json and its checkpoint's config are checked against the
asked paper, variant, model and objective before anything is sampled. The three outputs are written
only once every sample is drawn, each whole or not at all.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch

from common.data.codec import dataset_codec
from common.io import atomic_write, check_writable, write_atomic
from common.sampling import generate
from common.train import load_for_sampling

from ._cli import (
    StageParser,
    add_run_args,
    check_identity,
    check_run_json,
    config_from_args,
    default_run_dir,
    friendly_errors,
    run_identity,
)

OUTPUTS = ("samples.npz", "samples.json", "grid.png")


def grid_png(images: torch.Tensor, labels: torch.Tensor, n: int, num_classes: int, decode=lambda x: x) -> bytes | None:
    """A PNG grid with one column per class (rows = successive samples); video: first sample's frames per
    row. `decode` turns the picked samples into pixels (a codec's decode). None when `n` is 0 (no grid)."""
    from torchvision.utils import save_image

    if n <= 0:
        return None
    buf = io.BytesIO()
    if images.dim() == 5:  # (N, F, C, H, W): one video per row
        rows = decode(images[: min(n, 8)])
        save_image((rows.flatten(0, 1) + 1) / 2, buf, format="png", nrow=images.shape[1], padding=1)
        return buf.getvalue()
    cols = min(num_classes, 10)
    per = max(1, n // cols)
    picked = []
    for r in range(per):
        for c in range(cols):
            idx = (labels == c).nonzero().flatten()
            if r < len(idx):
                picked.append(images[idx[r]])
    save_image((decode(torch.stack(picked)) + 1) / 2, buf, format="png", nrow=cols, padding=1)
    return buf.getvalue()


def parse_args(argv=None):
    ap = add_run_args(StageParser("sample", __doc__))
    ap.add_argument("--run", default=None, help="run directory (default runs/<paper>/<variant>/s<seed>)")
    ap.add_argument("--video-mode", choices=("parallel", "sequential"), default="parallel")
    return ap.parse_args(argv)


@friendly_errors
def main(argv=None):
    args = parse_args(argv)
    cfg = config_from_args(args)
    run = Path(args.run) if args.run else default_run_dir(cfg)
    want = run_identity(cfg.to_dict())
    check_run_json(run, want)
    model, train_cfg, step = load_for_sampling(run, use_ema=cfg.sample.use_ema)
    check_identity(train_cfg.to_dict(), want, run / "ckpt" / "latest.pt")
    check_writable(*(run / f for f in OUTPUTS))
    train_cfg.sample = cfg.sample
    sc = cfg.sample
    codec = dataset_codec(train_cfg.data.name, root=cfg.data.root)  # load it before sampling, not after
    imgs, labels, secs = generate(model, train_cfg, video_mode=args.video_mode, clamp=codec.is_identity)
    arr = codec.decode_uint8(imgs, sc.batch_size)  # (N, [F,] C, H, W) uint8 pixels
    arr = arr.movedim(-3, -1).numpy()  # (N, [F,] H, W, C)
    meta = {"sampler": sc.sampler, "steps": sc.steps, "cfg_scale": sc.cfg_scale, "ema": sc.use_ema,
            "num_samples": len(arr), "sample_s_per_img": secs / len(arr), "seed": sc.seed,
            "train_step": step, "video_mode": args.video_mode if model.frames else None, "codec": codec.name}
    grid = grid_png(imgs, labels, sc.grid, model.num_classes, decode=codec.decode)
    with atomic_write(run / "samples.npz") as f:
        np.savez(f, arr_0=arr, labels=labels.numpy())
    write_atomic(run / "samples.json", json.dumps(meta, indent=2))
    if grid is not None:
        write_atomic(run / "grid.png", grid)
    print(f"sampled {len(arr)} images from {run} ({secs / len(arr) * 1000:.1f} ms/img) -> {run / 'samples.npz'}")


if __name__ == "__main__":
    main()
