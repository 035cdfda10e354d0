"""Stage: sample another variant's trained model into a run of its own (a sampling-only arm).

    python -m pipelines.resample <paper> <variant> --from <source variant> [--seed S] [--from-run DIR]
        [--run DIR] [--set sample.steps=20 ...]

A sampling-only variant is its source variant's training with its own `sample` section (another sampler,
step count or guidance). Training it anew would cost a training per seed for the same weights, so this
stage loads the checkpoint of the source run (default `runs/<paper>/<source>/s<seed>`) and writes into the
variant's own run directory (default `runs/<paper>/<variant>/s<seed>`):

- `samples.npz`, `samples.json`, `grid.png`: what `pipelines.sample` writes, drawn with the variant's
  `sample` section (same per-sample noise seeds as the source's own samples of that seed);
- `run.json`: the variant's config, plus `sampled_from` (the source run, its variant, the checkpoint's
  step), so `evaluate --variant` and a reader see which variant the directory holds and where it came from;
- `train.json`: the source's, since it describes the model the samples come from (parameters, GFLOPs,
  training steps, dataset, preset: what evaluate and results read), with `sampled_from` added and the
  training cost (`train_seconds`, `train_img_per_s`) left out: this arm trained nothing, and the results'
  CPU-time table must not count the source's training twice.

No checkpoint and no DVCLive log are written there: the weights and the training curves are the source's.

Checked before anything is drawn: the variant differs from the source variant only in `sample` (preset,
data, model, diffusion, train and losses equal after params and --set are resolved); the source run has a
finished training (checkpoint and train.json at the same step); its run.json and checkpoint hold the source
variant (paper, variant, model, objective) at the asked seed; the destination is not a trained run and its
run.json, if any, is this variant's.

This is a stage of its own rather than an option of `pipelines.sample` because DVC records the bytes of
`pipelines/sample.py` for every sample stage already run: editing that file would mark them all changed.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from common.data.codec import dataset_codec
from common.errors import UserError
from common.io import atomic_write, check_writable, read_json, write_atomic, write_json
from common.sampling import generate
from common.train import load_for_sampling

from ._cli import (
    StageParser,
    add_run_args,
    check_identity,
    check_run_json,
    config_from_args,
    default_run_dir,
    flatten,
    friendly_errors,
    run_identity,
)
from .sample import OUTPUTS, grid_png

TRAINED = ("preset", "data", "model", "diffusion", "train", "losses")  # what makes the weights
TRAINING_COST = ("train_seconds", "train_img_per_s")  # the source's cost, not this arm's


class ResampleError(UserError, RuntimeError):
    """A source run that cannot stand for the asked variant, or a destination that is not this variant's."""


def parse_args(argv=None):
    ap = add_run_args(StageParser("resample", __doc__))
    ap.add_argument("--from", dest="source", required=True, metavar="VARIANT",
                    help="the trained variant whose checkpoint is sampled")
    ap.add_argument("--from-run", default=None, metavar="DIR",
                    help="its run directory (default runs/<paper>/<source>/s<seed>)")
    ap.add_argument("--run", default=None, help="this variant's run directory (default runs/<paper>/<variant>/s<seed>)")
    ap.add_argument("--video-mode", choices=("parallel", "sequential"), default="parallel")
    return ap.parse_args(argv)


def check_sampling_only(cfg, src_cfg) -> None:
    """The variant must be the source's training: only its `sample` section may differ."""
    mine, theirs = cfg.to_dict(), src_cfg.to_dict()
    flat_mine = flatten({k: mine[k] for k in TRAINED})
    flat_theirs = flatten({k: theirs[k] for k in TRAINED})
    diff = sorted(k for k in flat_mine.keys() | flat_theirs.keys() if flat_mine.get(k) != flat_theirs.get(k))
    if diff:
        raise ResampleError(f"variant '{cfg.variant}' is not a sampling-only variant of '{src_cfg.variant}': they "
                            f"differ in {', '.join(diff[:5])} (only 'sample' may differ). Fix: sample from the "
                            f"variant it was trained as, or train it")


