"""Report stage: execute the figure notebooks of one paper with papermill and export them to HTML.

    python -m pipelines.report <paper> --notebooks samples curves metrics [--param key=value ...]

For each name, the paper's own `papers/<paper>/notebooks/<name>.ipynb`, else the shared
`notebooks/<name>.ipynb`, is executed (kernel `python3`, cwd = repo root) with these parameters
injected, wherever the notebook declares them in its `parameters` cell:

    paper    = <paper>
    runs_dir = papers/<paper>/results/runs (the committed per-run files)
    metrics  = papers/<paper>/results/metrics.json
    out_dir  = papers/<paper>/results          (figures land in <out_dir>/figures/)

`--param key=value` adds or overrides one (the value is read as YAML: `variants=[sit, dit]`, `smooth=0.8`).
Outputs: `papers/<p>/results/notebooks/<name>.ipynb` and `<name>.html` (images embedded), plus the
figures the notebooks save. Executed notebooks are leaves: other stages depend on the figures only.

The `python3` kernel is pinned to the interpreter running this module: a kernel spec naming
`sys.executable` is written to a temporary directory that is put first on JUPYTER_PATH for the
duration of the run, so a user-level `python3` kernel elsewhere cannot shadow the venv. The spec puts
this repository first on the kernel's PYTHONPATH, so the notebooks' helpers (`common.report.notebooks`,
a paper's own modules) are this repository's, whatever the working directory.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

import yaml

from common.errors import UserError
from common.io import check_writable_dir, write_atomic

from ._cli import StageParser, friendly_errors

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ("samples", "curves", "metrics")
KERNEL = "python3"


class ReportError(UserError, RuntimeError):
    """A notebook that is missing or failed; the message names it and where its executed copy is."""


@contextlib.contextmanager
def pinned_kernel(name: str = KERNEL):
    """Make kernel `name` start this interpreter (temporary kernel spec first on JUPYTER_PATH)."""
    old = os.environ.get("JUPYTER_PATH")
    with tempfile.TemporaryDirectory(prefix="diffrepro-kernel-") as tmp:
        spec = Path(tmp) / "kernels" / name
        spec.mkdir(parents=True)
        (spec / "kernel.json").write_text(json.dumps({
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": f"Python 3 ({Path(sys.prefix).name})",
            "language": "python",
            # the notebooks import their helpers (common.report.notebooks, papers.<p>) from this repository
            "env": {"PYTHONPATH": os.pathsep.join([str(ROOT)] + ([os.environ["PYTHONPATH"]]
                                                                  if os.environ.get("PYTHONPATH") else []))},
        }))
        os.environ["JUPYTER_PATH"] = os.pathsep.join([tmp] + ([old] if old else []))
        try:
            yield name
        finally:
            if old is None:
                os.environ.pop("JUPYTER_PATH", None)
            else:
                os.environ["JUPYTER_PATH"] = old


def parse_params(items: list[str]) -> dict:
    """['k=v', ...] -> {k: yaml(v)}; a bad item names itself."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ReportError(f"--param '{item}': expected key=value")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError as e:
            raise ReportError(f"--param '{item}': value is not valid YAML ({getattr(e, 'problem', None) or e})") from e
    return out


def default_params(paper: str) -> dict:
    """The parameters every notebook gets unless overridden (paths relative to the repo root)."""
    results = f"papers/{paper}/results"
    return {"paper": paper, "runs_dir": f"papers/{paper}/results/runs", "metrics": f"{results}/metrics.json",
            "out_dir": results}


def export_html(ipynb: Path) -> Path:
    """Executed notebook -> standalone HTML beside it (figures are base64 in the outputs)."""
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(embed_images=True)
    body, _ = exporter.from_notebook_node(nbformat.read(ipynb, as_version=4))
    html = ipynb.with_suffix(".html")
    write_atomic(html, body)
    return html


def template(name: str, paper: str | None) -> Path:
    """The notebook to run: the paper's own papers/<paper>/notebooks/<name>.ipynb, else notebooks/<name>.ipynb."""
    own = ROOT / "papers" / str(paper) / "notebooks" / f"{name}.ipynb"
    return own if paper and own.exists() else ROOT / "notebooks" / f"{name}.ipynb"


