"""The `papers/<p>/results/metrics.json` schema (validated here, used by the results stage and the
leaderboard), and the 2-sigma verdict helpers that paper modules use to judge their claims.
"""
from __future__ import annotations

import math
import re

VERDICTS = ("reproduced", "not reproduced", "inconclusive")

_TOP_REQUIRED = {"paper": str, "title": str, "arxiv": str, "preset": str, "dataset": str, "rows": list}
_TOP_OPTIONAL = {"toy_scale": bool, "claims": list, "notebooks": dict}
_ROW_REQUIRED = {"variant": str, "fid": "number", "fid_features": str}
_ROW_NUMBERS = ("fid_std", "kid", "kid_std", "precision", "recall", "class_consistency", "params", "gflops",
                "train_steps", "train_img_per_s", "train_seconds", "sample_s_per_img", "sample_steps",
                "cfg_scale", "fid_samples", "frame_fid", "temporal_consistency")
_ROW_STRINGS = ("sampler", "thumbnail")
_UNIT_INTERVAL = ("precision", "recall", "class_consistency", "temporal_consistency")
_CLAIM_KEYS = ("claim", "paper", "measured", "verdict")


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
        if isinstance(r.get("thumbnail"), str) and _bad_path(r["thumbnail"]):
            problems.append(f"{where}: 'thumbnail' must be relative to the repo root, got '{r['thumbnail']}'")
    for i, c in enumerate(d.get("claims") or [] if isinstance(d.get("claims"), list) else []):
        if not isinstance(c, dict):
            problems.append(f"claims[{i}] must be an object")
            continue
        for k in _CLAIM_KEYS:
            if not isinstance(c.get(k), str):
                problems.append(f"claims[{i}]: '{k}' must be a string")
        if isinstance(c.get("verdict"), str) and c["verdict"] not in VERDICTS:
            problems.append(f"claims[{i}]: 'verdict' must be one of {VERDICTS}, got '{c['verdict']}'")
    if isinstance(d.get("notebooks"), dict):
        for k, p in d["notebooks"].items():
            if not isinstance(p, str) or _bad_path(p):
                problems.append(f"notebooks['{k}'] must be a path relative to the repo root, got {p!r}")
    return problems


def verdict_lower_is_better(a_mean: float, a_std: float | None, b_mean: float, b_std: float | None,
                            sigmas: float = 2.0) -> str:
    """Verdict on the claim "A scores lower (better) than B", e.g. FID of the paper's method vs baseline.

    2-sigma rule on the difference d = b - a with sigma = sqrt(a_std^2 + b_std^2) (std over seeds):
    d > 2 sigma -> "reproduced"; d < -2 sigma -> "not reproduced"; otherwise "inconclusive". Without a
    spread (one seed: std None) there is no verdict: "inconclusive".
    """
    if a_std is None or b_std is None or any(not _is_number(v) for v in (a_mean, a_std, b_mean, b_std)):
        return "inconclusive"
    sigma, d = math.hypot(a_std, b_std), b_mean - a_mean
    if sigma == 0.0:
        return "inconclusive"
    if d > sigmas * sigma:
        return "reproduced"
    if d < -sigmas * sigma:
        return "not reproduced"
    return "inconclusive"


def verdict_higher_is_better(a_mean, a_std, b_mean, b_std, sigmas: float = 2.0) -> str:
    """Verdict on "A scores higher than B" (precision, accuracy, throughput); same 2-sigma rule."""
    return verdict_lower_is_better(b_mean, b_std, a_mean, a_std, sigmas)  # "A above B" == "B below A"


def verdict_comparable(a_mean, a_std, b_mean, b_std, rel_tol: float = 0.1, sigmas: float = 2.0) -> str:
    """Verdict on "A matches B" (e.g. same FID at lower cost): reproduced when A is not worse than B by
    more than max(rel_tol * |B|, 2 sigma); not reproduced when A is worse by more than that plus 2 sigma."""
    if a_std is None or b_std is None or any(not _is_number(v) for v in (a_mean, a_std, b_mean, b_std)):
        return "inconclusive"
    sigma, worse = math.hypot(a_std, b_std), a_mean - b_mean
    allowed = max(rel_tol * abs(b_mean), sigmas * sigma)
    if worse <= allowed:
        return "reproduced"
    if worse > allowed + sigmas * sigma:
        return "not reproduced"
    return "inconclusive"


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
