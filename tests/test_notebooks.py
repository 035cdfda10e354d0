"""Figure notebooks run through pipelines.report on fake runs: parameters injected, no error cells, figures;
templates hold calls only; the curves helper on per-checkpoint evaluations."""
import ast
import json
from pathlib import Path

import nbformat
import numpy as np
import pytest

from pipelines import report

ROOT = Path(__file__).resolve().parents[1]


def fake_runs(root):
    """papers/toy/results/runs/{a,b}/s{0,1} with samples + loss.tsv, a video run, metrics.json and a bench JSON."""
    rng = np.random.default_rng(0)
    for v in ("a", "b"):
        for s in (0, 1):
            d = root / "papers" / "toy" / "results" / "runs" / v / f"s{s}"
            (d / "dvclive" / "plots" / "metrics" / "train").mkdir(parents=True)
            np.savez(d / "samples.npz", arr_0=rng.integers(0, 255, (9, 8, 8, 1), dtype=np.uint8),
                     labels=np.arange(9, dtype=np.int64))
            (d / "samples.json").write_text(json.dumps({"sampler": "heun", "steps": 7, "cfg_scale": 1.5,
                                                        "ema": True, "num_samples": 9, "seed": s}))
            (d / "train.json").write_text(json.dumps({"dataset": "mnist5k", "preset": "tiny"}))
            steps = np.arange(0, 200, 10)
            lines = "".join(f"{t}\t{1.0 / (1 + t / 50) + 0.05 * rng.random():.4f}\n" for t in steps)
            (d / "dvclive" / "plots" / "metrics" / "train" / "loss.tsv").write_text("step\tloss\n" + lines)
    evals = root / "papers" / "toy" / "results" / "runs" / "a" / "s0" / "dvclive" / "plots" / "metrics" / "eval"
    evals.mkdir()
    (evals / "fid.tsv").write_text(
        "step\tfid\n100\t50.0\n200\t30.0\n")
    vid = root / "runs" / "vid" / "v" / "s0"
    vid.mkdir(parents=True)
    np.savez(vid / "samples.npz", arr_0=rng.integers(0, 255, (3, 5, 8, 8, 1), dtype=np.uint8),
             labels=np.arange(3, dtype=np.int64))
    res = root / "papers" / "toy" / "results"
    res.mkdir(parents=True, exist_ok=True)
    (res / "metrics.json").write_text(json.dumps({
        "paper": "toy", "title": "Toy", "arxiv": "0000.00000", "preset": "tiny", "dataset": "mnist5k",
        "toy_scale": True,
        "rows": [{"variant": "a", "fid": 10.0, "fid_std": 1.0, "fid_features": "mnist-cnn", "fid_samples": 9},
                 {"variant": "b", "fid": 7.0, "fid_std": None, "fid_features": "mnist-cnn", "fid_samples": 9}],
        "claims": [{"claim": "b beats a", "paper": "1 vs 2", "measured": "7 vs 10", "verdict": "reproduced"}]}))
    (root / "bench.json").write_text(json.dumps(
        [{"mixer": m, "N": n, "ms_fwd_bwd": n * k if n < 256 else None, "peak_mb": n * k / 10}  # as common.bench
         for m, k in (("attention", 2.0), ("pom", 1.0)) for n in (16, 64, 256)]))


def injected(nb):
    """The injected-parameters cell's source."""
    (cell,) = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    return cell.source


def stdout(nb):
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                   if o.output_type == "stream")


def images(nb):
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def errors(nb):
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """Run all three notebooks once through the report CLI (as the DVC stage does)."""
    root = tmp_path_factory.mktemp("repo")
    fake_runs(root)
    rc = report.main(["toy", "--root", str(root), "--notebooks", "samples", "curves", "metrics",
                      "--param", "variants=[b, a]", "--param", "smooth=0.5", "--param", "bench_json=bench.json"])
    assert rc == 0
    return root


