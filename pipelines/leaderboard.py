"""Leaderboard stage: one static page comparing every paper's results.

    python -m pipelines.leaderboard --papers papers --out leaderboard

Reads every `papers/<p>/results/metrics.json` plus the title/arXiv id of `papers/<p>/__init__.py`
(parsed with `ast`, so no torch-heavy module is imported) and writes:

- `leaderboard/index.html`: plain HTML, inline CSS and a little inline JS (no CDN), works from file://.
  One table, one row per paper x variant, sortable by clicking a column header; a "toy scale" label
  on toy-scale rows; per paper a claims table, a thumbnail per variant (copied into
  `leaderboard/assets/`), links to arXiv, the paper's README.md and its executed notebooks.
- `leaderboard/data.json`: the same content as data.

A metrics.json that is unparseable, partial or fails validation becomes a visible error row naming
the problem; the rest of the page is still built. Paths in metrics.json are relative to the repo
root, which is the parent of `--papers` unless `--root` says otherwise.
"""
from __future__ import annotations

import argparse
import ast
import datetime as dt
import html
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

VERDICTS = ("reproduced", "not reproduced", "inconclusive")
TOY_DATASETS = ("mnist5k", "moving_mnist")
NUMERIC = ("fid", "fid_std", "fid_samples", "kid", "precision", "recall", "class_consistency", "params",
           "gflops", "train_steps", "train_img_per_s", "sample_s_per_img", "sample_steps", "cfg_scale")


# ----------------------------------------------------------------------------------------------------------
# reading


def paper_meta(init: Path) -> dict:
    """Title (docstring first line or TITLE) and ARXIV of a paper package, read with ast (not imported)."""
    meta = {"title": None, "arxiv": None}
    if not init.exists():
        return meta
    try:
        tree = ast.parse(init.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError):
        return meta
    doc = ast.get_docstring(tree)
    if doc:
        meta["title"] = doc.strip().splitlines()[0].strip()
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name in ("TITLE", "ARXIV"):
                try:
                    meta[name.lower()] = str(ast.literal_eval(node.value))
                except ValueError:
                    pass
    return meta


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def basic_problems(data) -> list[str]:
    """Minimal schema checks, used when common.metrics.schema is not available."""
    if not isinstance(data, dict):
        return [f"top level is {type(data).__name__}, expected an object"]
    problems = []
    rows = data.get("rows")
    if not isinstance(rows, list) or not rows:
        problems.append("'rows' is missing or empty")
        rows = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            problems.append(f"rows[{i}] is not an object")
            continue
        if not isinstance(row.get("variant"), str) or not row["variant"]:
            problems.append(f"rows[{i}].variant is missing")
        for key in NUMERIC:
            if row.get(key) is not None and not _is_num(row[key]):
                problems.append(f"rows[{i}].{key} = {row[key]!r} is not a number")
        seeds = row.get("seeds")
        if seeds is not None and not (isinstance(seeds, list) and all(isinstance(s, int) for s in seeds)):
            problems.append(f"rows[{i}].seeds = {seeds!r} is not a list of ints")
    claims = data.get("claims", [])
    if not isinstance(claims, list):
        problems.append("'claims' is not a list")
        claims = []
    for i, c in enumerate(claims):
        if not isinstance(c, dict) or "claim" not in c:
            problems.append(f"claims[{i}] has no 'claim'")
    if data.get("notebooks") is not None and not isinstance(data["notebooks"], dict):
        problems.append("'notebooks' is not an object")
    return problems


def validation_problems(data) -> list[str]:
    """Problems found by common.metrics.schema.validate_metrics (the project's schema), or by our own
    basic_problems when that module cannot be imported. The validator may return a list or raise."""
    try:
        from common.metrics.schema import validate_metrics
    except Exception:  # noqa: BLE001 - missing or broken schema module: fall back to the basic checks
        return basic_problems(data)
    try:
        found = validate_metrics(data)
    except Exception as e:  # noqa: BLE001 - a crash in validation is a problem to show, not a broken page
        return [f"{type(e).__name__}: {e}"]
    if isinstance(found, str):
        return [found]
    return [str(p) for p in found or []]


def is_toy(data: dict) -> bool:
    if "toy_scale" in data and data["toy_scale"] is not None:
        return bool(data["toy_scale"])
    return str(data.get("dataset", "")).lower() in TOY_DATASETS or data.get("preset") == "tiny"


