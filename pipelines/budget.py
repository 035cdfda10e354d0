"""Stage: the CPU budget of one `dvc repro` target (`make repro`): every stage it runs, the time the pipeline
recorded for each, where the time goes (by stage kind and by arm), and the wall-clock on a few cores.

    python -m pipelines.budget papers/<p>/dvc.yaml --out papers/<p>/results/budget.json [--cores 2] [--target-minutes 180]

Which stages: DVC's own plan of `dvc repro <target>` (the target file's stages and everything upstream of
them, in the order DVC runs them), from a read-only query of its stage graph: nothing is run or locked.
What each cost, as the pipeline recorded it in the run's committed files (the `collect` stage's copy):
- train: train.json `train_seconds` (the training loop), threads from run.json `train.threads`;
- sample: samples.json `sample_s_per_img` x `num_samples` (the sampling loop; its threads are not recorded);
- evaluate: eval.json `eval_seconds` and `eval_threads` (files written before they existed lack them);
- any other stage: a JSON output of its own holding `seconds` or `train_seconds` (with `threads`), else
  "not recorded" (copies, tables, notebooks: never timed).
A run of the target's `vars` without committed files is "not run". Its stages get an estimate only from a
recorded arm with the same model name, data, training length and sampling (same preset), labelled with
that arm and the model or diffusion settings that differ; otherwise none.

CPU minutes = recorded wall minutes x threads; a thread count of 0 or none (torch's default: every core) is
counted as `--cores`, and said so. Wall-clock on `--cores`: DVC runs one stage at a time, each taking its
CPU minutes / min(threads, cores): perfect thread scaling, with the recorded times taken as if each run had
had such a machine to itself. A run recorded beside another training took longer than it would alone:
the spread over an arm's seeds shows it.

Writes `<out>` (JSON) and the same budget as Markdown tables beside it (`<out>` with `.md`), each whole or
not at all. Its inputs are the dvc.yaml files, the committed per-run files and the params (for the
estimates), never the code of the stages it accounts for.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from common.errors import UserError, short_reason
from common.io import InputError, check_writable, read_json, write_atomic, write_json

from ._cli import StageParser, flatten, friendly_errors
from .share import MARK as SHARE_MARK

COMMITTED = "collect"                      # the per-run stage whose output is the run's committed files
PER_RUN = ("train", "sample", "evaluate")  # the per-run stages whose duration the run's files record
DURATION_KEYS = ("seconds", "train_seconds")  # what another stage's JSON output may record
# what sets a run's cost apart from its architecture's details: an estimate needs them all equal
COST_KEYS = ("preset", "data.name", "data.frames", "model.name", "train.steps", "train.batch_size",
             "sample.num_samples", "sample.steps", "sample.sampler")
SETTINGS = ("model", "diffusion")          # listed in an estimate's label where they differ
RUN_SECTIONS = ("data", "model", "diffusion", "train", "sample")
ONE_OFF = "one-off"                        # the group of the stages that belong to no arm


class BudgetError(UserError, RuntimeError):
    """A target DVC cannot plan or a bad option; the message names it."""


@dataclass
class Step:
    """One stage of the plan, as DVC declares it."""

    stage: str                      # DVC's address: `papers/<p>/dvc.yaml:train@<key>`, `featurenet`
    kind: str                       # the stage's name before `@`: train, sample, collect, results, ...
    pipeline: str                   # the folder of its dvc.yaml ("." at the root)
    key: str | None = None          # its foreach key
    variant: str | None = None      # a per-run stage: the `variant` and `seed` of its foreach item
    seed: int | None = None
    outs: list[str] = field(default_factory=list)  # repo-relative

    @property
    def arm(self) -> str | None:
        return f"{Path(self.pipeline).name or 'root'}/{self.variant}" if self.variant is not None else None


@dataclass
class Timing:
    status: str                     # recorded | not recorded | not run
    seconds: float | None = None
    threads: int | None = None
    source: str = ""


# ---- the plan: DVC's view --------------------------------------------------------------------------------
def plan(target: str) -> tuple[Path, list[Step]]:
    """(repo root, the stages `dvc repro <target>` runs in its order): DVC's own planner over its stage graph,
    a read-only query of the repository around the current directory."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo
    from dvc.repo.reproduce import collect_stages, get_active_graph, plan_repro

    try:
        with Repo() as repo:
            stages = plan_repro(get_active_graph(repo.index.graph), collect_stages(repo, [target]))
            root, resolvers = Path(repo.root_dir), {}
            return root, [_step(s, root, resolvers) for s in stages]
    except DvcException as e:
        raise BudgetError(f"target '{target}': DVC cannot plan it ({short_reason(e)})") from e