def _declared(name: str, paper: str | None = None) -> set[str]:
    """Parameter names in the `parameters` cell of the notebook `name` (empty if it is missing)."""
    import papermill as pm

    src = template(name, paper)
    return set(pm.inspect_notebook(str(src))) if src.exists() else set()


def _relative_paths(ipynb: Path, root: Path) -> None:
    """papermill records absolute input/output paths; keep them relative to the repo (no machine paths)."""
    import nbformat

    nb = nbformat.read(ipynb, as_version=4)
    meta = nb.metadata.get("papermill", {})
    for key in ("input_path", "output_path"):
        if meta.get(key):
            p = Path(meta[key])
            meta[key] = str(p.relative_to(root) if p.is_relative_to(root) else p.name)
    nbformat.write(nb, ipynb)


def run_notebook(name: str, params: dict, out_dir: Path, root: Path = ROOT, timeout: int = 1200) -> Path:
    """Execute the notebook `name` (`template`; cwd `root`) into out_dir/<name>.ipynb, export HTML;
    ReportError on failure."""
    import papermill as pm

    src = template(name, params.get("paper"))
    if not src.exists():
        raise ReportError(f"notebook '{name}' not found: {src.relative_to(ROOT)}")
    declared = pm.inspect_notebook(str(src))
    inject = {k: v for k, v in params.items() if k in declared}
    out_dir.mkdir(parents=True, exist_ok=True)
    dst = out_dir / f"{name}.ipynb"
    error = None
    with pinned_kernel() as kernel:
        try:
            pm.execute_notebook(str(src), str(dst), parameters=inject, kernel_name=kernel, cwd=str(root),
                                progress_bar=False, execution_timeout=timeout)
        except pm.PapermillExecutionError as e:
            error = e
    _relative_paths(dst, root)
    html = export_html(dst)
    if error is not None:
        raise ReportError(f"notebook '{name}' failed in cell {error.exec_count}: {error.ename}: {error.evalue} "
                          f"(see {html.relative_to(root) if html.is_relative_to(root) else html})")
    return html


@friendly_errors
def main(argv: list[str] | None = None) -> int:
    ap = StageParser("report", __doc__)
    ap.add_argument("paper")
    ap.add_argument("--notebooks", nargs="+", default=list(NOTEBOOKS),
                    help="notebook names (papers/<paper>/notebooks/ first, then notebooks/)")
    ap.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                    help="inject or override a parameter (YAML value); repeatable")
    ap.add_argument("--root", default=str(ROOT), help="working directory the notebooks run in (default: repo root)")
    ap.add_argument("--out", default=None, help="where executed notebooks go (default papers/<p>/results/notebooks)")
    ap.add_argument("--timeout", type=int, default=1200, help="per-cell timeout in seconds")
    args = ap.parse_args(argv)

    params = default_params(args.paper) | parse_params(args.param)
    root = Path(args.root).resolve()
    if not root.is_dir():
        raise ReportError(f"--root '{args.root}' is not a directory")
    missing = [n for n in args.notebooks if not template(n, args.paper).is_file()]  # the paper's own first
    if missing:
        known = sorted({p.stem for d in (ROOT / "notebooks", ROOT / "papers" / args.paper / "notebooks")
                        for p in d.glob("*.ipynb")})
        raise ReportError(f"notebook '{missing[0]}' not found: notebooks/{missing[0]}.ipynb or "
                          f"papers/{args.paper}/notebooks/{missing[0]}.ipynb (known: {', '.join(known)})")
    out = Path(args.out) if args.out else root / "papers" / args.paper / "results" / "notebooks"
    check_writable_dir(out, "--out")
    failed = []
    declared = set().union(*(_declared(n, args.paper) for n in args.notebooks))
    for key in sorted(set(parse_params(args.param)) - declared):
        print(f"[report] warning: --param {key} is declared by none of {args.notebooks}", file=sys.stderr)
    for name in args.notebooks:
        try:
            html = run_notebook(name, params, out.resolve(), root=root, timeout=args.timeout)
            print(f"[report] {name}: {os.path.relpath(html, root)}")
        except ReportError as e:
            print(f"[report] {e}", file=sys.stderr)
            failed.append(name)
    if failed:
        print(f"[report] failed notebooks: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
