"""Stage: copy one run's small files into the paper's committed results, so that they outlive the cache.

    python -m pipelines.collect runs/<paper>/<variant>/s<seed> papers/<paper>/results/runs/<variant>/s<seed>

Copies what the results stage, the notebooks and a reader need -- run.json, train.json, samples.json,
eval.json, eval_steps.json, grid.png, SHARED_FROM (those present) and dvclive/ (summary, params, metric
plots) -- and nothing big: ckpt/ and samples.npz stay in runs/, in the DVC cache. Under DVC the
destination is a `cache: false` output, committed to git, so a fresh clone rebuilds results/metrics.json
(`dvc repro --allow-missing`) without training. The destination is replaced as a whole: the copy is
built beside it under a temporary name, then renamed over it.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from common.errors import UserError

from ._cli import StageParser, friendly_errors

FILES = ("run.json", "train.json", "samples.json", "eval.json", "eval_steps.json", "grid.png", "SHARED_FROM")
DIRS = ("dvclive",)


class CollectError(UserError, RuntimeError):
    """A source that is not a run directory, or a destination that would overlap it."""


def collect(src: Path, dst: Path) -> list[str]:
    """Copy the small files of run `src` to `dst` (replacing it); returns the names copied."""
    if not src.is_dir():
        raise CollectError(f"run directory '{src}' not found")
    for name, stage in (("train.json", "train"), ("eval.json", "evaluate")):  # never commit half a run
        if not (src / name).is_file():
            raise CollectError(f"'{src}' has no {name}: run its {stage} stage first")
    a, b = src.resolve(), dst.resolve()
    if a == b or a in b.parents or b in a.parents:
        raise CollectError(f"destination '{dst}' overlaps the run directory '{src}'")
    names = [f for f in FILES if (src / f).is_file()] + [d for d in DIRS if (src / d).is_dir()]
    tmp, old = dst.with_name(f".{dst.name}.tmp"), dst.with_name(f".{dst.name}.old")
    for p in (tmp, old):
        shutil.rmtree(p, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in names:
        if name in DIRS:
            shutil.copytree(src / name, tmp / name)
        else:
            shutil.copyfile(src / name, tmp / name)
    if dst.exists():
        dst.rename(old)
    tmp.rename(dst)
    shutil.rmtree(old, ignore_errors=True)
    return names


@friendly_errors
def main(argv=None) -> list[str]:
    ap = StageParser("collect", __doc__)
    ap.add_argument("src", help="run directory (runs/<paper>/<variant>/s<seed>)")
    ap.add_argument("dst", help="committed copy (papers/<paper>/results/runs/<variant>/s<seed>)")
    args = ap.parse_args(argv)
    names = collect(Path(args.src), Path(args.dst))
    print(f"collected {args.src} -> {args.dst}: {', '.join(names)}")
    return names


if __name__ == "__main__":
    main()