def _step(stage, root: Path, resolvers: dict) -> Step:
    kind, _, key = stage.name.partition("@")
    if key and stage.path not in resolvers:  # one parse of each dvc.yaml (`stage.dvcfile` is made anew)
        resolvers[stage.path] = stage.dvcfile.resolver
    item = _foreach_item(resolvers[stage.path], kind, key) if key else {}
    seed = item.get("seed")
    return Step(stage=stage.addressing, kind=kind, pipeline=Path(stage.path_in_repo).parent.as_posix(),
                key=key or None, variant=item.get("variant"), seed=seed if isinstance(seed, int) else None,
                outs=[_rel(o, root) for o in stage.outs])


def _rel(entry, root: Path) -> str:
    """An output's path relative to the repository root."""
    return Path(entry.fs_path).relative_to(root).as_posix()


def _foreach_item(resolver, name: str, key: str) -> dict:
    """The `foreach` item stage `name@key` was generated from (`{variant, seed, ...}`), {} if DVC does not say."""
    definition = resolver.definitions.get(name)
    items = getattr(definition, "resolved_iterable", None)  # DVC's context mapping of the foreach data
    item = items.get(key) if isinstance(items, Mapping) else None
    item = getattr(item, "value", item)                     # its plain-Python value
    return item if isinstance(item, dict) else {}


# ---- what each stage cost, as recorded ---------------------------------------------------------------------
def _num(v) -> float | None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return float(v) if ok else None


def _read(path: Path) -> dict:
    return read_json(path) if path.is_file() else {}


def _timing(seconds, threads, source: str) -> Timing:
    seconds = _num(seconds)
    if seconds is None:
        return Timing("not recorded", source=source)
    threads = _num(threads)
    return Timing("recorded", seconds, int(threads) if threads and threads >= 1 else None, source)


def per_run_timing(kind: str, run: Path, label: str) -> Timing:
    """The recorded duration of a per-run stage from the run's committed files (`label`: the run's path)."""
    if kind == "train":
        threads = (_read(run / "run.json").get("train") or {}).get("threads")
        return _timing(_read(run / "train.json").get("train_seconds"), threads,
                       f"{label}/train.json: train_seconds")
    if kind == "sample":
        doc = _read(run / "samples.json")
        per, n = _num(doc.get("sample_s_per_img")), _num(doc.get("num_samples"))
        return _timing(None if per is None or n is None else per * n, None,
                       f"{label}/samples.json: sample_s_per_img x num_samples")
    if kind == "evaluate":
        doc = _read(run / "eval.json")
        return _timing(doc.get("eval_seconds"), doc.get("eval_threads"), f"{label}/eval.json: eval_seconds")
    return Timing("not recorded")


def one_off_timing(step: Step, root: Path) -> Timing:
    """A stage outside the runs: the first of its JSON outputs that records a duration, else not recorded."""
    for out in step.outs:
        path = root / out
        if out.endswith(".json") and path.is_file():
            try:
                doc = read_json(path)
            except InputError:  # not a JSON object: it records nothing
                continue
            key = next((k for k in DURATION_KEYS if _num(doc.get(k)) is not None), None)
            if key:
                return _timing(doc[key], doc.get("threads"), f"{out}: {key}")
    return Timing("not recorded")


def shared_as(steps: list[Step], root: Path) -> dict[str, list[str]]:
    """{arm: where a stage outside the runs shared its committed files to}, read from the share marks
    (`<out>/s<seed>/SHARED_FROM`, naming the source run): another pipeline's run reused as an arm."""
    dirs = run_dirs(steps)
    arm_of = {dirs[(s.pipeline, s.key)]: s.arm for s in steps if s.arm and (s.pipeline, s.key) in dirs}
    out: dict[str, list[str]] = {}
    for s in steps:
        for o in s.outs if s.variant is None else []:
            for mark in sorted((root / o).glob(f"*/{SHARE_MARK}")):
                arm = arm_of.get(mark.read_text(encoding="utf-8").strip())
                if arm and o not in out.get(arm, []):
                    out.setdefault(arm, []).append(o)
    return out


def run_dirs(steps: list[Step]) -> dict[tuple[str, str], str]:
    """{(pipeline, foreach key): the run's committed files}, from each `collect` stage's one output."""
    return {(s.pipeline, s.key): s.outs[0] for s in steps if s.kind == COMMITTED and s.key and len(s.outs) == 1}


