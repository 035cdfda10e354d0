"""Stage: aggregate a paper's per-run evaluations into `papers/<p>/results/metrics.json`.

    python -m pipelines.results <paper> [--runs papers/<paper>/results/runs] [--out papers/<paper>/results/metrics.json]

Reads every `<runs>/<variant>/s<seed>/eval.json` (+ train.json) and writes one row per variant: metrics
averaged over seeds, `fid_std` = std over seeds (ddof=1; null with one seed), the seed list, and the
protocol (which must agree across seeds). Copies `<variant>_grid.png` from the first seed's grid.png
beside the output, takes TITLE / ARXIV from `papers.<paper>` and calls its `claims(rows, extra)` when
defined (extra = {"bench": papers/<p>/results/bench.json or None}). The result is schema-validated.
Paths written are relative to the current directory (the repo root under DVC). The per-run files are
read from their committed copies (`papers/<p>/results/runs/`, written by the `collect` stage), so this
stage runs on a fresh clone without the DVC cache and without training.

Beside metrics.json it writes `README.md` (GitHub shows it when the folder is opened): the same rows and
claims as tables, and the CPU time every variant cost (training and sampling, per seed and in total),
rendered from metrics.json only, so no number in it was typed by hand. A paper module may add sections with
`readme_sections(doc, out_dir) -> [markdown, ...]`, rendered from the document and the pipeline files in
the results folder (DiT's "Why the DDPM arm fails the gate").
"""
from __future__ import annotations

import importlib
import json
import os
import re
from pathlib import Path

import numpy as np

from common.errors import UserError
from common.io import check_writable, copy_atomic, read_json, write_atomic, write_json
from common.metrics.schema import RULE_TEXT, claim_specs, judge_all, validate_metrics

from ._cli import StageParser, friendly_errors, known_papers, paper_params

CALIBRATION = "data/featnet/calibration.json"  # noise floors and the video gate (the calibrate stage)

# averaged over seeds (eval.json first, then train.json)
MEAN_KEYS = ("fid", "kid", "precision", "recall", "class_consistency", "frame_fid", "temporal_consistency",
             "sample_s_per_img", "sample_seconds", "train_img_per_s", "train_seconds")
# also kept seed by seed (`<key>_per_seed`): the verdict rule compares arms on these
PER_SEED_KEYS = ("fid", "kid", "precision", "recall", "class_consistency", "frame_fid", "temporal_consistency")
# must agree across seeds; taken from the first seed
PROTOCOL_KEYS = ("fid_features", "featnet", "fid_samples", "sampler", "sample_steps", "cfg_scale", "ema", "reference")
TRAIN_KEYS = ("params", "gflops", "train_steps")


class ResultsError(UserError, RuntimeError):
    """Missing or inconsistent run results; the message names the run or key."""


def _load(path: Path) -> dict:
    return read_json(path, fix="delete it and re-run the stage that writes it") if path.is_file() else {}


def _rel(p: Path) -> str:
    """A path relative to the current directory, with forward slashes (as metrics.json wants)."""
    return Path(os.path.relpath(Path(p).resolve(), Path.cwd().resolve())).as_posix()


def collect_runs(runs_dir: Path) -> dict[str, list[tuple[int, dict, dict, Path]]]:
    """{variant: [(seed, eval, train, run_dir), ...]} for every `<variant>/s<seed>/eval.json`, seeds sorted."""
    found: dict[str, list] = {}
    for ev in sorted(runs_dir.glob("*/s*/eval.json")):
        m = re.fullmatch(r"s(\d+)", ev.parent.name)
        if not m:
            continue
        run = ev.parent
        found.setdefault(run.parent.name, []).append((int(m.group(1)), _load(ev), _load(run / "train.json"), run))
    for v in found.values():
        v.sort(key=lambda t: t[0])
    return found


def _num(v):
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) else None


def aggregate_variant(variant: str, seeds: list[tuple[int, dict, dict, Path]]) -> dict:
    """One metrics.json row from the seeds of one variant."""
    row: dict = {"variant": variant}
    merged = [{**tr, **ev} for _, ev, tr, _ in seeds]            # eval.json wins over train.json
    for m in merged:  # wall time of the sample stage (num_samples images or videos)
        if _num(m.get("sample_s_per_img")) is not None and _num(m.get("num_samples")) is not None:
            m["sample_seconds"] = m["sample_s_per_img"] * m["num_samples"]
    for k in PROTOCOL_KEYS:
        vals = [m.get(k) for m in merged]
        if len({json.dumps(v) for v in vals}) > 1:
            runs = ", ".join(str(s[3]) for s in seeds)
            raise ResultsError(f"variant '{variant}': protocol key '{k}' differs across seeds ({vals}) in {runs}")
        row[k] = vals[0]
    for k in MEAN_KEYS:
        vals = [_num(m.get(k)) for m in merged]
        if any(v is not None for v in vals):
            if any(v is None for v in vals):
                raise ResultsError(f"variant '{variant}': '{k}' is missing in some seeds")
            row[k] = float(np.mean(vals))
            if k in PER_SEED_KEYS:
                row[f"{k}_per_seed"] = [float(v) for v in vals]
    fids = [m["fid"] for m in merged if _num(m.get("fid")) is not None]
    if len(fids) != len(merged):
        missing = [str(s[3]) for s, m in zip(seeds, merged) if _num(m.get("fid")) is None]
        raise ResultsError(f"variant '{variant}': no finite 'fid' in eval.json of {', '.join(missing)}")
    row["fid_std"] = float(np.std(fids, ddof=1)) if len(fids) > 1 else None
    kids = [m.get("kid") for m in merged if _num(m.get("kid")) is not None]
    row["kid_std"] = float(np.std(kids, ddof=1)) if len(kids) > 1 else None
    for k in TRAIN_KEYS:
        row[k] = merged[0].get(k)
    row["seeds"] = [s[0] for s in seeds]
    row["dataset"] = merged[0].get("dataset")
    row["preset"] = merged[0].get("preset")
    return row


