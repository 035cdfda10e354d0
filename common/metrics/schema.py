"""The `papers/<p>/results/metrics.json` schema (validated here, used by the results stage and the
leaderboard), and the one verdict rule every paper's claims are judged by (`RULE_TEXT`, `judge`).

A claim is declared in its paper's params (`claims:`, parsed by `claim_specs`) before any run: the two
arms it compares, the metric, which direction is better, the kind (`better` or `comparable`) and a margin
in the metric's units. `judge` then reads the per-seed values of both arms from the metrics.json rows,
applies the quality gate to each arm and Welch's test to the difference, and writes the verdict with the
rule, the gate and the reason beside it.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields

import numpy as np

from common.errors import UserError

VERDICTS = ("reproduced", "not reproduced", "inconclusive")

_TOP_REQUIRED = {"paper": str, "title": str, "arxiv": str, "preset": str, "dataset": str, "rows": list}
_TOP_OPTIONAL = {"toy_scale": bool, "claims": list, "notebooks": dict, "rule": str}
_ROW_REQUIRED = {"variant": str, "fid": "number", "fid_features": str}
_ROW_NUMBERS = ("fid_std", "kid", "kid_std", "precision", "recall", "class_consistency", "params", "gflops",
                "train_steps", "train_img_per_s", "train_seconds", "sample_s_per_img", "sample_steps",
                "cfg_scale", "fid_samples", "frame_fid", "temporal_consistency")
_ROW_STRINGS = ("sampler", "thumbnail")
_UNIT_INTERVAL = ("precision", "recall", "class_consistency", "temporal_consistency")
_CLAIM_KEYS = ("claim", "paper", "measured", "verdict")  # + rule, compares, gate, values


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _bad_path(p: str) -> bool:
    """Paths in metrics.json are relative to the repo root: no absolute paths, no '..'."""
    return p.startswith(("/", "\\")) or bool(re.match(r"^[A-Za-z]:", p)) or ".." in p.split("/")


def validate_metrics(d) -> list[str]:
    """Problems with a metrics.json document (empty list = valid). Each names the offending key."""
    if not isinstance(d, dict):
        return [f"document must be a JSON object, got {type(d).__name__}"]
    problems = []
    for k, t in _TOP_REQUIRED.items():
        if k not in d:
            problems.append(f"missing key '{k}'")
        elif not isinstance(d[k], t):
            problems.append(f"'{k}' must be {t.__name__}, got {type(d[k]).__name__}")
    for k, t in _TOP_OPTIONAL.items():
        if d.get(k) is not None and not isinstance(d[k], t):
            problems.append(f"'{k}' must be {t.__name__}, got {type(d[k]).__name__}")
    if isinstance(d.get("arxiv"), str) and not re.fullmatch(r"\d{4}\.\d{4,5}", d["arxiv"]):
        problems.append(f"'arxiv' must look like '2411.12663', got '{d['arxiv']}'")
    rows = d.get("rows") if isinstance(d.get("rows"), list) else []
    if "rows" in d and isinstance(d["rows"], list) and not rows:
        problems.append("'rows' is empty")
    seen = set()
    for i, r in enumerate(rows):
        where = f"rows[{i}]"
        if not isinstance(r, dict):
            problems.append(f"{where} must be an object")
            continue
        where = f"rows[{i}] ({r.get('variant', '?')})"
        for k, t in _ROW_REQUIRED.items():
            if k not in r:
                problems.append(f"{where}: missing key '{k}'")
            elif t == "number" and not _is_number(r[k]):
                problems.append(f"{where}: '{k}' must be a finite number, got {r[k]!r}")
            elif t != "number" and not isinstance(r[k], t):
                problems.append(f"{where}: '{k}' must be {t.__name__}, got {r[k]!r}")
        if r.get("variant") in seen:
            problems.append(f"{where}: duplicate variant")
        seen.add(r.get("variant"))
        for k in _ROW_NUMBERS:
            if r.get(k) is not None and not _is_number(r[k]):
                problems.append(f"{where}: '{k}' must be a finite number or null, got {r[k]!r}")
        for k in _UNIT_INTERVAL:
            if _is_number(r.get(k)) and not 0.0 <= r[k] <= 1.0:
                problems.append(f"{where}: '{k}' must lie in [0, 1], got {r[k]}")
        for k in _ROW_STRINGS:
            if r.get(k) is not None and not isinstance(r[k], str):
                problems.append(f"{where}: '{k}' must be a string or null, got {r[k]!r}")
        if r.get("ema") is not None and not isinstance(r["ema"], bool):
            problems.append(f"{where}: 'ema' must be a boolean or null, got {r['ema']!r}")
        if r.get("seeds") is not None and not (isinstance(r["seeds"], list) and r["seeds"]
                                               and all(isinstance(s, int) and not isinstance(s, bool)
                                                       for s in r["seeds"])):
            problems.append(f"{where}: 'seeds' must be a non-empty list of integers, got {r['seeds']!r}")
        for k, v in r.items():
            if k.endswith("_per_seed") and not (isinstance(v, list) and all(_is_number(x) for x in v)
                                                 and len(v) == len(r.get("seeds") or v)):
                problems.append(f"{where}: '{k}' must be a list of finite numbers, one per seed, got {v!r}")
        if isinstance(r.get("thumbnail"), str) and _bad_path(r["thumbnail"]):
            problems.append(f"{where}: 'thumbnail' must be relative to the repo root, got '{r['thumbnail']}'")
    for i, c in enumerate(d.get("claims") or [] if isinstance(d.get("claims"), list) else []):
        if not isinstance(c, dict):
            problems.append(f"claims[{i}] must be an object")
            continue
        for k in _CLAIM_KEYS + ("rule",):
            if not isinstance(c.get(k), str):
                problems.append(f"claims[{i}]: '{k}' must be a string")
        if isinstance(c.get("verdict"), str) and c["verdict"] not in VERDICTS:
            problems.append(f"claims[{i}]: 'verdict' must be one of {VERDICTS}, got '{c['verdict']}'")
        if not (isinstance(c.get("compares"), list) and all(isinstance(v, str) for v in c["compares"])):
            problems.append(f"claims[{i}]: 'compares' must be a list of variant names")
        gate = c.get("gate")
        if not (isinstance(gate, dict) and isinstance(gate.get("detail"), str)
                and (gate.get("passed") is None or isinstance(gate.get("passed"), bool))):
            problems.append(f"claims[{i}]: 'gate' must be an object with 'passed' (true, false or null) and 'detail'")
        values = c.get("values")
        if not (isinstance(values, dict) and all(isinstance(v, list) and all(_is_number(x) for x in v)
                                                 for v in values.values())):
            problems.append(f"claims[{i}]: 'values' must map each arm to its list of per-seed numbers")
    if isinstance(d.get("notebooks"), dict):
        for k, p in d["notebooks"].items():
            if not isinstance(p, str) or _bad_path(p):
                problems.append(f"notebooks['{k}'] must be a path relative to the repo root, got {p!r}")
    return problems


def mean_std(mean, std, digits: int = 2) -> str:
    """'12.30 +- 0.40' (or just the mean when there is no spread) for the `measured` text of a claim."""
    if mean is None:
        return "n/a"
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} +- {std:.{digits}f}"


def find_row(rows: list[dict], variant: str) -> dict | None:
    """The metrics.json row of `variant`, or None when it did not run."""
    return next((r for r in rows if r.get("variant") == variant), None)


def missing_claim(claim: str, paper: str, missing: list[str]) -> dict:
    """A claim whose variants did not run: no verdict, and the missing variants named."""
    return {"claim": claim, "paper": paper, "measured": f"missing variant {', '.join(missing)}",
            "verdict": "inconclusive"}


# ---------------------------------------------------------------------------------------------------
# The verdict rule: one for every paper.

MIN_SEEDS = 3            # every compared arm, its own seeds
ALPHA = 0.05             # one-sided Welch test ("better" / "worse"); the 90% interval is its two-sided twin
IMAGE_GATE = 0.8         # mean class-consistency over an image arm's seeds
CLAIM_KINDS = ("better", "comparable")
DIRECTIONS = ("lower", "higher")
GATES = ("image", "video", "none")
FID_METRICS = ("fid", "frame_fid")

RULE_ONLY_TEXT = (
    'One rule for every claim. Each compared arm has at least 3 seeds of its own, and each claim declares its '
    "metric, the direction that is better and a margin in its paper's params before any run; an FID margin is "
    'never below the real-vs-real FID of two real sets of the sample size used. Comparable: the 90% Welch '
    'confidence interval of the difference of means lies inside +-margin. Better (or worse): a one-sided Welch '
    't-test at alpha 0.05 and an observed difference beyond the margin. Anything else is inconclusive.')
GATE_TEXT = (
    "Gates, per arm at its final checkpoint: images, mean class-consistency over the arm's seeds >= 0.8; video, "
    "frame-FID <= 2x the real-vs-real value and class- and temporal consistency >= 0.9x the real clips' (on two-"
    "digit moving frames real clips score far below 0.8). 'Comparable' needs every compared arm to pass, 'better'"
    " the arm found better (the other arm's gate is shown beside it); otherwise the verdict is inconclusive "
    '(below the quality gate).')
RULE_TEXT = f"{RULE_ONLY_TEXT} {GATE_TEXT}"


class ClaimError(UserError, ValueError):
    """A claim declared without its metric, direction or margin, or with a margin below the metric's noise."""


