"""Train one variant of a paper.

    python -m pipelines.train <paper> <variant> [--seed S] [--out DIR] [--set key=value ...]
    torchrun --standalone --nproc_per_node=2 -m pipelines.train <paper> <variant> ...

Reads `papers/<paper>/params.yaml` (base <- preset <- variant <- --set), trains or resumes in DIR
(default `runs/<paper>/<variant>/s<seed>`). Re-running the same command after a crash resumes; re-running
a finished run changes nothing. `--set train.init_from=<run dir>` starts from that run's weights (under
DVC, list `<run dir>/ckpt` in the stage's deps).
"""
from __future__ import annotations

from common.io import check_writable_dir
from common.train import train

from ._cli import StageParser, add_run_args, config_from_args, default_run_dir, friendly_errors


def parse_args(argv=None):
    ap = add_run_args(StageParser("train", __doc__))
    ap.add_argument("--out", default=None, help="run directory (default runs/<paper>/<variant>/s<seed>)")
    ap.add_argument("--on-mismatch", choices=("error", "restart"), default="error",
                    help="if DIR holds a run of another config: stop (default) or start over")
    return ap.parse_args(argv)


@friendly_errors
def main(argv=None):
    args = parse_args(argv)
    cfg = config_from_args(args)
    out = args.out or default_run_dir(cfg)
    check_writable_dir(out, "--out")
    summary = train(cfg, out, on_mismatch=args.on_mismatch)
    loss = summary.get("final_loss")  # unknown (None) for a finished run whose train.json had to be rebuilt
    print(f"trained {cfg.paper}/{cfg.variant} seed {cfg.train.seed}: {summary['train_steps']} steps, "
          f"final loss {'?' if loss is None else f'{loss:.4f}'}, {summary['params']:,} params -> {out}")


if __name__ == "__main__":
    main()
