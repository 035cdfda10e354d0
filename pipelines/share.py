"""Share a reference run of another paper instead of retraining it (same recipe, same seeds).

    python -m pipelines.share runs/dit/sit runs/pom/dit-attention --seeds 0 1 2

Copies the small files a results/notebook stage reads (train.json, samples.json, eval.json, grid.png,
dvclive/) of each seed; checkpoints and samples stay where they are (in the DVC cache).
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

FILES = ("train.json", "samples.json", "eval.json", "grid.png", "run.json")


def share(src: Path, dst: Path, seeds: list[int]) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    for s in seeds:
        a, b = src / f"s{s}", dst / f"s{s}"
        if not (a / "eval.json").is_file():
            raise SystemExit(f"error: reference run {a} has no eval.json: run its pipeline first")
        b.mkdir(parents=True)
        for f in FILES:
            if (a / f).is_file():
                shutil.copyfile(a / f, b / f)
        if (a / "dvclive").is_dir():
            shutil.copytree(a / "dvclive", b / "dvclive")
        (b / "SHARED_FROM").write_text(f"{a.as_posix()}\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--seeds", type=int, nargs="+", required=True)
    args = ap.parse_args(argv)
    share(Path(args.src), Path(args.dst), args.seeds)
    print(f"shared {args.src} -> {args.dst} (seeds {args.seeds})")


if __name__ == "__main__":
    main()