@dataclass(frozen=True)
class ClaimSpec:
    """One claim as declared in `papers/<p>/params.yaml` under `claims:` (before any run).

    `compares` = [A, B]: for kind `better`, A is claimed better than B; for `comparable`, A is claimed within
    +-margin of B (B is the reference). `margin` is in the metric's units."""
    key: str
    claim: str
    paper: str
    compares: tuple[str, str]
    metric: str
    direction: str
    kind: str
    margin: float
    gate: str = "image"


def claim_specs(params: dict) -> list[ClaimSpec]:
    """The `claims:` section of a paper's params, validated (a ClaimError names the bad key)."""
    section = params.get("claims") or {}
    if not isinstance(section, dict):
        raise ClaimError(f"params key 'claims' must be a mapping of claim keys, got {type(section).__name__}")
    specs = []
    for key, c in section.items():
        where = f"claims.{key}"
        if not isinstance(c, dict):
            raise ClaimError(f"params key '{where}' must be a mapping")
        extra = set(c) - {f.name for f in fields(ClaimSpec)} - {"key"}
        if extra:
            raise ClaimError(f"unknown params key '{where}.{sorted(extra)[0]}'")
        for k in ("claim", "paper", "compares", "metric", "direction", "kind", "margin"):
            if c.get(k) is None:
                raise ClaimError(f"params key '{where}.{k}' is missing: a claim declares its metric, direction, "
                                 f"kind and margin before any run")
        compares = c["compares"]
        if not (isinstance(compares, list) and len(compares) == 2 and all(isinstance(v, str) for v in compares)
                and compares[0] != compares[1]):
            raise ClaimError(f"params key '{where}.compares' must name two different variants, got {compares!r}")
        for k, allowed in (("direction", DIRECTIONS), ("kind", CLAIM_KINDS), ("gate", GATES)):
            if k in c and c[k] not in allowed:
                raise ClaimError(f"params key '{where}.{k}' = {c[k]!r} (allowed: {', '.join(allowed)})")
        if not _is_number(c["margin"]) or c["margin"] <= 0:
            raise ClaimError(f"params key '{where}.margin' must be a positive number, got {c['margin']!r}")
        specs.append(ClaimSpec(key=key, claim=str(c["claim"]), paper=str(c["paper"]), compares=tuple(compares),
                               metric=str(c["metric"]), direction=c["direction"], kind=c["kind"],
                               margin=float(c["margin"]), gate=c.get("gate", "image")))
    return specs