def timings(steps: list[Step], root: Path) -> list[Timing]:
    """One Timing per step: a per-run stage whose run has no committed files is "not run"."""
    dirs, out = run_dirs(steps), []
    for s in steps:
        if s.variant is None:
            out.append(one_off_timing(s, root))
            continue
        run = dirs.get((s.pipeline, s.key))
        if run is None or not (root / run / "train.json").is_file():
            out.append(Timing("not run"))
        else:
            out.append(per_run_timing(s.kind, root / run, run))
    return out


# ---- estimates for runs not yet recorded ---------------------------------------------------------------------
def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def variant_config(params: dict, variant: str) -> dict | None:
    """A variant's run sections as its params file sets them (base <- preset <- variant <- the variant's
    preset overrides, the order of the run config); None if the file does not declare the variant."""
    variants = params.get("variants")
    if not isinstance(variants, dict) or variant not in variants:
        return None
    v = variants[variant] or {}  # `name: {}` or a bare `name:`
    if not isinstance(v, dict):
        return None
    preset = params.get("preset", "tiny")
    cfg = {k: params[k] for k in RUN_SECTIONS if isinstance(params.get(k), dict)}
    cfg = _merge(cfg, _mapping(_mapping(params.get("presets")).get(preset)))
    cfg = _merge(cfg, {k: v[k] for k in RUN_SECTIONS if isinstance(v.get(k), dict)})
    cfg = _merge(cfg, _mapping(_mapping(v.get("preset_overrides")).get(preset)))
    return {**cfg, "preset": preset}


def _mapping(v) -> dict:
    return v if isinstance(v, dict) else {}


def _get(cfg: dict, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def setting_diff(a: dict, b: dict) -> list[str]:
    """The dotted model / diffusion keys on which two variant configs differ."""
    fa = flatten({s: a.get(s) or {} for s in SETTINGS})
    fb = flatten({s: b.get(s) or {} for s in SETTINGS})
    return sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))


def load_params(root: Path, pipeline: str) -> dict:
    """A pipeline's params.yaml beside its dvc.yaml ({} if absent or unreadable: no estimates then)."""
    path = root / pipeline / "params.yaml"
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (yaml.YAMLError, UnicodeDecodeError):
        return {}
    return doc if isinstance(doc, dict) else {}


def pick_donor(arm_cfg: dict, recorded: dict[str, dict]) -> tuple[str, list[str]] | None:
    """(recorded arm, differing settings) with the same cost keys as `arm_cfg`: the fewest differences
    first, then the first in the plan; None without one."""
    want = [_get(arm_cfg, k) for k in COST_KEYS]
    best = None
    for arm, cfg in recorded.items():
        if [_get(cfg, k) for k in COST_KEYS] == want:
            diff = setting_diff(arm_cfg, cfg)
            if best is None or len(diff) < len(best[1]):
                best = (arm, diff)
    return best


# ---- the budget -------------------------------------------------------------------------------------------
def _minutes(t: Timing, cores: int) -> dict:
    """CPU and wall minutes on `cores` of a duration (threads 0 / unknown counted as all cores)."""
    threads = t.threads or cores
    cpu = t.seconds / 60 * threads
    return {"cpu_minutes": cpu, "wall_minutes": cpu / min(threads, cores), "threads": threads,
            "threads_assumed": not t.threads}


