"""Stage: record how closely our DDPM matches the official DiT diffusion code, for the results page.

    python -m pipelines.faithful --golden tests/data/dit_golden.pt --out papers/<paper>/results/faithful.json

Runs `common.diagnostics.faithfulness` -- the comparison `tests/test_dit_faithful.py` asserts -- on a golden
file of the official code's outputs (one training loss, the posterior, p_mean_variance, one ancestral and
one DDIM step, in float64 and float32) and writes every row: the max |ours - official|, its tolerance,
both dtypes and whether it passes, with the official repository and commit. A page that says "the DDPM
arm is faithful" shows these numbers, not a claim typed by hand. A failing row is recorded, not raised:
the page then says which quantity differs (and the test fails).
"""
from __future__ import annotations

from pathlib import Path

import torch

from common.diagnostics import faithfulness
from common.errors import UserError
from common.io import check_writable, write_json

from ._cli import StageParser, friendly_errors


class GoldenError(UserError, RuntimeError):
    """A golden file that is missing or not the official outputs this comparison reads."""


def load_golden(path: Path) -> dict:
    """The golden dict; one line naming the file when it is missing, unreadable or lacks a section."""
    if not path.is_file():
        raise GoldenError(f"golden file '{path}' not found")
    try:
        golden = torch.load(path, weights_only=True)
    except Exception as e:  # torch raises several types for a file that is not a tensor archive
        raise GoldenError(f"golden file '{path}' is not a readable torch file ({type(e).__name__})") from e
    missing = [k for k in ("inputs", "respaced", "float64", "float32") if not isinstance(golden, dict) or k not in golden]
    if missing:
        raise GoldenError(f"golden file '{path}' has no '{missing[0]}' section (not the official DiT outputs)")
    return golden


@friendly_errors
def main(argv=None) -> dict:
    ap = StageParser("faithful", __doc__)
    ap.add_argument("--golden", required=True, help="the official code's outputs (tests/data/dit_golden.pt)")
    ap.add_argument("--out", required=True, help="output JSON (papers/<paper>/results/faithful.json)")
    args = ap.parse_args(argv)
    golden, out = Path(args.golden), Path(args.out)
    check_writable(out)
    report = faithfulness(load_golden(golden))
    doc = {"golden": golden.as_posix(), **report}
    write_json(out, doc)
    rows = report["rows"]
    worst = {d: max(r["max_abs_diff"] for r in rows if r["dtype"] == d) for d in report["atol"]}
    bad = [f"{r['group']} / {r['quantity']} ({r['dtype']})" for r in rows if not r["passed"]]
    print(f"faithful to {report['official']['repository']}@{str(report['official']['commit'])[:10]}: "
          f"{len(rows) - len(bad)} of {len(rows)} quantities within tolerance; worst "
          + ", ".join(f"{d} {v:.2g}" for d, v in worst.items()) + (f"; DIFFER: {', '.join(bad)}" if bad else "")
          + f" -> {out}")
    return doc


if __name__ == "__main__":
    main()
