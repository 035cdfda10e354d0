"""Benchmarks, written as DVC metrics (`make bench`). Speed is measured here, never in tests.

    python -m pipelines.bench core --out bench/core.json
    python -m pipelines.bench <paper> --out papers/<paper>/results/bench.json [--params FILE]

`core` is the shared benchmark (`common.bench.core`). A paper's benchmark is found by convention: the
module `papers/<paper>/bench.py` defines `run(section: dict) -> dict`, called with the `bench:` section
of the paper's params.yaml (or of `--params`), which it validates before measuring anything; what it
returns is written as JSON to `--out`.
"""
from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import papers
from common.config import ConfigError
from common.io import check_writable, write_json

from ._cli import StageParser, friendly_errors, paper_params


def paper_bench(paper: str):
    """The paper's bench module (`papers.<paper>.bench`); ConfigError when there is none."""
    if paper not in papers.names():
        raise ConfigError(f"unknown paper '{paper}' (known: core, {', '.join(papers.names())})")
    if importlib.util.find_spec(f"papers.{paper}.bench") is None:
        raise ConfigError(f"paper '{paper}' has no benchmark: add papers/{paper}/bench.py with run(section)")
    return importlib.import_module(f"papers.{paper}.bench")


@friendly_errors
def main(argv=None):
    ap = StageParser("bench", __doc__)
    ap.add_argument("which", help="`core`, or a paper with a papers/<paper>/bench.py")
    ap.add_argument("--out", required=True)
    ap.add_argument("--params", default=None, help="params file of the paper (default papers/<paper>/params.yaml)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    check_writable(out, what="--out")  # fail now, not after minutes of benchmarks
    if args.which == "core":
        from common.bench import core

        res = core()
    else:
        bench = paper_bench(args.which)
        res = bench.run(paper_params(args.which, args.params).get("bench") or {})
    write_json(out, res, newline=False)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