def check_source(src: Path, src_cfg) -> dict:
    """The source run's train.json, once the run is known to be a finished training of the source variant
    at the asked seed (run.json and checkpoint are read by the caller)."""
    if not (src / "ckpt" / "latest.pt").is_file():
        raise ResampleError(f"source run '{src}' has no checkpoint ('{src / 'ckpt' / 'latest.pt'}' not found). Fix: "
                            f"train {src_cfg.paper}/{src_cfg.variant} seed {src_cfg.train.seed} first")
    if not (src / "train.json").is_file():
        raise ResampleError(f"source run '{src}' has no train.json: its training has not finished. Fix: "
                            f"re-run its train command")
    check_run_json(src, run_identity(src_cfg.to_dict()), required=True)
    return read_json(src / "train.json", fix="delete it and re-run the source's train command")


@friendly_errors
def main(argv=None):
    args = parse_args(argv)
    cfg = config_from_args(args)
    src_cfg = config_from_args(argparse.Namespace(**{**vars(args), "variant": args.source}))
    check_sampling_only(cfg, src_cfg)
    src = Path(args.from_run) if args.from_run else default_run_dir(src_cfg)
    run = Path(args.run) if args.run else default_run_dir(cfg)
    if run.resolve() == src.resolve() or (run / "ckpt").exists():
        raise ResampleError(f"destination '{run}' holds a trained run: a sampling-only variant is written into "
                            f"its own directory (--run)")
    check_run_json(run, run_identity(cfg.to_dict()))
    train = check_source(src, src_cfg)
    model, train_cfg, step = load_for_sampling(src, use_ema=cfg.sample.use_ema)
    ckpt = src / "ckpt" / "latest.pt"
    check_identity(train_cfg.to_dict(), run_identity(src_cfg.to_dict()), ckpt)
    if train_cfg.train.seed != cfg.train.seed:
        raise ResampleError(f"'{ckpt}' was trained with seed {train_cfg.train.seed}, not {cfg.train.seed} as asked. "
                            f"Fix: --from-run the source's s{cfg.train.seed} run")
    if train.get("train_steps") != step:
        raise ResampleError(f"'{ckpt}' is at step {step} but '{src / 'train.json'}' says {train.get('train_steps')}: "
                            f"its training has not finished. Fix: re-run its train command")
    check_writable(*(run / f for f in (*OUTPUTS, "run.json", "train.json")))

    # from here on as pipelines.sample, with this variant's `sample` section on the source's model
    train_cfg.sample = cfg.sample
    sc = cfg.sample
    codec = dataset_codec(train_cfg.data.name, root=cfg.data.root)
    imgs, labels, secs = generate(model, train_cfg, video_mode=args.video_mode, clamp=codec.is_identity)
    arr = codec.decode_uint8(imgs, sc.batch_size).movedim(-3, -1).numpy()  # (N, [F,] H, W, C) uint8
    meta = {"sampler": sc.sampler, "steps": sc.steps, "cfg_scale": sc.cfg_scale, "ema": sc.use_ema,
            "num_samples": len(arr), "sample_s_per_img": secs / len(arr), "seed": sc.seed,
            "train_step": step, "video_mode": args.video_mode if model.frames else None, "codec": codec.name}
    grid = grid_png(imgs, labels, sc.grid, model.num_classes, decode=codec.decode)
    origin = {"run": src.as_posix(), "variant": src_cfg.variant, "train_step": step}
    with atomic_write(run / "samples.npz") as f:
        np.savez(f, arr_0=arr, labels=labels.numpy())
    write_atomic(run / "samples.json", json.dumps(meta, indent=2))
    if grid is not None:
        write_atomic(run / "grid.png", grid)
    write_json(run / "train.json", {**{k: v for k, v in train.items() if k not in TRAINING_COST},
                                    "sampled_from": origin})
    write_json(run / "run.json", {**cfg.to_dict(), "sampled_from": origin}, newline=False)
    print(f"sampled {len(arr)} images from {src} as {cfg.paper}/{cfg.variant} ({secs / len(arr) * 1000:.1f} ms/img) "
          f"-> {run / 'samples.npz'}")


if __name__ == "__main__":
    main()
