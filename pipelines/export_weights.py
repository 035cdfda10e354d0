"""Stage: export a run's EMA weights into a small committed run directory that outlives the DVC cache.

    python -m pipelines.export_weights runs/<paper>/<variant> papers/<paper>/results/reference --seeds 0 1 2

For each seed, writes `<out>/s<seed>/ckpt/latest.pt` holding the EMA weights (as both "ema" and "model": one storage, saved
once), the step and the config, but no optimizer, RNG or raw weights: about 4 bytes a parameter (5 MB
for the tiny reference). It loads like any checkpoint here, so fine-tuning papers start from it with
`train.init_from: <out>/s<seed>` and `load_for_sampling(<out>/s<seed>)` samples it, on a fresh clone without retraining.
"""
from __future__ import annotations

from pathlib import Path

from common.errors import UserError
from common.train.checkpoint import load, save_atomic

from ._cli import StageParser, friendly_errors


class ExportError(UserError, RuntimeError):
    """A source without a checkpoint, or a destination inside it."""


def export_weights(run: Path, out: Path) -> Path:
    """EMA weights, step and config of `run`'s ckpt/latest.pt -> `out`/ckpt/latest.pt (returned)."""
    src = run / "ckpt" / "latest.pt"
    if not src.is_file():
        raise ExportError(f"'{src}' not found: run the train stage of '{run}' first")
    if out.resolve() == run.resolve() or run.resolve() in out.resolve().parents:
        raise ExportError(f"destination '{out}' is inside the run directory '{run}'")
    ck = load(src)
    ema = {k: v.contiguous() for k, v in ck["ema"].items()}
    dst = out / "ckpt" / "latest.pt"
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_atomic({"ema": ema, "model": ema, "step": ck["step"], "config": ck["config"]}, dst)
    return dst


@friendly_errors
def main(argv=None) -> list[Path]:
    ap = StageParser("export_weights", __doc__)
    ap.add_argument("runs", help="the variant's run directories (runs/<paper>/<variant>, holding s<seed>/ckpt)")
    ap.add_argument("out", help="committed copies (papers/<paper>/results/reference)")
    ap.add_argument("--seeds", type=int, nargs="+", required=True)
    args = ap.parse_args(argv)
    done = []
    for seed in args.seeds:
        dst = export_weights(Path(args.runs) / f"s{seed}", Path(args.out) / f"s{seed}")
        print(f"exported the EMA weights of {args.runs}/s{seed} -> {dst} ({dst.stat().st_size / 2**20:.1f} MB)")
        done.append(dst)
    return done


if __name__ == "__main__":
    main()
