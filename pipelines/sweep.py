"""Stage: the table of a recipe sweep run as DVC experiments (one row per experiment).

    python -m pipelines.sweep --out papers/<p>/results/sweep.json [--from exp_show.json] [--params FILE]

A sweep is a `<dir>/sweep/dvc.yaml` whose runs are queued as DVC experiments, one factor changed each
(`dvc exp run --queue ... -S '<dir>/sweep/params.yaml:train.lr=1e-3'`). `dvc exp show` is what knows
them, not a DVC dependency, so this is a command to run by hand (`make sweep-table`), not a stage of a
pipeline. It reads `dvc exp show --json -A --no-pager` (run here, or a saved copy given with `--from`),
keeps the experiments whose params include the sweep's params file (`--params`; by default the one
`.../sweep/params.yaml` the experiments name) and writes:

- `sweep.json`: the protocol (dataset, feature space, sample count, gate; `note` says it in one line, as
  sweep.md and the leaderboard show it) and one row per experiment:
  its name and state, `changed` (the params that differ from the params file as it is in the working
  tree, i.e. the recipe at HEAD unless edited), seed, steps, FID, class-consistency, precision,
  recall, training time and throughput, parameters, GFLOPs, `gate_passed` and, when train.json has
  it, the machine's matmul rate. Queued, running and failed experiments are rows too, with null metrics.
- `sweep.md` beside it: the same as a Markdown table, the base experiment first, then one line saying
  the gate and the protocol. Numbers are toy scale when the recipe's preset is not `paper`.

The experiment's metrics are the `eval.json` and `train.json` that sit under the sweep's directory (the
sweep's `collect` stage commits them into each experiment). A missing or unparsable input, or a dvc
that cannot be run, is one line on stderr and exit status 2; nothing is written then.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

from common.config import load_params
from common.errors import UserError
from common.io import check_writable, write_atomic, write_json
from common.metrics import schema

from ._cli import (
    StageParser,
    flatten,  # {"train": {"lr": 1e-3}} -> {"train.lr": 1e-3}
    friendly_errors,
)

# The image gate of the verdict rule (DESIGN.md: Verdicts), from the schema once it defines it.
GATE_METRIC, GATE_MIN = "class_consistency", getattr(schema, "IMAGE_GATE", 0.8)
SWEEP_PARAMS = re.compile(r"(^|/)sweep/params\.yaml$")
EVAL_KEYS = ("fid", "fid_samples", "class_consistency", "precision", "recall", "kid")
TRAIN_KEYS = ("train_seconds", "train_img_per_s", "params", "gflops")
IGNORED = ("variants",)  # sections of the params file that are not a run's settings


class SweepError(UserError, RuntimeError):
    """An experiment listing that cannot be read or understood; the message names the file or command."""


# ---- reading `dvc exp show --json` ----------------------------------------------------------------------
def load_exp_show(path: Path | None) -> list:
    """The parsed output of `dvc exp show --json -A --no-pager`: from `path` if given, else from dvc."""
    if path is not None:
        try:
            text, source = Path(path).read_text(encoding="utf-8"), f"'{path}'"
        except FileNotFoundError:
            raise SweepError(f"--from '{path}' not found") from None
        except (OSError, UnicodeDecodeError) as e:
            raise SweepError(f"--from '{path}' cannot be read ({getattr(e, 'strerror', None) or e})") from e
    else:
        text, source = run_dvc_exp_show(), "the output of `dvc exp show --json`"
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise SweepError(f"{source} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from e
    if not isinstance(doc, list):
        raise SweepError(f"{source} must be the JSON list that `dvc exp show --json` prints, "
                         f"got a {type(doc).__name__}")
    return doc


def run_dvc_exp_show() -> str:
    """stdout of `dvc exp show --json -A --no-pager` in the current directory (read-only: takes no lock)."""
    dvc = shutil.which("dvc") or str(Path(sys.executable).with_name("dvc"))
    cmd = [dvc, "exp", "show", "--json", "-A", "--no-pager"]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        raise SweepError(f"cannot run `dvc exp show` ({e.strerror or e}); install dvc or pass a saved "
                         f"`dvc exp show --json` output with --from FILE") from e
    if res.returncode != 0:
        last = next((ln.strip() for ln in reversed(res.stderr.splitlines()) if ln.strip()), "no message")
        raise SweepError(f"`dvc exp show --json` failed with status {res.returncode}: {last}")
    return res.stdout


def experiments(doc: list):
    """(baseline rev, executor, rev entry) of every experiment in the listing, at any depth. Commits and
    the workspace are not experiments: only what sits under an "experiments" key is."""
    def walk(entries, baseline):
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, dict):
                continue
            for exp in entry.get("experiments") or []:
                if not isinstance(exp, dict):
                    continue
                for rev in exp.get("revs") or []:
                    if isinstance(rev, dict):
                        yield baseline or entry.get("rev"), exp.get("executor"), {"name": exp.get("name"), **rev}
                        yield from walk([rev], baseline or entry.get("rev"))
    yield from walk(doc, None)


def _dict(v) -> dict:
    return v if isinstance(v, dict) else {}


def _data(node) -> dict:
    """The "data" of a dvc {"data": ...} / {"error": ...} node, or {} when it holds an error or nothing."""
    return node["data"] if isinstance(node, dict) and isinstance(node.get("data"), dict) else {}


def sweep_params_file(doc: list) -> str:
    """The one `.../sweep/params.yaml` that the experiments of the listing use."""
    found = sorted({f for _, _, rev in experiments(doc) for f in _dict(_dict(rev.get("data")).get("params"))
                    if SWEEP_PARAMS.search(f)})
    if len(found) != 1:
        what = f"several sweep params files ({', '.join(found)})" if found else "no sweep params file"
        raise SweepError(f"the experiments use {what} (<dir>/sweep/params.yaml); name one with --params")
    return found[0]


# ---- rows ----------------------------------------------------------------------------------------------------
def _number(v):
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def state_of(executor, rev: dict, has_eval: bool) -> str:
    """dvc's own state (queued, running, success, failed) when it still knows it; else what the data says."""
    state = executor.get("state") if isinstance(executor, dict) else None
    if state:
        return str(state)
    if rev.get("error"):
        return "failed"
    return "success" if has_eval else "no metrics"


