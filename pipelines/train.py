"""Train one variant of a paper.

    python -m pipelines.train <paper> <variant> [--seed S] [--out DIR] [--set key=value ...]
    torchrun --standalone --nproc_per_node=2 -m pipelines.train <paper> <variant> ...

Reads `papers/<paper>/params.yaml` (base <- preset <- variant <- --set), trains or resumes in DIR
(default `runs/<paper>/<variant>/s<seed>`). Re-running the same command after a crash resumes; re-running
a finished run changes nothing. `--set train.init_from=<run dir>` starts from that run's weights (under
DVC, list `<run dir>/ckpt` in the stage's deps).
"""
from __future__ import annotations

import argparse

from common.config import parse_set, resolve
from common.diffusion import check_sampler
from common.train import train

from ._cli import friendly_errors, paper_params


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paper")
    ap.add_argument("variant")
    ap.add_argument("--seed", type=int, default=None, help="overrides train.seed and sample.seed")
    ap.add_argument("--out", default=None)
    ap.add_argument("--params", default=None, help="params file (default papers/<paper>/params.yaml)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--on-mismatch", choices=("error", "restart"), default="error",
                    help="if DIR holds a run of another config: stop (default) or start over")
    return ap.parse_args(argv)


def config_from_args(args):
    sets = parse_set(args.sets)
    if args.seed is not None:
        sets.setdefault("train", {})["seed"] = args.seed
        sets.setdefault("sample", {})["seed"] = args.seed
    cfg = resolve(paper_params(args.paper, args.params), args.paper, args.variant, sets)
    check_sampler(cfg.diffusion.objective, cfg.sample.sampler)  # fail before training, not after it
    return cfg


@friendly_errors
def main(argv=None):
    args = parse_args(argv)
    cfg = config_from_args(args)
    out = args.out or f"runs/{cfg.paper}/{cfg.variant}/s{cfg.train.seed}"
    summary = train(cfg, out, on_mismatch=args.on_mismatch)
    loss = summary.get("final_loss")  # unknown (None) for a finished run whose train.json had to be rebuilt
    print(f"trained {cfg.paper}/{cfg.variant} seed {cfg.train.seed}: {summary['train_steps']} steps, "
          f"final loss {'?' if loss is None else f'{loss:.4f}'}, {summary['params']:,} params -> {out}")


if __name__ == "__main__":
    main()