@pytest.mark.parametrize("name", ["samples", "curves", "metrics"])
def test_notebook_executes_with_injected_params(executed, name):
    out = executed / "papers" / "toy" / "results" / "notebooks"
    nb = nbformat.read(out / f"{name}.ipynb", as_version=4)
    assert errors(nb) == []
    src = injected(nb)
    assert 'paper = "toy"' in src and 'out_dir = "papers/toy/results"' in src
    html = (out / f"{name}.html").read_text()
    assert "data:image/png;base64" in html
    assert images(nb) == {"samples": 1, "curves": 1, "metrics": 2}[name]  # each figure shown once
    text = stdout(nb)
    if name == "samples":  # the variants parameter selects and orders the grids
        assert 'variants = ["b", "a"]' in src and "variants shown: ['b', 'a']" in text
        assert "papers/toy/results/runs/b/s0" in text  # first seed
    if name == "curves":
        assert "smooth = 0.5" in src and "loss EMA smoothing 0.5" in text
        assert "{'b': 2, 'a': 2}" in text  # all seeds of both variants, in the order asked for
    if name == "metrics":
        assert 'metrics = "papers/toy/results/metrics.json"' in src
        assert 'bench_json = "bench.json"' in src and "scaling figure from bench.json: 6 records" in text


def test_figures_written(executed):
    figs = executed / "papers" / "toy" / "results" / "figures"
    assert {p.name for p in figs.glob("*.png")} == {"samples.png", "curves.png", "metrics.png", "scaling.png"}


def test_video_run_and_failing_notebook(tmp_path):
    fake_runs(tmp_path)
    html = report.run_notebook("samples", report.default_params("toy") | {"runs_dir": "runs/vid"},
                               tmp_path / "nb", root=tmp_path)
    assert (tmp_path / "papers" / "toy" / "results" / "figures" / "video_strips.png").exists()
    assert html.exists()
    with pytest.raises(report.ReportError, match="loss.tsv"):
        report.run_notebook("curves", report.default_params("toy") | {"runs_dir": "runs/vid"},
                            tmp_path / "nb", root=tmp_path)
    assert errors(nbformat.read(tmp_path / "nb" / "curves.ipynb", as_version=4))  # error kept for the reader


def test_parse_params():
    assert report.parse_params(["a=1", "b=[x, y]", "c=", "d=path/to.json"]) == {
        "a": 1, "b": ["x", "y"], "c": "", "d": "path/to.json"}
    with pytest.raises(report.ReportError, match="'oops'"):
        report.parse_params(["oops"])


def test_scaling_notebook_reads_the_pom_bench(tmp_path):
    """The `scaling` figure from a benchmark JSON in the layout `pipelines.bench pom` writes."""
    mix = [{"mixer": m, "N": n, "ms_fwd_bwd": (n if m == "pom" else n * n / 256) / 10, "peak_mb": n / 100,
            "gflop": 1.0, "gflops_per_s": 10.0} for m in ("pom", "attention") for n in (256, 1024, 4096)]
    mix.append({"mixer": "attention", "N": 16384, "ms_fwd_bwd": None, "peak_mb": None, "skipped": "too slow"})
    vid = [{"mixer": m, "frames": f, "peak_mb": 5.0 + (f if m == "attention" else 0), "work_mb": 5.0,
            "s_per_frame": 0.1} for m in ("pom", "attention") for f in (4, 8)]
    bench = {"machine": {"threads": 2}, "rows": mix,
             "scaling": {"rows": mix, "pom_slope": 1.0, "attention_slope": 2.0, "speedup_4096": 16.0,
                         "speedup_16384": None, "crossover_n": 512, "pom_flops_efficiency": 0.7,
                         "protocol": {"dim": 256, "batch": 4, "heads": 4, "pom": {"degree": 2, "expand": 2}}},
             "video": {"rows": vid, "pom_mem_ratio": 1.0, "attention_mem_ratio": 2.2, "frames_lo": 4, "frames_hi": 8,
                       "growth_mb": {"pom": 0.0, "attention": 4.0}, "pom_growth_ratio": 0.0,
                       "checks": {"planted-allocation": {"passed": True, "detail": "seen as 64.1 MB"}},
                       "protocol": {"model": "DiT-M/4", "batch": 8, "steps": 4, "cfg_scale": 2.0}}}
    (tmp_path / "bench.json").write_text(json.dumps(bench))
    assert report.template("scaling", "pom") == ROOT / "papers" / "pom" / "notebooks" / "scaling.ipynb"
    report.run_notebook("scaling", report.default_params("pom") | {"bench": "bench.json"}, tmp_path / "nb",
                        root=tmp_path)
    nb = nbformat.read(tmp_path / "nb" / "scaling.ipynb", as_version=4)
    assert errors(nb) == []
    assert "bench read from bench.json: 6 mixer points, 4 video points" in stdout(nb)
    table = "".join(o.get("data", {}).get("text/markdown", "") for c in nb.cells for o in c.get("outputs", []))
    assert "| same, attention | 4.0 MB |" in table and "self-check `planted-allocation` | passed" in table
    assert (tmp_path / "papers" / "pom" / "results" / "figures" / "scaling.png").exists()
    with pytest.raises(report.ReportError, match="notebook 'scaling' not found: notebooks/scaling.ipynb"):
        report.run_notebook("scaling", report.default_params("dit"), tmp_path / "nb", root=tmp_path)


