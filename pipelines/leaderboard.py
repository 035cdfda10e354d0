"""Leaderboard stage: one static page comparing every paper's results.

    python -m pipelines.leaderboard --papers papers --out leaderboard

Reads every `<papers>/<p>/results/metrics.json`, checks it with the one schema validator
(`common.metrics.schema.validate_metrics`) and writes `<out>/data.json` and `<out>/index.html`: the page
template `common/report/leaderboard.html` (package data) with data.json embedded, drawn by the
template's own script (no CDN, works from file://). Row thumbnails are copied into `<out>/assets/`. A
paper folder without a metrics.json yet is listed as pending, with the title and arXiv id of its
`__init__.py` (read with `ast`, so no torch-heavy module is imported). Every claim's verdict is shown with
its rule, its gate and its reason (claims written before those keys existed show the verdict alone), the
verdict rule and the gates are stated once at the top, and a paper's `results/sweep.json` (the recipe
sweep's table, `python -m pipelines.sweep`) becomes the "Shared reference recipe" section.

A metrics.json (or sweep.json) that is not JSON or fails the schema, a thumbnail it names that does not exist, a missing
`--papers` directory or an `--out` that cannot be written stops the stage: one line on stderr naming the
file (and key), exit code 2, nothing written. Paths inside metrics.json are relative to the repo root,
the parent of `--papers` unless `--root` says otherwise.
"""
from __future__ import annotations

import ast
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

from common.errors import UserError
from common.metrics import schema
from common.metrics.schema import validate_metrics

from ._cli import StageParser, friendly_errors

PLACEHOLDER = "{{ data.json }}"  # where the template takes data.json

# The verdict rule and the gates, stated once on the page (the schema owns both texts).
RULE_TEXT, GATE_TEXT = schema.RULE_ONLY_TEXT, schema.GATE_TEXT


class LeaderboardError(UserError, RuntimeError):
    """A malformed input or an unwritable output; the message names the file (and key)."""


def paper_meta(init: Path) -> dict:
    """Title (docstring first line, or TITLE) and ARXIV of a paper package, read with ast (not imported)."""
    meta = {"title": None, "arxiv": None}
    try:
        tree = ast.parse(init.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return meta
    doc = ast.get_docstring(tree)
    if doc:
        meta["title"] = doc.strip().splitlines()[0].strip()
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) \
                and node.targets[0].id in ("TITLE", "ARXIV") and isinstance(node.value, ast.Constant):
            meta[node.targets[0].id.lower()] = str(node.value.value)
    return meta


