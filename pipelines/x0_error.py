"""Stage: the x0-error diagnostic (`common.diagnostics.x0_error`) of one or several trained runs, as one JSON.

    python -m pipelines.x0_error <paper> <variant> --run DIR [--points 12] [--num 0] --out x0_error.json
    python -m pipelines.x0_error <paper> <variant> [<variant> ...] --seeds 0 1 2 [--runs-root runs/<paper>] --out FILE

On the held-out digits, noised at `--points` log-SNR values evenly spaced over [-8, 8] (the same noise
for every run), the mean squared error of the model's x0 estimate, read through the run's
parameterization as the samplers read it (eps, v or velocity), with the true labels and guidance off.
The runs are `--run DIR` (one variant, one seed) or `<runs-root>/<variant>/s<seed>` for every variant and
seed asked. The output is `{"paper": ..., "runs": [one entry per run: its identity, protocol and points]}`;
`common.report.notebooks.x0_error_figure` draws it (error vs log-SNR, one line per run), which is where
the DDPM arms are told apart from the flow arm. Under DVC a paper lists its runs once, in the stage's
command, and their checkpoint directories as the stage's deps (a test checks that the two agree).

Each run is loaded as `pipelines.sample` loads it (its run.json and checkpoint must hold the asked paper
and variant), with EMA weights unless `sample.use_ema` is false. Every run's config and run.json are
checked before any is measured; the output is written whole, once every point of every run is measured.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from common import data as data_mod
from common.diagnostics import LOG_SNR_RANGE, log_snr_grid, x0_error
from common.diffusion import objective_from_config
from common.io import check_writable, write_json
from common.train import load_for_sampling
from common.train.checkpoint import CheckpointError

from ._cli import (
    StageParser,
    check_identity,
    check_run_json,
    config_from_args,
    friendly_errors,
    run_identity,
)


def parser() -> StageParser:
    ap = StageParser("x0_error", __doc__)
    ap.add_argument("paper")
    ap.add_argument("variants", nargs="+", metavar="variant", help="one or more variants of the paper")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of every variant (default 0)")
    ap.add_argument("--params", default=None, help="params file (default papers/<paper>/params.yaml)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="override a params key (value read as YAML); repeatable")
    ap.add_argument("--run", default=None, help="the run directory, for one variant and one seed")
    ap.add_argument("--runs-root", default=None, help="runs are <runs-root>/<variant>/s<seed> (default runs/<paper>)")
    ap.add_argument("--points", type=int, default=12, help="log-SNR points (>= 2)")
    ap.add_argument("--num", type=int, default=0, help="held-out digits used (0 = all of them)")
    ap.add_argument("--noise-seed", type=int, default=0, help="seed of the noise (keep it equal across runs)")
    ap.add_argument("--split", default="heldout", help="dataset split the digits come from")
    ap.add_argument("--out", default=None, help="output JSON (default <run>/x0_error.json for one run)")
    return ap


def parse_args(argv=None):
    ap = parser()
    args = ap.parse_args(argv)
    if args.points < 2:
        ap.error(f"--points {args.points}: need at least 2 log-SNR points")
    if args.num < 0:
        ap.error(f"--num {args.num}: must be >= 0 (0 = every held-out digit)")
    if len(set(args.variants)) < len(args.variants) or len(set(args.seeds)) < len(args.seeds):
        ap.error("a variant or seed is given twice")
    if args.run and (len(args.variants) > 1 or len(args.seeds) > 1):
        ap.error("--run names one run: give one variant and at most one seed, or use --runs-root")
    if args.run and args.runs_root:
        ap.error("give --run or --runs-root, not both")
    if args.out is None and not args.run and len(args.variants) * len(args.seeds) > 1:
        ap.error("--out is required for several runs")
    return args


def run_dirs(args) -> list[tuple[str, int, Path]]:
    """(variant, seed, run directory) of every run asked, variants in the order given, then seeds."""
    if args.run:
        return [(args.variants[0], args.seeds[0], Path(args.run))]
    root = Path(args.runs_root or f"runs/{args.paper}")
    return [(v, s, root / v / f"s{s}") for v in args.variants for s in args.seeds]


def measure(cfg, run: Path, args, datasets: dict) -> dict:
    """One run's entry: its identity, the protocol and the x0 error at every log-SNR point."""
    model, train_cfg, step = load_for_sampling(run, use_ema=cfg.sample.use_ema)
    check_identity(train_cfg.to_dict(), run_identity(cfg.to_dict()), run / "ckpt" / "latest.pt")
    key = (train_cfg.data.name, args.split)
    if key not in datasets:
        datasets[key] = data_mod.load(train_cfg.data.name, args.split, root=cfg.data.root,
                                      frames=train_cfg.data.frames).tensors
    x0, y = datasets[key]
    if args.num:
        x0, y = x0[:args.num], y[:args.num]
    objective = objective_from_config(train_cfg.diffusion)
    with torch.inference_mode():
        points = x0_error(model.eval(), objective, x0, y, log_snr_grid(args.points), seed=args.noise_seed)
    d = train_cfg.diffusion
    return {
        "variant": cfg.variant, "run": run.as_posix(), "seed": train_cfg.train.seed,
        "train_step": step, "objective": d.objective, "prediction": objective.prediction.name,
        "learn_sigma": bool(d.learn_sigma) if d.objective == "ddpm" else False,
        "protocol": {"dataset": train_cfg.data.name, "split": args.split, "num": len(x0),
                     "model": train_cfg.model.name, "ema": cfg.sample.use_ema, "guidance": "off (true labels)",
                     "noise_seed": args.noise_seed, "log_snr_range": list(LOG_SNR_RANGE),
                     "metric": "mean over digits of the per-pixel squared error of x0 in [-1, 1] units",
                     "x0": "the parameterization's conversion, as the samplers read it"},
        "points": points,
    }


@friendly_errors
def main(argv=None) -> dict:
    args = parse_args(argv)
    runs = []
    for variant, seed, run in run_dirs(args):  # every config and run.json checked before any work
        ns = argparse.Namespace(paper=args.paper, variant=variant, seed=seed, params=args.params, sets=args.sets)
        cfg = config_from_args(ns)
        check_run_json(run, run_identity(cfg.to_dict()))
        if not (run / "ckpt" / "latest.pt").is_file():
            raise CheckpointError(f"no checkpoint at {run / 'ckpt' / 'latest.pt'}: train the run first")
        runs.append((cfg, run))
    out = Path(args.out) if args.out else runs[0][1] / "x0_error.json"
    check_writable(out)
    datasets: dict = {}
    entries = []
    for cfg, run in runs:
        e = measure(cfg, run, args, datasets)
        worst = max(e["points"], key=lambda p: p["mse"])
        print(f"x0 error of {run} ({e['objective']}, {e['prediction']}) at {len(e['points'])} log-SNR points over "
              f"{e['protocol']['num']} digits: worst {worst['mse']:.4f} at log-SNR {worst['log_snr']:.1f}")
        entries.append(e)
    result = {"paper": args.paper, "runs": entries}
    write_json(out, result)
    print(f"wrote {out} ({len(entries)} run{'s' * (len(entries) > 1)})")
    return result


if __name__ == "__main__":
    main()
