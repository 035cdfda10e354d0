"""Stage: the x0-error diagnostic of a trained run (`common.diagnostics.x0_error`) as JSON.

    python -m pipelines.x0_error <paper> <variant> --run DIR [--points 12] [--num 500] --out DIR/x0_error.json

On the held-out digits, noised at `--points` log-SNR values evenly spaced over [-8, 8] (the same noise
for every run), the mean squared error of the model's x0 estimate, read through the run's
parameterization as the samplers read it (eps, v or velocity), with the true labels and guidance off.
One file per run; `common.report.notebooks.x0_error_figure` draws several of them as one figure (error
vs log-SNR, one line per run), which is where the DDPM arms are told apart from the flow arm.

The run is loaded as `pipelines.sample` loads it (its run.json and checkpoint must hold the asked paper
and variant), with EMA weights unless `sample.use_ema` is false. Nothing is written until every point is
measured; the output is written whole or not at all.
"""
from __future__ import annotations

from pathlib import Path

import torch

from common import data as data_mod
from common.diagnostics import LOG_SNR_RANGE, log_snr_grid, x0_error
from common.diffusion import objective_from_config
from common.io import check_writable, write_json
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


def parse_args(argv=None):
    ap = add_run_args(StageParser("x0_error", __doc__))
    ap.add_argument("--run", default=None, help="run directory (default runs/<paper>/<variant>/s<seed>)")
    ap.add_argument("--points", type=int, default=12, help="log-SNR points (>= 2)")
    ap.add_argument("--num", type=int, default=0, help="held-out digits used (0 = all of them)")
    ap.add_argument("--noise-seed", type=int, default=0, help="seed of the noise (keep it equal across runs)")
    ap.add_argument("--split", default="heldout", help="dataset split the digits come from")
    ap.add_argument("--out", default=None, help="output JSON (default <run>/x0_error.json)")
    args = ap.parse_args(argv)
    if args.points < 2:
        ap.error(f"--points {args.points}: need at least 2 log-SNR points")
    if args.num < 0:
        ap.error(f"--num {args.num}: must be >= 0 (0 = every held-out digit)")
    return args


@friendly_errors
def main(argv=None) -> dict:
    args = parse_args(argv)
    cfg = config_from_args(args)
    run = Path(args.run) if args.run else default_run_dir(cfg)
    out = Path(args.out) if args.out else run / "x0_error.json"
    want = run_identity(cfg.to_dict())
    check_run_json(run, want)
    model, train_cfg, step = load_for_sampling(run, use_ema=cfg.sample.use_ema)
    check_identity(train_cfg.to_dict(), want, run / "ckpt" / "latest.pt")
    check_writable(out)
    ds = data_mod.load(train_cfg.data.name, args.split, root=cfg.data.root, frames=train_cfg.data.frames)
    x0, y = ds.tensors
    if args.num:
        x0, y = x0[:args.num], y[:args.num]
    objective = objective_from_config(train_cfg.diffusion)
    grid = log_snr_grid(args.points)
    with torch.inference_mode():
        points = x0_error(model.eval(), objective, x0, y, grid, seed=args.noise_seed)
    d = train_cfg.diffusion
    result = {
        "paper": cfg.paper, "variant": cfg.variant, "run": str(run), "seed": train_cfg.train.seed,
        "train_step": step, "objective": d.objective, "prediction": objective.prediction.name,
        "learn_sigma": bool(d.learn_sigma) if d.objective == "ddpm" else False,
        "protocol": {"dataset": train_cfg.data.name, "split": args.split, "num": len(x0),
                     "model": train_cfg.model.name, "ema": cfg.sample.use_ema, "guidance": "off (true labels)",
                     "noise_seed": args.noise_seed, "log_snr_range": list(LOG_SNR_RANGE),
                     "metric": "mean over digits of the per-pixel squared error of x0 in [-1, 1] units",
                     "x0": "the parameterization's conversion, as the samplers read it"},
        "points": points,
    }
    write_json(out, result)
    worst = max(points, key=lambda p: p["mse"])
    print(f"x0 error of {run} ({d.objective}, {objective.prediction.name}) at {len(points)} log-SNR points over "
          f"{len(x0)} digits: worst {worst['mse']:.4f} at log-SNR {worst['log_snr']:.1f} -> {out}")
    return result


if __name__ == "__main__":
    main()
