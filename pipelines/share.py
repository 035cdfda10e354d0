"""Share a reference run of another paper instead of retraining it (same recipe, same seeds).

    python -m pipelines.share runs/dit/sit runs/pom/dit-attention --seeds 0 1 2

Copies the small files a results/notebook stage reads (train.json, samples.json, eval.json, grid.png,
run.json, dvclive/) of each seed into `<dst>/s<seed>/`, beside a SHARED_FROM file naming the source;
checkpoints and samples stay where they are (in the DVC cache).

Nothing is ever deleted. Everything is checked before the first copy: every asked seed of the source has
its eval.json, source and destination are different directories, and the destination is absent, empty
or a previous share (every entry a `s<seed>/` folder with SHARED_FROM and no checkpoint), never a
trained run. Each file is then replaced whole (temporary file + rename).
"""
from __future__ import annotations

from pathlib import Path

from common.errors import UserError
from common.io import check_writable_dir, copy_atomic, write_atomic

from ._cli import StageParser, friendly_errors

FILES = ("train.json", "samples.json", "eval.json", "grid.png", "run.json")
MARK = "SHARED_FROM"


class ShareError(UserError):
    """A share that would overwrite a trained run or copy an unfinished one; the message names the path."""


def check_share(src: Path, dst: Path, seeds: list[int]) -> None:
    """Every reason to refuse, before anything is written."""
    if not src.is_dir():
        raise ShareError(f"source '{src}' is not a directory")
    a, b = src.resolve(), dst.resolve()
    if a == b or a in b.parents or b in a.parents:
        raise ShareError(f"source '{src}' and destination '{dst}' overlap: share into another directory")
    missing = [s for s in seeds if not (src / f"s{s}" / "eval.json").is_file()]
    if missing:
        raise ShareError(f"source '{src}' has no evaluated run for seed(s) {missing} ('{src / f's{missing[0]}'}/eval.json' "
                         f"not found). Fix: run its pipeline first")
    check_writable_dir(dst, "destination")
    if dst.is_dir():
        for entry in sorted(dst.iterdir()):
            if (entry / "ckpt").exists():
                raise ShareError(f"destination '{dst}' holds a trained run ('{entry / 'ckpt'}'): refusing to write "
                                 f"into it (were source and destination swapped?)")
            if not (entry.is_dir() and (entry / MARK).is_file()):
                raise ShareError(f"destination '{dst}' is not a previous share ('{entry}' has no {MARK}): "
                                 f"refusing to write into it. Fix: choose an empty or new destination")


def share(src: Path, dst: Path, seeds: list[int]) -> None:
    check_share(src, dst, seeds)
    for s in seeds:
        a, b = src / f"s{s}", dst / f"s{s}"
        write_atomic(b / MARK, f"{a.as_posix()}\n")  # first: a share cut short is still known as a share
        for f in FILES:
            if (a / f).is_file():
                copy_atomic(a / f, b / f)
        for f in sorted((a / "dvclive").rglob("*")):
            if f.is_file():
                copy_atomic(f, b / f.relative_to(a))


@friendly_errors
def main(argv=None):
    ap = StageParser("share", __doc__)
    ap.add_argument("src", help="runs directory of the reference variant (holding s<seed>/)")
    ap.add_argument("dst", help="runs directory of the variant that reuses it")
    ap.add_argument("--seeds", type=int, nargs="+", required=True)
    args = ap.parse_args(argv)
    share(Path(args.src), Path(args.dst), args.seeds)
    print(f"shared {args.src} -> {args.dst} (seeds {args.seeds})")


if __name__ == "__main__":
    main()