def build(paper: str, runs_dir: Path, out: Path, notebooks: list[str] | None = None, params: str | None = None,
          calibration: str | None = CALIBRATION) -> dict:
    runs = collect_runs(runs_dir)
    if not runs:
        raise ResultsError(f"no '<variant>/s<seed>/eval.json' under '{runs_dir}'. Fix: run the evaluate and collect stages")
    out_dir = out.parent
    rows, thumbs = [], {}
    for variant, seeds in runs.items():
        row = aggregate_variant(variant, seeds)
        grid = seeds[0][3] / "grid.png"
        if grid.is_file():
            thumb = out_dir / "thumbs" / f"{variant}.png"
            thumbs[thumb] = grid
            row["thumbnail"] = _rel(thumb)
        rows.append(row)
    presets = {r["preset"] for r in rows}
    if len(presets) > 1:
        raise ResultsError(f"paper '{paper}': variants disagree on 'preset' ({sorted(map(str, presets))})")
    # the paper's dataset is its first variant's; a variant on another dataset (e.g. video) keeps its own
    dataset, preset = rows[0]["dataset"], rows[0]["preset"]
    for r in rows:
        r.pop("preset")
        if r["dataset"] == dataset:
            r.pop("dataset")

    try:
        mod = importlib.import_module(f"papers.{paper}")
    except ImportError as e:
        raise ResultsError(f"paper package 'papers.{paper}' cannot be imported ({e})") from e
    for attr in ("TITLE", "ARXIV"):
        if not isinstance(getattr(mod, attr, None), str):
            raise ResultsError(f"papers.{paper} must define {attr} as a string")
    bench_path = out_dir / "bench.json"
    extra = {"bench": _load(bench_path) or None}
    # the claims declared in the paper's params, judged by the one rule; then any the module adds (benchmarks)
    specs = claim_specs(paper_params(paper, params)) if params or paper in known_papers() else []
    calib = _load(Path(calibration)) if calibration else {}
    claims = judge_all(specs, rows, calib or None)
    claims += list(mod.claims(rows, extra) or []) if callable(getattr(mod, "claims", None)) else []

    nb_dir = out_dir / "notebooks"
    names = notebooks if notebooks is not None else sorted(p.stem for p in nb_dir.glob("*.html"))
    doc = {
        "paper": paper, "title": mod.TITLE, "arxiv": mod.ARXIV, "preset": preset or "unknown",
        "dataset": dataset or "unknown", "toy_scale": preset != "paper",
        "rows": rows, "claims": claims, "rule": RULE_TEXT,
        "notebooks": {n: _rel(nb_dir / f"{n}.html") for n in names},
    }
    problems = validate_metrics(doc)
    if problems:
        raise ResultsError(f"'{out}' would not validate: " + "; ".join(problems))
    readme = summary_markdown(doc)
    sections = getattr(mod, "readme_sections", None)  # a paper's own sections, from its pipeline files
    if callable(sections):
        readme += "".join(f"\n{s.strip()}\n" for s in sections(doc, out_dir) or [])
    sweep = out_dir / "sweep.md"  # the reference-recipe sweep's table (pipelines.sweep), shown where it was run
    if sweep.is_file():
        table = sweep.read_text(encoding="utf-8").split("\n", 1)[1].strip()
        readme += f"\n## The reference recipe sweep ([`sweep.md`](sweep.md))\n\n{table}\n"
    check_writable(out, out_dir / "README.md", *thumbs)
    for thumb, grid in thumbs.items():  # written only once the document validates
        copy_atomic(grid, thumb)
    write_json(out, doc)
    write_atomic(out_dir / "README.md", readme)
    return doc


