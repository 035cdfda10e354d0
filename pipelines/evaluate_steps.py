"""Stage: evaluate a run over training -- FID and class-consistency of every kept checkpoint.

    python -m pipelines.evaluate_steps <paper> <variant> [--seed S] [--run DIR] --featnet data/featnet
                                       [--set sample.num_samples=500 ...]

Reads the checkpoints a run kept with `train.keep_every` (`<run>/ckpt/step_<N>.pt`), draws samples from
each with `common.sampling.generate` and the variant's resolved `sample` section (the samples the sample
stage would draw at that step: same labels, seeds, sampler, guidance, EMA or raw weights), and writes
`<run>/eval_steps.json`, one entry per kept checkpoint in step order, each beside its protocol::

    {"checkpoints": [{"step": 500, "fid": ..., "kid": ..., "precision": ..., "recall": ...,
                      "class_consistency": ..., "fid_features": "mnist-cnn", "fid_samples": ..., ...}]}

The metrics are the evaluate stage's (`common.metrics`, same KID subsets and k-NN k); curves usually
use fewer samples than the final evaluation (`--set sample.num_samples=...`), which the protocol says.
Image runs only: video runs need the per-frame reference of the evaluate stage.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from common.data import to_uint8
from common.errors import UserError
from common.io import check_writable, write_json
from common.metrics.featnet import CKPT_NAME, FEATURE_SPACE, load_featnet, load_ref_stats
from common.metrics.fid import image_metrics
from common.sampling import generate
from common.train import load_for_sampling
from common.train.checkpoint import kept_checkpoints

from ._cli import (
    StageParser,
    add_run_args,
    check_run_json,
    config_from_args,
    default_run_dir,
    friendly_errors,
    run_identity,
)


class EvalStepsError(UserError, RuntimeError):
    """A run that cannot be evaluated over training; the message names the run or checkpoint."""


def evaluate_checkpoint(run: Path, path: Path, cfg, net, ref: dict, featnet_id: str) -> dict:
    """Metrics of the samples drawn from one kept checkpoint, with their protocol."""
    sc = cfg.sample
    model, train_cfg, step = load_for_sampling(run, use_ema=sc.use_ema, checkpoint=path)
    if (train_cfg.paper, train_cfg.variant) != (cfg.paper, cfg.variant):
        raise EvalStepsError(f"checkpoint {path} belongs to {train_cfg.paper}/{train_cfg.variant}, "
                             f"not {cfg.paper}/{cfg.variant}")
    if model.frames:
        raise EvalStepsError(f"run {run} is a video run: evaluate_steps handles image runs only")
    train_cfg.sample = sc
    images, labels, secs = generate(model, train_cfg, progress=False)       # (N, C, H, W) in [-1, 1]
    x = to_uint8(images).movedim(1, -1).contiguous().numpy()                # (N, H, W, C) uint8, as samples.npz
    out, _ = image_metrics(x, labels.numpy(), net, ref, FEATURE_SPACE, featnet_id)
    out = {"step": step, **out, "num_samples": len(x)}
    out.update({
        "sampler": sc.sampler, "sample_steps": sc.steps, "cfg_scale": sc.cfg_scale, "ema": sc.use_ema,
        "sample_seed": sc.seed, "sample_s_per_img": secs / len(x), "dataset": train_cfg.data.name,
        "preset": train_cfg.preset,
    })
    return out


def parse_args(argv=None):
    ap = add_run_args(StageParser("evaluate_steps", __doc__))
    ap.add_argument("--run", default=None, help="run directory (default runs/<paper>/<variant>/s<seed>)")
    ap.add_argument("--featnet", default="data/featnet", help="directory with mnist-cnn.pt and ref_stats.npz")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 keeps the default)")
    return ap.parse_args(argv)


@friendly_errors
def main(argv=None) -> dict:
    args = parse_args(argv)
    cfg = config_from_args(args)
    run = Path(args.run) if args.run else default_run_dir(cfg)
    check_run_json(run, run_identity(cfg.to_dict()))
    kept = kept_checkpoints(run / "ckpt")
    if not kept:
        raise EvalStepsError(f"no kept checkpoints (ckpt/step_<N>.pt) in run {run}: train it with train.keep_every > 0")
    check_writable(run / "eval_steps.json")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    net, ref = load_featnet(args.featnet), load_ref_stats(args.featnet)
    ckpt = Path(args.featnet) / CKPT_NAME if Path(args.featnet).is_dir() else Path(args.featnet)
    featnet_id = f"{FEATURE_SPACE}@{hashlib.sha256(ckpt.read_bytes()).hexdigest()[:12]}"
    rows = []
    for _, path in kept:
        r = evaluate_checkpoint(run, path, cfg, net, ref, featnet_id)
        rows.append(r)
        print(f"{run} step {r['step']}: FID {r['fid']:.3f} ({r['fid_features']}, n={r['fid_samples']}) "
              f"class-consistency {r['class_consistency']:.3f}", flush=True)
    doc = {"checkpoints": rows}
    write_json(run / "eval_steps.json", doc)  # written once every kept checkpoint is evaluated
    print(f"wrote {run / 'eval_steps.json'} ({len(rows)} checkpoints)")
    return doc


if __name__ == "__main__":
    main()