def changed_params(exp: dict, base: dict) -> dict:
    """The settings of `exp` (flattened) that differ from `base` or that `base` does not have. dvc lists only
    the keys its stages track, so a key absent from `exp` is not a change."""
    return {k: v for k, v in sorted(exp.items()) if not k.startswith(IGNORED) and base.get(k, ()) != v}


def row_of(baseline, executor, rev: dict, params_file: str, base: dict) -> dict:
    """One experiment's row of sweep.json."""
    data = _dict(rev.get("data"))
    run_dir = PurePosixPath(params_file).parent
    metrics = {PurePosixPath(f).name: _data(m) for f, m in _dict(data.get("metrics")).items()
               if PurePosixPath(f).parent.is_relative_to(run_dir)}
    ev, tr = metrics.get("eval.json", {}), metrics.get("train.json", {})
    params = flatten(_data(_dict(data.get("params")).get(params_file)))
    changed = changed_params(params, base)
    seed = next((s for s in (params.get("seed"), ev.get("sample_seed"), tr.get("seed")) if _number(s) is not None), None)
    if seed is not None and "seed" not in params and base.get("seed") not in (None, seed):
        changed["seed"] = seed  # dvc does not list an untracked key (the seed is a templated value)
    cc = _number(ev.get(GATE_METRIC))
    machine = tr.get("machine") if isinstance(tr.get("machine"), dict) else {}
    error = rev.get("error")
    return {"name": rev.get("name") or str(rev.get("rev", ""))[:7], "rev": rev.get("rev"), "baseline": baseline,
            "state": state_of(executor, rev, bool(ev)), "changed": changed, "seed": seed,
            "steps": _number(params.get("train.steps")) or _number(tr.get("train_steps")),
            **{k: _number(ev.get(k)) for k in EVAL_KEYS}, **{k: _number(tr.get(k)) for k in TRAIN_KEYS},
            "fid_features": ev.get("fid_features"),
            "featnet": ev.get("featnet"),  # the feature net's id (space@sha256[:12]): FIDs compare within one
            "gate_passed": None if cc is None else cc >= GATE_MIN,
            "matmul_gflops_per_s": _number(tr.get("matmul_gflops_per_s", machine.get("matmul_gflops_per_s"))),
            "error": (error.get("msg") if isinstance(error, dict) else str(error)) if error else None}


SAME_TEXT = "Identical to the base in every sample metric (the change had no effect on the samples)"
SAME_KEYS = ("fid", "class_consistency", "precision", "recall", "seed")