def load_paper(pdir: Path, root: Path, out: Path) -> dict:
    """One paper's entry for data.json: status "ok", "error" or "pending" (no metrics.json yet)."""
    meta = paper_meta(pdir / "__init__.py")
    entry = {"paper": pdir.name, "title": meta["title"] or pdir.name, "arxiv": meta["arxiv"],
             "status": "ok", "error": None, "rows": [], "claims": [], "notebooks": {},
             "readme": _href(pdir / "README.md", out) if (pdir / "README.md").exists() else None,
             "results_md": (_href(pdir / "results" / "README.md", out)
                            if (pdir / "results" / "README.md").exists() else None)}
    path = pdir / "results" / "metrics.json"
    rel = _rel(path, root)
    if not path.exists():
        entry.update(status="pending", error=f"{rel} not found (run: dvc repro {_rel(pdir, root)}/dvc.yaml)")
        return entry
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        entry.update(status="error", error=f"{rel} is not valid JSON: {e}")
        return entry
    problems = validation_problems(data)
    if problems:
        more = f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""
        entry.update(status="error", error=f"{rel}: " + "; ".join(problems[:5]) + more)
        return entry
    toy = is_toy(data)
    entry.update(title=data.get("title") or entry["title"], arxiv=data.get("arxiv") or entry["arxiv"],
                 dataset=data.get("dataset"), preset=data.get("preset"), toy_scale=toy,
                 claims=data.get("claims") or [])
    for name, href in (data.get("notebooks") or {}).items():
        target = root / str(href)
        entry["notebooks"][name] = {"href": _href(target, out), "exists": target.exists()}
    for row in data["rows"]:
        row = dict(row)
        row.update(paper=pdir.name, dataset=row.get("dataset") or data.get("dataset"),
                   preset=row.get("preset") or data.get("preset"), toy_scale=toy)
        row["thumbnail"] = _copy_thumb(row.get("thumbnail"), pdir.name, row["variant"], root, out)
        entry["rows"].append(row)
    return entry


def _rel(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.name


def _href(target: Path, out: Path) -> str:
    return Path(os.path.relpath(target.resolve(), out.resolve())).as_posix()


def _copy_thumb(src, paper: str, variant: str, root: Path, out: Path) -> str | None:
    """Copy a row's thumbnail into <out>/assets/ and return its href relative to the page."""
    if not src or not (root / str(src)).is_file():
        return None
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{paper}-{variant}")
    dst = out / "assets" / f"{safe}{Path(str(src)).suffix.lower() or '.png'}"
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(root / str(src), dst)
    return dst.relative_to(out).as_posix()


def git_revision(root: Path) -> str | None:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (rev.stdout.strip() or None) if rev.returncode == 0 else None


def collect(papers: Path, root: Path, out: Path) -> dict:
    """Everything the page shows, as plain data (also written as data.json)."""
    stamp = os.environ.get("SOURCE_DATE_EPOCH")  # reproducible builds may pin the time
    now = dt.datetime.fromtimestamp(int(stamp), dt.timezone.utc) if stamp else dt.datetime.now(dt.timezone.utc)
    dirs = sorted(d for d in papers.iterdir() if d.is_dir() and not d.name.startswith(("_", ".")))
    entries = [load_paper(d, root, out) for d in dirs
               if (d / "__init__.py").exists() or (d / "results" / "metrics.json").exists()]
    return {"generated_at": now.isoformat(timespec="seconds"), "git_rev": git_revision(root),
            "papers": entries, "rows": [r for e in entries for r in e["rows"]]}


# ----------------------------------------------------------------------------------------------------------
# rendering

E = html.escape


def _num(v, fmt: str) -> str:
    return format(v, fmt) if _is_num(v) else "–"


def _si(v) -> str:
    if not _is_num(v):
        return "–"
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.3g}{unit}"
    return f"{v:g}"


def _cell(text: str, sort, cls: str = "") -> str:
    key = "" if sort is None or (isinstance(sort, float) and not math.isfinite(sort)) else str(sort)
    return f'<td data-sort="{E(key)}"{f" class={chr(34)}{cls}{chr(34)}" if cls else ""}>{text}</td>'


def _sampler(row: dict) -> str:
    ema = {True: "EMA", False: "raw"}.get(row.get("ema"), "")
    parts = [str(row.get("sampler") or ""), f"{row['sample_steps']} steps" if row.get("sample_steps") else "",
             f"cfg {row['cfg_scale']:g}" if _is_num(row.get("cfg_scale")) else "", ema]
    return ", ".join(p for p in parts if p) or "–"


def toy_label(dataset) -> str:
    return f'<span class="toy">toy scale: {E(str(dataset or "?"))}, not comparable to ImageNet FIDs</span>'


COLUMNS = ["paper", "variant", "dataset", "preset", "FID", "class-consistency", "params", "GFLOPs",
           "train img/s", "sampling s/img", "train steps", "sampler", "seeds"]