TEMPLATES = sorted([*(ROOT / "notebooks").glob("*.ipynb"), *(ROOT / "papers").glob("*/notebooks/*.ipynb")])


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_templates_read_like_results(path):
    """A template's cells hold parameters, a call and its figure or table: no helper code (it lives in
    common/report/notebooks.py or the paper's module), no outputs (executed copies are generated)."""
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", [])
    for c in code:
        assert not c.outputs and c.execution_count is None
        tree = ast.parse(c.source)
        assert not [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.For, ast.While,
                                                               ast.If, ast.Lambda, ast.ListComp))], c.source
        assert len(c.source.splitlines()) <= 8, c.source


def _eval_steps(run, fids, ccs):
    run.mkdir(parents=True, exist_ok=True)
    (run / "eval_steps.json").write_text(json.dumps({"checkpoints": [
        {"step": st, "fid": f, "class_consistency": cc, "fid_features": "mnist-cnn"}
        for st, f, cc in zip((500, 1000, 1500), fids, ccs)]}))


def test_curves_plot_every_kept_checkpoint(tmp_path):
    """With eval_steps.json: FID and class-consistency per kept checkpoint, one thin line per seed and
    their mean; the runs root is a parameter."""
    from common.report import notebooks as nb

    fake_runs(tmp_path)
    root = tmp_path / "papers" / "toy" / "results" / "runs"
    _eval_steps(root / "a" / "s0", (30.0, 20.0, 10.0), (0.2, 0.5, 0.9))
    _eval_steps(root / "a" / "s1", (50.0, 40.0, 30.0), (0.4, 0.7, 0.7))
    curves = nb.load_curves(root, ["a", "b"])
    assert [len(r) for r in curves.checkpoints.values()] == [2]
    fig = nb.curves_figure(curves, "toy", smooth=0.5)
    loss, fid, cc = fig.axes
    assert "per checkpoint" in fid.get_title() and "FID (mnist-cnn)" in fid.get_ylabel()
    mean = fid.get_lines()[-1]
    assert list(mean.get_xdata()) == [500, 1000, 1500] and list(mean.get_ydata()) == [40.0, 30.0, 20.0]
    assert list(cc.get_lines()[-1].get_ydata()) == pytest.approx([0.3, 0.6, 0.8])
    assert mean.get_label() == "a (mean of 2 seeds)"
    (root / "a" / "s0" / "eval_steps.json").unlink()
    (root / "a" / "s1" / "eval_steps.json").unlink()
    fallback = nb.curves_figure(nb.load_curves(root, ["a", "b"]), "toy")  # today's: the dvclive fid.tsv
    assert [ax.get_title().split(":")[0] for ax in fallback.axes] == ["Training loss", "FID vs training step"]
    with pytest.raises(FileNotFoundError, match="loss.tsv or eval_steps.json"):
        nb.load_curves(tmp_path / "runs" / "vid")


def test_report_finds_a_papers_own_notebook_before_running():
    """The up-front name check looks where `template` looks: pom's own `scaling` passes it (the run then
    stops at the unknown name after it), dit has no `scaling`."""
    with pytest.raises(report.ReportError, match="notebook 'nosuch' not found.*known: .*scaling"):
        report.main.__wrapped__(["pom", "--notebooks", "scaling", "nosuch"])
    with pytest.raises(report.ReportError, match="notebook 'scaling' not found: .*papers/dit/notebooks/scaling"):
        report.main.__wrapped__(["dit", "--notebooks", "scaling"])