def fid_noise_floor(calibration: dict | None, metric: str, n: int | None, gate: str = "image") -> float | None:
    """The real-vs-real FID at `n` samples (the largest measured size <= n: FID noise falls as n grows, so
    this errs high), or None when nothing was measured at or below n."""
    if metric not in FID_METRICS or not calibration or not n:
        return None
    if gate == "video":
        video = next(iter((calibration.get("video") or {}).values()), {})
        return video.get("frame_fid_real_vs_real")
    table = (calibration.get("image") or {}).get("fid_real_vs_real") or {}
    sizes = sorted(int(k) for k in table if int(k) <= n)
    return float(table[str(sizes[-1])]) if sizes else None


def welch(a: list[float], b: list[float]) -> dict:
    """Welch's comparison of mean(a) - mean(b): the difference, its 90% interval, the one-sided p-value
    of "a > b", and the Welch-Satterthwaite degrees of freedom."""
    from scipy import stats

    a, b = np.asarray(a, float), np.asarray(b, float)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    diff, se = float(a.mean() - b.mean()), math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1)) if se > 0 else float(len(a) + len(b) - 2)
    if se == 0:
        return {"diff": diff, "ci90": [diff, diff], "p_one_sided": 0.0 if diff > 0 else 1.0, "df": df, "se": 0.0}
    t = stats.t.ppf(1 - ALPHA, df)
    return {"diff": diff, "ci90": [diff - t * se, diff + t * se], "p_one_sided": float(stats.t.sf(diff / se, df)),
            "df": float(df), "se": se}