def render_row(r: dict) -> str:
    fid = r.get("fid")
    fid_txt = _num(fid, ".2f") + (f" ± {r['fid_std']:.2f}" if _is_num(r.get("fid_std")) else "")
    proto = ", ".join(p for p in (r.get("fid_features"), f"n={r['fid_samples']}" if r.get("fid_samples") else "")
                      if p)
    fid_html = f"{E(fid_txt)}<br><small>{E(proto)}</small>" if proto else E(fid_txt)
    seeds = r.get("seeds") or []
    toy = f"<br>{toy_label(r.get('dataset'))}" if r.get("toy_scale") else ""
    cells = [
        _cell(f'<a href="#paper-{E(r["paper"])}">{E(r["paper"])}</a>', r["paper"]),
        _cell(E(r["variant"]), r["variant"]),
        _cell(E(str(r.get("dataset") or "–")) + toy, r.get("dataset") or ""),
        _cell(E(str(r.get("preset") or "–")), r.get("preset") or ""),
        _cell(fid_html, fid if _is_num(fid) else None, "num"),
        _cell(_num(r.get("class_consistency"), ".3f"), r.get("class_consistency"), "num"),
        _cell(_si(r.get("params")), r.get("params"), "num"),
        _cell(_num(r.get("gflops"), ".3g"), r.get("gflops"), "num"),
        _cell(_num(r.get("train_img_per_s"), ".1f"), r.get("train_img_per_s"), "num"),
        _cell(_num(r.get("sample_s_per_img"), ".3g"), r.get("sample_s_per_img"), "num"),
        _cell(_si(r.get("train_steps")), r.get("train_steps"), "num"),
        _cell(E(_sampler(r)), _sampler(r)),
        _cell(E(",".join(map(str, seeds)) or "–"), len(seeds) if seeds else None, "num"),
    ]
    return f'<tr class="{"toyrow" if r.get("toy_scale") else ""}">' + "".join(cells) + "</tr>"


def render_paper(p: dict) -> str:
    links = []
    if p.get("arxiv"):
        links.append(f'<a href="https://arxiv.org/abs/{E(p["arxiv"])}">arXiv:{E(p["arxiv"])}</a>')
    if p.get("readme"):
        links.append(f'<a href="{E(p["readme"])}">README.md</a>')
    if p.get("results_md"):
        links.append(f'<a href="{E(p["results_md"])}">results tables (incl. CPU time)</a>')
    for name, nb in p.get("notebooks", {}).items():
        links.append(f'<a href="{E(nb["href"])}">{E(name)} notebook</a>' if nb["exists"]
                     else f'<span class="missing" title="{E(nb["href"])} not found">{E(name)} notebook (missing)</span>')
    head = f'<h2>{E(p["title"])} <small>({E(p["paper"])})</small></h2><p class="links">{" · ".join(links)}</p>'
    if p["status"] != "ok":
        return f'<section id="paper-{E(p["paper"])}" class="paper">{head}<p class="err">{E(p["error"])}</p></section>'
    proto = f'dataset <b>{E(str(p.get("dataset")))}</b>, preset <b>{E(str(p.get("preset")))}</b>'
    if p.get("toy_scale"):
        proto += " " + toy_label(p.get("dataset"))
    claims = "".join(
        f'<tr><td>{E(str(c.get("claim", "")))}</td><td>{E(str(c.get("paper", "")))}</td>'
        f'<td>{E(str(c.get("measured", "")))}</td>'
        f'<td class="verdict v-{E(str(c.get("verdict", "")).strip().lower().replace(" ", "-"))}">'
        f'{E(str(c.get("verdict", "")))}</td></tr>' for c in p["claims"])
    claims_html = ('<table class="claims"><thead><tr><th>claim</th><th>paper</th><th>measured</th>'
                   f'<th>verdict</th></tr></thead><tbody>{claims}</tbody></table>' if claims
                   else "<p>No claims recorded.</p>")
    thumbs = "".join(
        f'<figure><img src="{E(r["thumbnail"])}" alt="samples of {E(r["variant"])}" loading="lazy">'
        f'<figcaption>{E(r["variant"])}<br><small>{E(_sampler(r))}</small></figcaption></figure>'
        for r in p["rows"] if r.get("thumbnail"))
    return (f'<section id="paper-{E(p["paper"])}" class="paper">{head}<p>{proto}</p>{claims_html}'
            f'<div class="thumbs">{thumbs}</div></section>')


CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5em auto;max-width:1400px;padding:0 1em;color:#222}
h1{margin-bottom:.1em} .meta{color:#666;margin-top:0}
table{border-collapse:collapse;margin:.6em 0} th,td{border:1px solid #ddd;padding:4px 8px;vertical-align:top}
#board th{background:#f3f3f3;cursor:pointer;user-select:none;white-space:nowrap}
#board th[aria-sort=ascending]::after{content:" \\25B2"} #board th[aria-sort=descending]::after{content:" \\25BC"}
#board td.num{text-align:right;white-space:nowrap} #board tbody tr:nth-child(even){background:#fafafa}
small{color:#666} .toy{display:inline-block;background:#fff3cd;border:1px solid #e0c46c;border-radius:3px;
padding:0 4px;font-size:11px;color:#6b5200;margin-top:2px}
tr.error td{background:#fde2e2;color:#8a1111} .err{background:#fde2e2;color:#8a1111;padding:6px}
.verdict{font-weight:600} .v-reproduced{background:#d4f4d4} .v-not-reproduced{background:#fbd0d0}
.v-inconclusive{background:#fcefc2} .missing{color:#a00}
.thumbs{display:flex;flex-wrap:wrap;gap:12px} figure{margin:0;text-align:center}
figure img{width:160px;image-rendering:pixelated;border:1px solid #ccc} .paper{border-top:2px solid #eee;margin-top:1.5em}
"""

JS = """
(function () {
  var table = document.getElementById('board');
  var body = table.tBodies[0];
  function key(row, i) { return row.cells[i].getAttribute('data-sort'); }
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, i) {
    th.addEventListener('click', function () {
      var dir = th.getAttribute('aria-sort') === 'ascending' ? -1 : 1;
      var rows = Array.prototype.slice.call(body.rows);
      var numeric = rows.every(function (r) { var k = key(r, i); return k === '' || isFinite(Number(k)); });
      rows.sort(function (a, b) {
        var x = key(a, i), y = key(b, i);
        if (x === '' || y === '') { return (x === '') - (y === ''); }  // empty cells always last
        var c = numeric ? Number(x) - Number(y) : x.localeCompare(y, undefined, {numeric: true});
        return dir * c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) { h.removeAttribute('aria-sort'); });
      th.setAttribute('aria-sort', dir === 1 ? 'ascending' : 'descending');
    });
  });
})();
"""


def render(data: dict) -> str:
    head = "".join(f'<th title="click to sort">{E(c)}</th>' for c in COLUMNS)
    rows = "".join(render_row(r) for r in data["rows"])
    errors = "".join(
        f'<tr class="error"><td><a href="#paper-{E(p["paper"])}">{E(p["paper"])}</a></td>'
        f'<td colspan="{len(COLUMNS) - 1}">error: {E(p["error"])}</td></tr>'
        for p in data["papers"] if p["status"] == "error")
    pending = [p for p in data["papers"] if p["status"] == "pending"]
    pending_html = ("<p><small>No results yet: " + ", ".join(E(p["paper"]) for p in pending) + "</small></p>"
                    if pending else "")
    rev = data.get("git_rev") or "unknown"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>diffrepro leaderboard</title><style>{CSS}</style></head>
<body>
<h1>diffrepro leaderboard</h1>
<p class="meta" id="generated">Generated at {E(data["generated_at"])} from git revision <code>{E(rev)}</code>.
FID: lower is better; each value carries its feature space and sample count. Click a column header to sort.</p>
<table id="board"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody><tbody class="errors">{errors}</tbody></table>
{pending_html}
{"".join(render_paper(p) for p in data["papers"] if p["status"] != "pending")}
<script>{JS}</script>
</body></html>
"""


def build(papers: Path, out: Path, root: Path | None = None) -> dict:
    """Write <out>/index.html, <out>/data.json and <out>/assets/; return the data."""
    papers = Path(papers)
    if not papers.is_dir():
        raise FileNotFoundError(f"--papers '{papers}' is not a directory")
    root = Path(root) if root else papers.resolve().parent
    out = Path(out)
    if (out / "assets").exists():
        shutil.rmtree(out / "assets")  # rewrite outputs completely (DVC stage rule)
    out.mkdir(parents=True, exist_ok=True)
    data = collect(papers, root, out)
    (out / "data.json").write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")
    (out / "index.html").write_text(render(data), encoding="utf-8")
    return data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--papers", default="papers", help="directory holding papers/<p>/results/metrics.json")
    ap.add_argument("--out", default="leaderboard", help="output directory for index.html and data.json")
    ap.add_argument("--root", default=None, help="repo root the metrics.json paths are relative to "
                                                 "(default: parent of --papers)")
    args = ap.parse_args(argv)
    data = build(Path(args.papers), Path(args.out), Path(args.root) if args.root else None)
    bad = [p["paper"] for p in data["papers"] if p["status"] == "error"]
    ok = sum(p["status"] == "ok" for p in data["papers"])
    print(f"[leaderboard] {len(data['rows'])} rows from {ok} papers -> "
          f"{Path(args.out) / 'index.html'}" + (f"; errors in {bad}" if bad else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