def build(doc: list, params_file: str, base_params: dict, base_name: str = "base") -> dict:
    """sweep.json: the protocol and the rows, the base experiment first, then by changed key and name."""
    base = flatten(base_params)
    rows = [row_of(b, x, rev, params_file, base) for b, x, rev in experiments(doc)
            if params_file in _dict(_dict(rev.get("data")).get("params"))]
    if not rows:
        raise SweepError(f"no experiment in the listing uses '{params_file}'")
    rows.sort(key=lambda r: (r["name"] != base_name, sorted(r["changed"]), r["name"]))
    first = rows[0] if rows[0]["name"] == base_name else None
    for r in rows:  # a change that left every sample metric as it was measured nothing: say so
        r["same_as_base"] = bool(first and r is not first and r["fid"] is not None
                                 and all(r[k] == first[k] for k in SAME_KEYS))
    features = sorted({str(r.get("featnet") or r["fid_features"]) for r in rows if r["fid_features"]})
    samples = sorted({r["fid_samples"] for r in rows if r["fid_samples"] is not None})
    out = {"params_file": params_file, "base": base_name, "preset": base_params.get("preset"),
           "toy_scale": base_params.get("preset") != "paper",
           "dataset": (base_params.get("data") or {}).get("name"),
           "fid_features": " / ".join(features) or None,
           "fid_samples": samples[0] if len(samples) == 1 else samples or None,
           "gate": {"metric": GATE_METRIC, "min": GATE_MIN}, "rows": rows}
    same = [r["name"] for r in rows if r["same_as_base"]]
    return {**out, "note": protocol_line(out) + (f" {SAME_TEXT}: {', '.join(same)}." if same else "")}


# ---- sweep.md -------------------------------------------------------------------------------------------------
def _fmt(v, digits: int) -> str:
    return "–" if _number(v) is None else f"{v:.{digits}f}"


def _value(v) -> str:
    """A params value as it is written in YAML/JSON (false, not Python's False)."""
    return v if isinstance(v, str) else json.dumps(v)


def _si(v) -> str:
    if _number(v) is None:
        return "–"
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= scale:
            return f"{v / scale:.3g}{unit}"
    return f"{v:g}"


def protocol_line(sweep: dict) -> str:
    """The one line under the table: the gate and what the numbers are (and are not)."""
    n = sweep["fid_samples"]
    n = "?" if n is None else (f"{n:,}" if isinstance(n, int) else " / ".join(f"{x:,}" for x in n))
    g = sweep["gate"]
    toy = ": toy scale, never comparable with ImageNet FIDs" if sweep["toy_scale"] else ""
    return (f"Gate: {g['metric'].replace('_', '-')} >= {g['min']} (share of samples the classifier labels as "
            f"the asked class). Dataset {sweep['dataset']}, FID in the {sweep['fid_features'] or '?'} feature "
            f"space over {n} samples per experiment, one seed each{toy}.")


def markdown(sweep: dict) -> str:
    """sweep.md: a title, the table (base first) and the protocol line."""
    head = ["experiment", "changed", "state", "seed", "steps", "FID", "class-cons.", "gate", "precision",
            "recall", "train s", "img/s", "params", "GFLOPs"]
    lines = [f"# Recipe sweep: `{sweep['params_file']}`", "",
             "Generated by `python -m pipelines.sweep` from `dvc exp show`; do not edit.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sweep["rows"]:
        changed = ", ".join(f"`{k}={_value(v)}`" for k, v in r["changed"].items()) or \
            ("(the recipe)" if r["name"] == sweep["base"] else "(none that dvc lists yet)")
        gate = {True: "pass", False: "fail", None: "–"}[r["gate_passed"]]
        cells = [r["name"], changed, r["state"], "–" if r["seed"] is None else str(r["seed"]), _si(r["steps"]),
                 _fmt(r["fid"], 2), _fmt(r["class_consistency"], 3), gate, _fmt(r["precision"], 3),
                 _fmt(r["recall"], 3), _fmt(r["train_seconds"], 0), _fmt(r["train_img_per_s"], 1),
                 _si(r["params"]), "–" if _number(r["gflops"]) is None else f"{r['gflops']:.3g}"]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    same = [r["name"] for r in sweep["rows"] if r.get("same_as_base")]
    notes = [f"{SAME_TEXT}: {', '.join(same)}.", ""] if same else []
    return "\n".join(lines + ["", protocol_line(sweep), ""] + notes)


@friendly_errors
def main(argv=None) -> dict:
    ap = StageParser("sweep", __doc__)
    ap.add_argument("--out", required=True, help="sweep.json to write (sweep.md is written beside it)")
    ap.add_argument("--from", dest="source", default=None, metavar="FILE",
                    help="a saved `dvc exp show --json -A` output (default: run dvc here)")
    ap.add_argument("--params", default=None, help="the sweep's params file, as dvc names it "
                                                   "(default: the one .../sweep/params.yaml the experiments use)")
    ap.add_argument("--base", default="base", help="the experiment that runs the recipe unchanged (listed first)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    md = out.with_suffix(".md")
    check_writable(out, md)
    doc = load_exp_show(Path(args.source) if args.source else None)
    params_file = args.params or sweep_params_file(doc)
    sweep = build(doc, params_file, load_params(params_file), args.base)
    write_json(out, sweep)
    write_atomic(md, markdown(sweep))
    done = sum(r["fid"] is not None for r in sweep["rows"])
    print(f"[sweep] {len(sweep['rows'])} experiments ({done} with metrics) -> {out}, {md}")
    return sweep


if __name__ == "__main__":
    main()