def _fmt(v, digits: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def summary_markdown(doc: dict) -> str:
    """metrics.json as Markdown tables (variants, CPU time, claims) for `<results>/README.md`."""
    scale = ("toy scale: FIDs are in the `{f}` feature space of a small classifier, never comparable with the "
             "papers' ImageNet FIDs" if doc.get("toy_scale") else "published configuration (`{f}` features)")
    feats = sorted({str(r.get("fid_features")) for r in doc["rows"]})
    out = [f"# {doc['title']}: results of the last run", "",
           f"Generated by the `results` stage from [`metrics.json`](metrics.json); do not edit. Dataset "
           f"`{doc['dataset']}` (rows may name their own), preset `{doc['preset']}`, "
           + scale.format(f="`, `".join(feats)) + ". Mean ± std over seeds; n = samples in the FID.", "",
           "| variant | dataset | FID | class-consistency | precision | recall | params | GFLOPs | train img/s "
           "| sampling s/img | steps | seeds | sampler |", "|---" * 13 + "|"]
    for r in doc["rows"]:
        fid = _fmt(r.get("fid")) + (f" ± {_fmt(r.get('fid_std'))}" if r.get("fid_std") is not None else "")
        extra = f"; frame-FID {_fmt(r['frame_fid'])}" if r.get("frame_fid") is not None else ""
        ema = {True: "EMA", False: "raw"}.get(r.get("ema"), "?")
        out.append(f"| `{r['variant']}` | {r.get('dataset', doc['dataset'])} | {fid} (n={_fmt(r.get('fid_samples'))}{extra}) "
                   f"| {_fmt(r.get('class_consistency'))} | {_fmt(r.get('precision'))} | {_fmt(r.get('recall'))} "
                   f"| {_fmt(r.get('params'))} | {_fmt(r.get('gflops'), 3)} | {_fmt(r.get('train_img_per_s'), 0)} "
                   f"| {_fmt(r.get('sample_s_per_img'), 3)} | {_fmt(r.get('train_steps'))} "
                   f"| {','.join(map(str, r.get('seeds') or []))} "
                   f"| {r.get('sampler')} {r.get('sample_steps')}, cfg {r.get('cfg_scale')}, {ema} |")
    out += ["", "CPU time of each variant (wall-clock minutes on the machine that ran it; evaluation adds about "
            "10 s a run):", "", "| variant | seeds | train min / seed | sampling min / seed | total min |",
            "|---|---|---|---|---|"]
    total = 0.0
    for r in doc["rows"]:
        n = len(r.get("seeds") or [1])
        tr, sa = (r.get("train_seconds") or 0) / 60, (r.get("sample_seconds") or 0) / 60
        total += n * (tr + sa)
        out.append(f"| `{r['variant']}` | {n} | {tr:.1f} | {sa:.1f} | {n * (tr + sa):.1f} |")
    out += [f"| all | | | | **{total:.1f}** |", ""]
    if doc.get("claims"):
        out += ["| claim | paper | measured | verdict | why | rule | gate |", "|---|---|---|---|---|---|---|"]
        out += [f"| {c['claim']} | {c['paper']} | {c['measured']} | **{c['verdict']}** | {c.get('reason', '')} "
                f"| {c.get('rule', '')} | {(c.get('gate') or {}).get('detail', '')} |" for c in doc["claims"]]
        out.append("")
    if doc.get("rule"):
        out += [f"The verdict rule: {doc['rule']}", ""]
    links = [f"[{n}](notebooks/{n}.html)" for n in doc.get("notebooks", {})]
    if links:
        out += ["Executed notebooks: " + ", ".join(links) + "; figures in [`figures/`](figures/).", ""]
    return "\n".join(out)


@friendly_errors
def main(argv: list[str] | None = None) -> dict:
    ap = StageParser("results", __doc__)
    ap.add_argument("paper")
    ap.add_argument("--runs", help="per-run files (default papers/<paper>/results/runs)")
    ap.add_argument("--out", help="output file (default papers/<paper>/results/metrics.json)")
    ap.add_argument("--params", help="params file with the `claims:` section (default papers/<paper>/params.yaml)")
    ap.add_argument("--calibration", default=CALIBRATION, help="real-vs-real noise floors and the video gate")
    ap.add_argument("--notebooks", nargs="*", default=None,
                    help="notebook names to link (<out dir>/notebooks/<name>.html); default: the existing ones")
    args = ap.parse_args(argv)
    runs = Path(args.runs or f"papers/{args.paper}/results/runs")
    out = Path(args.out or f"papers/{args.paper}/results/metrics.json")
    doc = build(args.paper, runs, out, args.notebooks, args.params, args.calibration)
    for r in doc["rows"]:
        std = "" if r["fid_std"] is None else f" +- {r['fid_std']:.3f}"
        print(f"{args.paper}/{r['variant']}: FID {r['fid']:.3f}{std} ({r['fid_features']}, n={r['fid_samples']}, "
              f"seeds {r['seeds']})")
    print(f"wrote {out} ({len(doc['rows'])} rows, {len(doc['claims'])} claims)")
    return doc


if __name__ == "__main__":
    main()