def _rel(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def _href(target: Path, out: Path) -> str:
    return Path(os.path.relpath(target.resolve(), out.resolve())).as_posix()


def _read_json(path: Path, rel: str):
    """Parsed JSON of `path`; LeaderboardError names the file (`rel`) when it cannot be read or parsed."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise LeaderboardError(f"{rel}: cannot be read ({e})") from e
    except json.JSONDecodeError as e:
        raise LeaderboardError(f"{rel}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from e


def read_metrics(path: Path, root: Path) -> dict:
    """A paper's metrics.json, parsed and schema-checked; LeaderboardError names the file and the key."""
    rel = _rel(path, root)
    doc = _read_json(path, rel)
    problems = validate_metrics(doc)
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise LeaderboardError(f"{rel}: {problems[0]}{more}")
    return doc


def load_paper(pdir: Path, root: Path, out: Path, copies: list[tuple[Path, Path]]) -> dict:
    """One paper's entry of data.json: status "ok" or "pending" (no metrics.json yet). Thumbnails to
    copy are appended to `copies` as (source, destination) and written only once everything is valid."""
    meta = paper_meta(pdir / "__init__.py")
    files = {"readme": pdir / "README.md", "results_md": pdir / "results" / "README.md"}
    entry = {"paper": pdir.name, "title": meta["title"] or pdir.name, "arxiv": meta["arxiv"], "status": "ok",
             "rows": [], "claims": [], "notebooks": {},
             **{k: _href(p, out) if p.is_file() else None for k, p in files.items()}}
    path = pdir / "results" / "metrics.json"
    if not path.exists():
        return {**entry, "status": "pending", "todo": f"run: dvc repro {_rel(pdir, root)}/dvc.yaml"}
    doc = read_metrics(path, root)
    toy = doc["toy_scale"] if doc.get("toy_scale") is not None else doc["preset"] != "paper"
    entry.update(title=doc["title"], arxiv=doc["arxiv"], dataset=doc["dataset"], preset=doc["preset"],
                 toy_scale=toy, claims=doc.get("claims") or [], rule=doc.get("rule"))
    for name, href in (doc.get("notebooks") or {}).items():
        entry["notebooks"][name] = {"href": _href(root / href, out), "exists": (root / href).exists()}
    for i, row in enumerate(doc["rows"]):
        row = {**row, "paper": pdir.name, "dataset": row.get("dataset") or doc["dataset"], "preset": doc["preset"],
               "toy_scale": toy}
        if row.get("thumbnail"):
            src = root / row["thumbnail"]
            if not src.is_file():
                raise LeaderboardError(f"{_rel(path, root)}: rows[{i}] ({row['variant']}): 'thumbnail' "
                                       f"'{row['thumbnail']}' does not exist")
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{pdir.name}-{row['variant']}")
            row["thumbnail"] = f"assets/{safe}{src.suffix.lower() or '.png'}"
            copies.append((src, out / row["thumbnail"]))
        entry["rows"].append(row)
    return entry


def read_sweep(path: Path, root: Path) -> dict:
    """A paper's `results/sweep.json` (written by `pipelines.sweep`), checked just enough to draw its table;
    LeaderboardError names the file and the key."""
    rel = _rel(path, root)
    doc = _read_json(path, rel)
    if not isinstance(doc, dict) or not isinstance(doc.get("rows"), list):
        raise LeaderboardError(f"{rel}: must be an object with a list 'rows' (re-run python -m pipelines.sweep)")
    for i, r in enumerate(doc["rows"]):
        if not isinstance(r, dict) or not isinstance(r.get("name"), str):
            raise LeaderboardError(f"{rel}: rows[{i}] must be an object with a string 'name'")
        if not isinstance(r.get("changed", {}), dict):
            raise LeaderboardError(f"{rel}: rows[{i}] ({r['name']}): 'changed' must be an object")
    return doc


def git_revision(root: Path) -> str | None:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (rev.stdout.strip() or None) if rev.returncode == 0 else None


def collect(papers: Path, root: Path, out: Path) -> tuple[dict, list[tuple[Path, Path]]]:
    """Everything the page shows, as plain data (written as data.json), and the thumbnails to copy."""
    stamp = os.environ.get("SOURCE_DATE_EPOCH")  # reproducible builds may pin the time
    now = dt.datetime.fromtimestamp(int(stamp), dt.timezone.utc) if stamp else dt.datetime.now(dt.timezone.utc)
    dirs = sorted(d for d in papers.iterdir() if d.is_dir() and not d.name.startswith(("_", ".")))
    copies: list[tuple[Path, Path]] = []
    entries = [load_paper(d, root, out, copies) for d in dirs
               if (d / "__init__.py").exists() or (d / "results" / "metrics.json").exists()]
    sweeps = [{**read_sweep(d / "results" / "sweep.json", root), "paper": d.name} for d in dirs
              if (d / "results" / "sweep.json").is_file()]
    data = {"generated_at": now.isoformat(timespec="seconds"), "git_rev": git_revision(root),
            "rule": {"text": RULE_TEXT, "gates": GATE_TEXT}, "papers": entries,
            "rows": [r for e in entries for r in e["rows"]], "sweeps": sweeps}
    return data, copies


def render(data: dict) -> str:
    """The page: the template with data.json embedded (every `<` written as \\u003c, so no string in it
    can close or comment out the script element)."""
    template = resources.files("common.report").joinpath("leaderboard.html").read_text(encoding="utf-8")
    if template.count(PLACEHOLDER) != 1:
        raise LeaderboardError(f"common/report/leaderboard.html must hold '{PLACEHOLDER}' exactly once")
    return template.replace(PLACEHOLDER, json.dumps(data, default=str).replace("<", "\\u003c"))


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def build(papers: Path, out: Path, root: Path | None = None) -> dict:
    """Check every input, then write <out>/index.html, <out>/data.json and <out>/assets/; return the data."""
    papers, out = Path(papers), Path(out)
    if not papers.is_dir():
        raise LeaderboardError(f"--papers '{papers}' is not a directory")
    root = Path(root) if root else papers.resolve().parent
    data, copies = collect(papers, root, out)
    page = render(data)
    try:
        out.mkdir(parents=True, exist_ok=True)
        staged = out / "assets.tmp"
        shutil.rmtree(staged, ignore_errors=True)
        staged.mkdir()
        for src, dst in copies:
            shutil.copyfile(src, staged / dst.name)
        shutil.rmtree(out / "assets", ignore_errors=True)  # outputs are rewritten completely (DVC stage rule)
        staged.rename(out / "assets")
        _write(out / "data.json", json.dumps(data, indent=1, default=str) + "\n")
        _write(out / "index.html", page)
    except OSError as e:
        raise LeaderboardError(f"--out '{out}' cannot be written ({e.strerror or e}: "
                               f"'{e.filename or out}')") from e
    return data


@friendly_errors
def main(argv: list[str] | None = None) -> int:
    ap = StageParser("leaderboard", __doc__)
    ap.add_argument("--papers", default="papers", help="directory holding <p>/results/metrics.json")
    ap.add_argument("--out", default="leaderboard", help="output directory for index.html and data.json")
    ap.add_argument("--root", default=None, help="repo root the metrics.json paths are relative to "
                                                 "(default: parent of --papers)")
    args = ap.parse_args(argv)
    data = build(Path(args.papers), Path(args.out), Path(args.root) if args.root else None)
    ok = sum(p["status"] == "ok" for p in data["papers"])
    print(f"[leaderboard] {len(data['rows'])} rows from {ok} papers -> {Path(args.out) / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
