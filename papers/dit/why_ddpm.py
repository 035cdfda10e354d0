""""Why the DDPM arm fails the gate": the section of the results page (results/README.md, written by the
`results` stage, and the `why_ddpm` notebook) that says why `dit` fails the quality gate, from pipeline
files only:

1. `results/faithful.json` (the `faithful` stage): our DDPM against the official DiT diffusion code, one
   step of everything (training loss, posterior, p_mean_variance, an ancestral and a DDIM step), so the
   failure is the method's at this budget, not a bug of ours;
2. `results/x0_error.json` (the `x0-error` stage): each arm's x0 error against log-SNR on noised held-out
   digits, read as the sampler reads the network: where the eps arm's estimate is worse than the
   v and velocity arms';
3. `results/metrics.json`, claim `v-prediction-fixes-ddpm`: the gate of `dit` and of `dit-v` (the same
   chain and recipe predicting v) as the verdict rule judged them.

Nothing here holds a number: every value is read from those files when the page is written.
"""
from __future__ import annotations

from pathlib import Path

TITLE = "Why the DDPM arm fails the gate"
CLAIM = "v-prediction-fixes-ddpm"  # dit-v vs dit: the prediction alone changed
ARM = "dit"                        # the arm that fails the gate
REFERENCE = "sit"                  # the flow arm the x0 errors are compared with
FAITHFUL = "faithful.json"
X0_ERROR = "x0_error.json"
FIGURE = "figures/x0_error.png"    # drawn by the why_ddpm notebook (report stage)
NOTEBOOK = "why_ddpm"


def _missing(name: str, stage: str) -> str:
    return f"_Not measured yet: `{name}` is written by `dvc repro papers/dit/dvc.yaml:{stage}`._"


def faithful_summary(faithful: dict) -> str:
    """One sentence from a faithful.json: every quantity within tolerance (and the worst difference per
    dtype), or the ones that differ; "" without rows."""
    rows = faithful.get("rows") or []
    if not rows:
        return ""
    official = faithful.get("official") or {}
    source = f"`{official.get('repository')}` at `{str(official.get('commit'))[:10]}`"
    bad = [f"{r['group']} / {r['quantity']} ({r['dtype']}: {r['max_abs_diff']:.3g} > {r['atol']:g})"
           for r in rows if not r["passed"]]
    if bad:
        return f"**Not faithful**: {len(bad)} of {len(rows)} quantities differ from {source}: " + "; ".join(bad) + "."
    worst = {}
    for r in rows:
        if r["dtype"] in (faithful.get("atol") or {}):
            worst[r["dtype"]] = max(worst.get(r["dtype"], 0.0), r["max_abs_diff"])
    return (f"All {len(rows)} compared quantities are within tolerance of {source}; the largest difference is "
            + ", ".join(f"{v:.2g} in {d}" for d, v in worst.items()) + ".")


def x0_summary(table) -> str:
    """The noisiest point of the x0-error table: each arm's error as a multiple of the reference arm's."""
    ref = next((c for c in table.columns if c.split(" ")[0] == REFERENCE), None)
    if ref is None or table.empty:
        return ""
    lam = table.index[0]
    others = [f"{c.split(' ')[0]} {table.loc[lam, c] / table.loc[lam, ref]:.2f}x" for c in table.columns if c != ref]
    return (f"At the noisiest point (log-SNR {lam:g}) the x0 error relative to {REFERENCE}'s: "
            + ", ".join(others) + ".") if others else ""


def gate_line(metrics: dict) -> str:
    """Whether the DDPM arm passes its quality gate, by the one rule, from its metrics.json row."""
    from common.report.notebooks import arm_gate

    row = next((r for r in metrics.get("rows") or [] if r.get("variant") == ARM), None)
    if row is None:
        return f"The DDPM arm `{ARM}` has no row in metrics.json yet."
    gate = arm_gate(row)
    return (f"The DDPM arm (`{ARM}`: eps-prediction with a learned variance, DiT's objective) "
            f"{'passes' if gate['passed'] else 'fails'} the quality gate ({gate['detail']}).")


def claim_line(gates) -> str:
    """The claim's text, verdict and reason, from `claim_gate_table`'s attrs."""
    if gates.empty:
        return f"_No claim `{CLAIM}` in metrics.json._"
    return f"{gates.attrs['claim']}: **{gates.attrs['verdict']}** ({gates.attrs['reason']})."


def section(metrics: dict, out_dir: Path) -> str:
    """The Markdown section, from `metrics` (the metrics.json document being written) and the files in the
    results folder `out_dir`."""
    from common.report import notebooks as nb

    out_dir = Path(out_dir)
    parts = [f"## {TITLE}", "", gate_line(metrics) + " Three pipeline outputs say why; nothing below was typed by hand.",
             ""]

    parts += [f"**1. Our DDPM is the official one, one step of each part** ([`{FAITHFUL}`]({FAITHFUL}), the "
              "`faithful` stage; `tests/test_dit_faithful.py` asserts the same comparison). On fixed tensors and a "
              "stub network: one training loss (MSE + VLB), the posterior, p_mean_variance, one ancestral and one "
              "DDIM step of the respaced sampling chain, in float64 and float32.", ""]
    faithful = nb.read_json(out_dir / FAITHFUL)
    if faithful.get("rows"):
        parts += [faithful_summary(faithful), "", nb.markdown_table(nb.faithful_table(faithful)), ""]
    else:
        parts += [_missing(FAITHFUL, "faithful"), ""]

    parts += [f"**2. Where the eps network's x0 estimate is worse** ([`{X0_ERROR}`]({X0_ERROR}), the `x0-error` "
              "stage; figure from the [`why_ddpm`](notebooks/why_ddpm.html) notebook). Held-out digits noised at "
              "each log-SNR (the same noise for every run), the model's x0 read through its parameterization as "
              "its sampler reads it (eps: x0 = (x_t - sigma eps) / alpha, which multiplies the eps error by "
              "sigma / alpha where noise dominates), true labels, no guidance; mean squared error per pixel, "
              "mean over each arm's seeds.", ""]
    x0 = nb.read_json(out_dir / X0_ERROR)
    table = nb.x0_error_table(x0)
    if not table.empty:
        runs = nb.x0_error_runs(x0)
        p = runs[0].get("protocol", {})
        seeds = "; ".join(f"{c.split(' ')[0]}: {', '.join(map(str, s))}" for c, s in table.attrs["seeds"].items())
        parts += [f"![x0 error vs log-SNR]({FIGURE})", "",
                  f"{p.get('dataset', '?')} {p.get('split', '?')}, {p.get('num', '?')} digits, "
                  f"{ {True: 'EMA', False: 'raw'}.get(p.get('ema'), '?')} weights; seeds {seeds}. DDPM arms are measured at the nearest step of their "
                  "chain.", "", nb.markdown_table(table, index=True), ""]
        summary = x0_summary(table)
        parts += [summary, ""] if summary else []
    else:
        parts += [_missing(X0_ERROR, "x0-error"), ""]

    gates = nb.claim_gate_table(metrics, CLAIM)
    parts += [f"**3. The gate, eps vs v on the same chain** (claim `{CLAIM}` in [`metrics.json`](metrics.json)).", ""]
    parts += [claim_line(gates), ""] + ([nb.markdown_table(gates), ""] if not gates.empty else [])
    return "\n".join(parts)