def _r(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(x, digits)


def budget(steps: list[Step], root: Path, cores: int = 2, target: str = "", target_minutes: float | None = None) -> dict:
    """The budget document of a plan (`plan`): one entry per stage, grouped by kind and by arm, with totals;
    the estimates read each pipeline's params.yaml beside its dvc.yaml."""
    if cores < 1:
        raise BudgetError(f"--cores must be >= 1, got {cores}")
    times = timings(steps, root)
    rows = []
    for s, t in zip(steps, times):
        row = {"stage": s.stage, "kind": s.kind, "arm": s.arm, "seed": s.seed, "status": t.status,
               "seconds": _r(t.seconds), "source": t.source or None, "estimate": None}
        row.update(_minutes(t, cores) if t.status == "recorded" else
                   {"cpu_minutes": None, "wall_minutes": None, "threads": None, "threads_assumed": None})
        rows.append(row)
    bases = _estimate(rows, steps, root)
    shared = shared_as(steps, root)
    doc = {"target": target, "cores": cores, "target_minutes": target_minutes,
           "totals": _totals(rows, target_minutes), "by_kind": _group(rows, "kind"), "by_arm": _by_arm(rows, bases, shared),
           "stages": rows}
    for entry in [*rows, *(r["estimate"] for r in rows if r["estimate"])]:  # rounded once every sum is taken
        for k in ("cpu_minutes", "wall_minutes"):
            entry[k] = _r(entry[k])
    return doc


def _estimate(rows: list[dict], steps: list[Step], root: Path) -> dict:
    """Fill `estimate` of each not-run per-run stage from the recorded arm of the same cost (the mean over
    its recorded stages of the same kind; an arm's own recorded seeds first); returns {arm: {from, basis}}."""
    params, cfg_of = {}, {}
    for s in steps:
        if s.arm and s.arm not in cfg_of:
            if s.pipeline not in params:
                params[s.pipeline] = load_params(root, s.pipeline)
            cfg_of[s.arm] = variant_config(params[s.pipeline], s.variant)
    done = {}  # {(arm, kind): [its recorded rows]}
    for row in rows:
        if row["arm"] and row["status"] == "recorded":
            done.setdefault((row["arm"], row["kind"]), []).append(row)
    recorded = {arm: cfg_of[arm] for arm, kind in done if kind == "train" and cfg_of.get(arm)}
    bases = {}
    for row in rows:
        cfg = cfg_of.get(row["arm"])
        if row["status"] != "not run" or row["kind"] not in PER_RUN or not cfg:
            continue
        donor = pick_donor(cfg, recorded)
        same = done.get((donor[0], row["kind"])) if donor else None
        if not same:
            continue
        arm, diff = donor
        row["estimate"] = {"from": arm, "stages": len(same),
                           "cpu_minutes": sum(r["cpu_minutes"] for r in same) / len(same),
                           "wall_minutes": sum(r["wall_minutes"] for r in same) / len(same)}
        same_keys = ", ".join(f"{k} {_get(cfg, k)}" for k in COST_KEYS if _get(cfg, k) is not None)
        bases[row["arm"]] = {"from": arm, "basis": f"the mean of {arm}'s recorded stages of each kind; same "
                             f"{same_keys}" + (f"; differs in {', '.join(diff)}" if diff else "")}
    return bases


def _sums(rows: list[dict]) -> dict:
    rec = [r for r in rows if r["status"] == "recorded"]
    est = [r["estimate"] for r in rows if r["estimate"]]
    return {
        "stages": len(rows),
        "recorded": len(rec),
        "not_recorded": sum(r["status"] == "not recorded" for r in rows),
        "not_run": sum(r["status"] == "not run" for r in rows),
        "estimated": len(est),
        "cpu_minutes": _r(sum(r["cpu_minutes"] for r in rec)),
        "wall_minutes": _r(sum(r["wall_minutes"] for r in rec)),
        "estimated_cpu_minutes": _r(sum(e["cpu_minutes"] for e in est)),
        "estimated_wall_minutes": _r(sum(e["wall_minutes"] for e in est)),
    }


def _totals(rows: list[dict], target_minutes: float | None) -> dict:
    out = _sums(rows)
    out["wall_minutes_with_estimates"] = _r(out["wall_minutes"] + out["estimated_wall_minutes"])
    unknown = out["not_recorded"] + out["not_run"] - out["estimated"]
    out["without_duration"] = unknown  # stages counted as zero in the totals above
    over = None
    if target_minutes is not None:
        # a lower bound: stages without a duration only add to it
        over = out["wall_minutes_with_estimates"] > target_minutes or (False if unknown == 0 else None)
    out["over_target"] = over
    return out


def _group(rows: list[dict], key: str) -> dict:
    groups: dict[str, list] = {}
    for r in rows:
        groups.setdefault(r[key] if r[key] is not None else ONE_OFF, []).append(r)
    return {name: _sums(g) for name, g in groups.items()}


def _by_arm(rows: list[dict], bases: dict, shared: dict) -> dict:
    """Per arm (the stages outside the runs last): its seeds, what they recorded per stage kind (sum and
    per-seed range), the totals, and where its estimate comes from."""
    out = {}
    groups = _group(rows, "arm")
    for name in sorted(groups, key=lambda n: n == ONE_OFF):  # stable: plan order, one-off last
        mine = [r for r in rows if (r["arm"] or ONE_OFF) == name]
        seeds = [r["seed"] for r in mine if r["seed"] is not None]
        entry = {**groups[name], "seeds": sorted(set(seeds)),
                 "recorded_seeds": sorted({r["seed"] for r in mine if r["seed"] is not None
                                           and r["kind"] == "train" and r["status"] == "recorded"}),
                 "shared_as": shared.get(name, []), "estimate": bases.get(name), "kinds": {}}
        for kind in dict.fromkeys(r["kind"] for r in mine):
            rec = [r["wall_minutes"] for r in mine if r["kind"] == kind and r["status"] == "recorded"]
            if rec:
                entry["kinds"][kind] = {"recorded": len(rec), "wall_minutes": _r(sum(rec)),
                                        "min_wall_minutes": _r(min(rec)), "max_wall_minutes": _r(max(rec))}
        out[name] = entry
    return out


# ---- Markdown ------------------------------------------------------------------------------------------------
def _m(v, digits: int = 1) -> str:
    return "–" if v is None else f"{v:,.{digits}f}"


def markdown(doc: dict) -> str:
    """The budget document as Markdown tables (every number is read from `doc`)."""
    t, cores = doc["totals"], doc["cores"]
    unknown = t["without_duration"]
    verdict = ""
    if doc.get("target_minutes") is not None:
        goal = f"the target of {_m(doc['target_minutes'], 0)} min"
        verdict = " — **" + {True: f"over {goal}", False: f"within {goal}",
                             None: f"within {goal} so far; {unknown} stages have no duration"}[t["over_target"]] + "**"
    out = [f"# CPU budget of `dvc repro {doc['target']}`", "",
           "Generated by the `budget` stage from DVC's plan of that command and the durations the stages "
           "recorded in the committed per-run files; do not edit. JSON: [`budget.json`](budget.json).", "",
           f"**Estimated wall-clock on {cores} cores: {_m(t['wall_minutes_with_estimates'])} min**{verdict}: "
           f"{_m(t['wall_minutes'])} min recorded ({t['recorded']} of {t['stages']} stages) + "
           f"{_m(t['estimated_wall_minutes'])} min estimated for {t['estimated']} stages of runs not run yet; "
           f"{unknown} stages have no duration and count as 0 ({t['not_recorded']} not recorded, "
           f"{t['not_run'] - t['estimated']} not run without an estimate). CPU minutes: "
           f"{_m(t['cpu_minutes'])} recorded + {_m(t['estimated_cpu_minutes'])} estimated.", "",
           "## Where the time goes (by stage kind)", "",
           f"| kind | stages | recorded | not recorded | not run | CPU min | wall min on {cores} cores "
           "| share of the recorded wall | estimated wall min (not run) |", "|---" * 9 + "|"]
    total = t["wall_minutes"]
    by_cost = sorted(doc["by_kind"].items(), key=lambda kv: -(kv[1]["wall_minutes"] + kv[1]["estimated_wall_minutes"]))
    for kind, g in by_cost:
        share = f"{100 * g['wall_minutes'] / total:.0f}%" if total else "–"
        if not g["recorded"]:
            share = "–"
        out.append(f"| {kind} | {g['stages']} | {g['recorded']} | {g['not_recorded']} | {g['not_run']} "
                   f"| {_m(g['cpu_minutes']) if g['recorded'] else '–'} "
                   f"| {_m(g['wall_minutes']) if g['recorded'] else '–'} | {share} "
                   f"| {_m(g['estimated_wall_minutes']) if g['estimated'] else '–'} |")
    out += ["", "## By arm", "",
            "A range is the spread over the arm's recorded seeds: a run recorded beside another training took "
            "longer than alone.", "",
            "| arm | seeds in the plan | recorded seeds | train min / seed | sample min / seed | evaluate min / seed "
            f"| recorded wall min on {cores} cores | CPU min | not run: estimated wall min |", "|---" * 9 + "|"]
    notes = []
    for arm, a in doc["by_arm"].items():
        cells = []
        for kind in PER_RUN:
            k = a["kinds"].get(kind)
            lo, hi = (k["min_wall_minutes"], k["max_wall_minutes"]) if k else (None, None)
            cells.append(_m(lo) if lo == hi else f"{_m(lo)}–{_m(hi)}")
        est = "–"
        if a["estimate"]:
            est = f"{_m(a['estimated_wall_minutes'])} (estimate from `{a['estimate']['from']}`)"
            notes.append(f"- `{arm}`: {a['estimate']['basis']}.")
        elif a["not_run"]:
            est = "no estimate"
        recorded = a["recorded"] > 0
        name = f"`{arm}`" if arm != ONE_OFF else f"{ONE_OFF} stages"
        if a["shared_as"]:
            name += " (shared as " + ", ".join(f"`{p}`" for p in a["shared_as"]) + ")"
        out.append(f"| {name} | {','.join(map(str, a['seeds'])) or '–'} | {','.join(map(str, a['recorded_seeds'])) or '–'} "
                   f"| {' | '.join(cells)} | {_m(a['wall_minutes']) if recorded else '–'} "
                   f"| {_m(a['cpu_minutes']) if recorded else '–'} | {est} |")
    if notes:
        out += ["", "Estimates (not measurements):", "", *notes]
    out += ["", "## Stages outside the runs", "", "| stage | status | wall min | threads | source |", "|---|---|---|---|---|"]
    out += [f"| `{r['stage']}` | {r['status']} | {_m(r['wall_minutes'], 2)} | {_threads(r)} | {r['source'] or ''} |"
            for r in doc["stages"] if r["arm"] is None]
    out += ["", "## How it is counted", "",
            "- Stages: DVC's plan of the command (`collect_stages` and `plan_repro` over its stage graph, as "
            "`dvc repro` plans), in its order; nothing is run.",
            "- Durations as the stages recorded them: train `train_seconds` (the training loop), sample "
            "`sample_s_per_img` x `num_samples` (the sampling loop), evaluate `eval_seconds`; another stage only "
            "where a JSON output of its own records `seconds` or `train_seconds` (covering what its key says). "
            "Process start-up, imports and file copies are never timed.",
            f"- CPU minutes = wall minutes x threads; a thread count of 0 or none (torch's default: every core) "
            f"counts as {cores}, shown as `{cores}*`.",
            f"- Wall-clock on {cores} cores: one stage at a time (as `dvc repro` runs them), each taking its CPU "
            f"minutes / min(threads, {cores}), with the recorded times taken as if each run had had the machine "
            "to itself.",
            "- A run without committed files is not run; its estimate, if any, is the mean of a recorded arm with "
            "the same model name, data, training length and sampling, and names the settings that differ.", "",
            "<details><summary>Every stage, in DVC's order</summary>", "",
            "| # | stage | status | wall min | threads | CPU min | source |", "|---" * 7 + "|"]
    for i, r in enumerate(doc["stages"], 1):
        note = r["source"] or ""
        if r["estimate"]:
            e = r["estimate"]
            note = f"estimate from `{e['from']}`: {_m(e['wall_minutes'], 2)} wall min, {_m(e['cpu_minutes'], 2)} CPU min"
        out.append(f"| {i} | `{r['stage']}` | {r['status']} | {_m(r['wall_minutes'], 2)} | {_threads(r)} "
                   f"| {_m(r['cpu_minutes'], 2)} | {note} |")
    out += ["", "</details>", ""]
    return "\n".join(out)


def _threads(r: dict) -> str:
    if r["threads"] is None:
        return "–"
    return f"{r['threads']}*" if r["threads_assumed"] else str(r["threads"])


@friendly_errors
def main(argv: list[str] | None = None) -> dict:
    ap = StageParser("budget", __doc__)
    ap.add_argument("target", help="what `dvc repro` is given (a dvc.yaml, or a stage address)")
    ap.add_argument("--out", required=True, help="output JSON (the Markdown table is written beside it, .md)")
    ap.add_argument("--cores", type=int, default=2, help="cores of the machine the wall-clock is estimated for")
    ap.add_argument("--target-minutes", type=float, default=None, help="the wall-clock goal to compare with")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if out.suffix != ".json":
        raise BudgetError(f"--out '{out}' must end in .json (the Markdown table is written beside it as .md)")
    md = out.with_suffix(".md")
    check_writable(out, md, what="--out file")
    if args.cores < 1:
        raise BudgetError(f"--cores must be >= 1, got {args.cores}")
    root, steps = plan(args.target)
    doc = budget(steps, root, args.cores, args.target, args.target_minutes)
    write_json(out, doc)
    write_atomic(md, markdown(doc))
    t = doc["totals"]
    print(f"{args.target}: {t['stages']} stages, {_m(t['wall_minutes_with_estimates'])} min on {args.cores} cores "
          f"({t['recorded']} recorded, {t['estimated']} estimated, {t['without_duration']} without a duration) "
          f"-> {out}, {md}")
    return doc


if __name__ == "__main__":
    main()