def seeds_needed(a: list[float], b: list[float], margin: float, limit: int = 100) -> int | None:
    """Seeds per arm that would decide the claim if the observed gain and spreads held (None: > limit).

    A gain beyond the margin is decided once the 90% interval excludes zero (half-width < |gain|); a gain
    inside the margin once the interval fits inside +-margin (half-width < margin - |gain|)."""
    from scipy import stats

    va, vb = np.var(a, ddof=1), np.var(b, ddof=1)
    gain = abs(float(np.mean(a) - np.mean(b)))
    room = gain if gain > margin else margin - gain
    for n in range(MIN_SEEDS, limit + 1):
        df = (n - 1) * (va + vb) ** 2 / max(va**2 + vb**2, 1e-300)  # Welch's df at n seeds an arm
        if stats.t.ppf(1 - ALPHA, df) * math.sqrt((va + vb) / n) < room:
            return n
    return None


def gate_arm(row: dict, gate: str, calibration: dict | None) -> dict:
    """One arm's quality gate at its final checkpoint: {"passed": bool | None, "detail": str}."""
    name = row.get("variant", "?")
    if gate == "none":
        return {"passed": None, "detail": f"{name}: no quality gate for this metric"}
    cc = _mean(row, "class_consistency")
    if gate == "image":
        if cc is None:
            return {"passed": False, "detail": f"{name}: no class-consistency measured"}
        ok = cc >= IMAGE_GATE
        return {"passed": ok, "detail": f"{name} class-consistency {cc:.2f} {'>=' if ok else '<'} {IMAGE_GATE}"}
    video = next(iter(((calibration or {}).get("video") or {}).values()), None)
    if not video or not video.get("gate"):
        return {"passed": False, "detail": f"{name}: the video gate is not calibrated (run the calibrate stage)"}
    g, ff, tc = video["gate"], _mean(row, "frame_fid"), _mean(row, "temporal_consistency")
    if None in (ff, cc, tc):
        return {"passed": False, "detail": f"{name}: frame-FID, class- or temporal consistency not measured"}
    checks = [(ff <= g["frame_fid_max"], f"frame-FID {ff:.2f} (max {g['frame_fid_max']:.2f})"),
              (cc >= g["class_consistency_min"], f"class-consistency {cc:.2f} (min {g['class_consistency_min']:.2f})"),
              (tc >= g["temporal_consistency_min"], f"temporal consistency {tc:.2f} (min {g['temporal_consistency_min']:.2f})")]
    ok = all(c for c, _ in checks)
    failed = [t for c, t in checks if not c]
    return {"passed": ok, "detail": f"{name} " + ("passes: " + ", ".join(t for _, t in checks) if ok
                                                   else "fails: " + ", ".join(failed))}


def _mean(row: dict, key: str) -> float | None:
    vals = row.get(f"{key}_per_seed")
    if isinstance(vals, list) and vals and all(_is_number(v) for v in vals):
        return float(np.mean(vals))
    return row.get(key) if _is_number(row.get(key)) else None


def rule_text(spec: ClaimSpec, label: str) -> str:
    """The rule of one claim, in words, with its margin."""
    m = f"{spec.margin:g} {label}"
    better = f"{label} {spec.direction} is better"
    if spec.kind == "comparable":
        return (f"comparable: the 90% Welch interval of the {label} difference ({spec.compares[0]} - "
                f"{spec.compares[1]}) inside +-{m}; both arms pass the gate; {better}; >= {MIN_SEEDS} seeds an arm")
    return (f"better: a one-sided Welch t-test (alpha {ALPHA}) that {spec.compares[0]} beats {spec.compares[1]} "
            f"and an observed gain beyond {m}; the better arm passes the gate; {better}; >= {MIN_SEEDS} seeds an arm")


def judge(spec: ClaimSpec, rows: list[dict], calibration: dict | None = None) -> dict:
    """A claim judged by the rule (RULE_TEXT) on metrics.json rows carrying `<metric>_per_seed`."""
    label = {"fid": "FID", "frame_fid": "frame-FID", "class_consistency": "class-consistency"}.get(
        spec.metric, spec.metric)
    a_name, b_name = spec.compares
    out = {"key": spec.key, "claim": spec.claim, "paper": spec.paper, "compares": list(spec.compares),
           "metric": spec.metric, "direction": spec.direction, "kind": spec.kind, "margin": spec.margin,
           "rule": rule_text(spec, label), "values": {}, "estimate": None, "outcome": "inconclusive",
           "seeds_needed": None}

    def inconclusive(reason: str, measured: str) -> dict:
        return {**out, "verdict": "inconclusive", "reason": reason, "measured": measured}

    ra, rb = find_row(rows, a_name), find_row(rows, b_name)
    missing = [n for n, r in ((a_name, ra), (b_name, rb)) if r is None]
    if missing:
        out["gate"] = {"passed": None, "detail": "not measured", "arms": {}}
        return inconclusive(f"arm {', '.join(missing)} did not run", f"missing variant {', '.join(missing)}")
    arms = {n: gate_arm(r, spec.gate, calibration) for n, r in ((a_name, ra), (b_name, rb))}
    vals = {n: list(r.get(f"{spec.metric}_per_seed") or []) for n, r in ((a_name, ra), (b_name, rb))}
    out["values"] = vals
    means = {n: (float(np.mean(v)) if v else None) for n, v in vals.items()}
    sds = {n: (float(np.std(v, ddof=1)) if len(v) > 1 else None) for n, v in vals.items()}
    r0 = ra
    proto = f"{r0.get('fid_features')}, {r0.get('fid_samples')} samples" if spec.metric in FID_METRICS else ""
    measured = (f"{label}{f' ({proto})' if proto else ''}: " + " vs ".join(
        f"{n} {mean_std(means[n], sds[n])} ({len(vals[n])} seed{'s' if len(vals[n]) != 1 else ''})" for n in vals))
    out["gate"] = {"passed": None, "detail": "; ".join(a["detail"] for a in arms.values()), "arms": arms}
    few = [f"{n} has {len(v)}" for n, v in vals.items() if len(v) < MIN_SEEDS]
    if few:
        return inconclusive(f"fewer than {MIN_SEEDS} seeds ({'; '.join(few)})", measured)
    floor = fid_noise_floor(calibration, spec.metric, r0.get("fid_samples"), spec.gate)
    if spec.metric in FID_METRICS:
        if floor is None:
            return inconclusive("no real-vs-real FID measured at this sample size, so the margin cannot be checked "
                                "against the metric's noise (run the calibrate stage)", measured)
        if spec.margin < floor:
            raise ClaimError(f"params key 'claims.{spec.key}.margin' = {spec.margin:g} is below the metric's own "
                             f"noise: real-vs-real {label} at {r0.get('fid_samples')} samples is {floor:.3g}")
    # gain > 0 means A is better than B
    sign = -1.0 if spec.direction == "lower" else 1.0
    w = welch([sign * v for v in vals[a_name]], [sign * v for v in vals[b_name]])
    gain, (lo, hi), m = w["diff"], w["ci90"], spec.margin
    out["estimate"] = {"diff": gain, "ci90": [lo, hi], "p_one_sided": w["p_one_sided"], "df": w["df"]}
    if lo > -m and hi < m:
        outcome, winner = "comparable", None
    elif lo > 0 and gain > m:
        outcome, winner = "better", a_name
    elif hi < 0 and gain < -m:
        outcome, winner = "worse", b_name
    else:
        outcome, winner = "inconclusive", None
    out["outcome"] = outcome
    if outcome == "inconclusive" and hi - lo > 2 * m:  # only an undecided claim needs more seeds
        out["seeds_needed"] = seeds_needed(vals[a_name], vals[b_name], m)
    est = (f"{a_name} {'better' if gain >= 0 else 'worse'} by {abs(gain):.3g} {label} (90% CI of the gain "
           f"[{lo:.3g}, {hi:.3g}], one-sided p = {w['p_one_sided']:.3g}, margin {m:g})")
    needs = [a_name, b_name] if outcome == "comparable" else [winner] if winner else []
    passed = all(arms[n]["passed"] for n in needs) if needs else None
    out["gate"]["passed"] = passed
    if outcome == "inconclusive":
        more = (f"; the interval is wider than the margin: about {out['seeds_needed']} seeds an arm would decide "
                f"it if the observed gain and spreads held" if out["seeds_needed"] else
                "; the interval is wider than the margin and would stay undecided at 100 seeds" if hi - lo > 2 * m
                else "")
        return {**out, "verdict": "inconclusive", "reason": f"neither comparable nor beyond the margin: {est}{more}",
                "measured": measured}
    if not passed:
        failed = [n for n in needs if not arms[n]["passed"]]
        return {**out, "verdict": "inconclusive", "measured": measured,
                "reason": f"below the quality gate ({', '.join(failed)}): {est}"}
    claimed = "better" if spec.kind == "better" else "comparable"
    verdict = "reproduced" if outcome == claimed else "not reproduced"
    others = [n for n in (a_name, b_name) if n not in needs]
    shown = f"; {'; '.join(arms[n]['detail'] for n in others)}" if others else ""
    return {**out, "verdict": verdict, "measured": measured, "reason": f"{outcome}: {est}{shown}"}


def judge_all(specs: list[ClaimSpec], rows: list[dict], calibration: dict | None = None) -> list[dict]:
    return [judge(s, rows, calibration) for s in specs]
