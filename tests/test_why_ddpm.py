"""The results page's "Why the DDPM arm fails the gate" (`papers/dit/why_ddpm.py`): written by the results
stage and the `why_ddpm` notebook from pipeline files only (faithful.json, x0_error.json, metrics.json), so
every number it shows moves with those files; a missing file says which stage writes it. And the DVC
wiring of the faithful stage and of the pages that read both files."""
import json
import shlex
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
import yaml

from papers.dit import why_ddpm
from pipelines import report, results

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "data" / "dit_golden.pt"
RESULTS = Path("papers/dit/results")
CC = {"sit": [0.9, 0.92, 0.95], "dit": [0.3, 0.35, 0.3], "dit-v": [0.85, 0.9, 0.88]}
FID = {"sit": [4.0, 4.5, 3.5], "dit": [70.0, 75.0, 72.0], "dit-v": [20.0, 22.0, 21.0]}
LAMBDA = [-8.0, 0.0, 8.0]
X0 = {("sit", "flow", "velocity"): [[0.2, 0.05, 0.001]] * 2,    # two seeds each; dit's noisiest mean 0.6
      ("dit", "ddpm", "eps"): [[0.5, 0.06, 0.002], [0.7, 0.08, 0.002]],
      ("dit-v", "ddpm", "v"): [[0.3, 0.05, 0.001]] * 2}


def fake_results(root: Path) -> Path:
    """papers/dit/results under `root`: per-run eval.json and train.json of sit, dit and dit-v (3 seeds),
    faithful.json from the faithful stage on the real golden file, and an x0_error.json."""
    from pipelines.faithful import main as faithful_main

    out = root / RESULTS
    for v in CC:
        for s in range(3):
            run = out / "runs" / v / f"s{s}"
            run.mkdir(parents=True)
            (run / "eval.json").write_text(json.dumps({"fid": FID[v][s], "class_consistency": CC[v][s],
                                                       "fid_features": "mnist-cnn", "fid_samples": 1000}))
            (run / "train.json").write_text(json.dumps({"params": 1000, "train_steps": 10, "dataset": "mnist5k",
                                                        "preset": "tiny"}))
    faithful_main(["--golden", str(GOLDEN), "--out", str(out / "faithful.json")])
    runs = [{"variant": v, "seed": s, "objective": o, "prediction": p,
             "protocol": {"dataset": "mnist5k", "split": "heldout", "num": 20, "ema": True},
             "points": [{"log_snr": lam, "log_snr_used": lam, "mse": m, "sem": 0.0} for lam, m in zip(LAMBDA, mse)]}
            for (v, o, p), seeds in X0.items() for s, mse in enumerate(seeds)]
    (out / "x0_error.json").write_text(json.dumps({"paper": "dit", "runs": runs}))
    return out


def build(root: Path) -> str:
    results.build("dit", RESULTS / "runs", RESULTS / "metrics.json", notebooks=[], calibration=None)
    return (root / RESULTS / "README.md").read_text()


def section(readme: str) -> str:
    start = readme.index(f"## {why_ddpm.TITLE}")
    end = readme.find("\n## ", start + 1)
    return readme[start:end if end > 0 else None]


def test_results_page_shows_why_from_the_pipeline_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = fake_results(tmp_path)
    page = section(build(tmp_path))
    assert f"fails the quality gate (dit class-consistency {np.mean(CC['dit']):.2f} < 0.8)" in page
    rows = json.loads((out / "faithful.json").read_text())["rows"]
    assert f"All {len(rows)} compared quantities are within tolerance of `facebookresearch/DiT`" in page
    assert "| training loss | float64 | 5 |" in page and "| DDIM step | float32 | 12 |" in page
    # the x0 table: mean over seeds per log-SNR, one column per arm, and the noisiest point's ratios
    assert "| log-SNR | sit (flow, velocity) | dit (ddpm, eps) | dit-v (ddpm, v) |" in page
    assert "| -8 | 0.2 | 0.6 | 0.3 |" in page and "dit 3.00x, dit-v 1.50x" in page
    assert "![x0 error vs log-SNR](figures/x0_error.png)" in page
    # the claim's verdict and both arms' gates, as the results stage judged them
    claim = next(c for c in json.loads((out / "metrics.json").read_text())["claims"]
                 if c["key"] == why_ddpm.CLAIM)
    assert f"**{claim['verdict']}** ({claim['reason']})" in page
    gates = {a: g["passed"] for a, g in claim["gate"]["arms"].items()}
    assert gates == {"dit-v": True, "dit": False}
    assert f"| dit-v | 0, 1, 2 | {np.mean(CC['dit-v']):.3g} | 0.85, 0.90, 0.88 | pass |" in page


def test_missing_files_name_the_stage_that_writes_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = fake_results(tmp_path)
    (out / "faithful.json").unlink()
    (out / "x0_error.json").unlink()
    for s in range(3):  # dit-v did not run
        for f in (out / "runs" / "dit-v" / f"s{s}").iterdir():
            f.unlink()
    page = section(build(tmp_path))
    assert "`faithful.json` is written by `dvc repro papers/dit/dvc.yaml:faithful`" in page
    assert "`x0_error.json` is written by `dvc repro papers/dit/dvc.yaml:x0-error`" in page
    assert "| dit-v | – | – | – | – | did not run |" in page
    assert "(the arm's own gate: the claim was not judged)" in page  # dit's gate, by the rule, from its row


def test_a_difference_from_the_official_code_is_shown():
    from common.diagnostics import faithfulness

    golden = torch.load(GOLDEN, weights_only=True)
    golden["float32"]["train"]["vb"] = golden["float32"]["train"]["vb"] + 1e-3
    line = why_ddpm.faithful_summary(faithfulness(golden))
    assert line.startswith("**Not faithful**: 1 of ") and "training loss / vb (float32: 0.001 > 1e-05)" in line
    assert why_ddpm.faithful_summary({}) == ""


def test_notebook_executes_on_the_pipeline_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fake_results(tmp_path)
    build(tmp_path)
    assert report.template("why_ddpm", "dit") == ROOT / "papers" / "dit" / "notebooks" / "why_ddpm.ipynb"
    report.run_notebook("why_ddpm", report.default_params("dit"), tmp_path / "nb", root=tmp_path)
    nb = nbformat.read(tmp_path / "nb" / "why_ddpm.ipynb", as_version=4)
    outs = [o for c in nb.cells for o in c.get("outputs", [])]
    assert not [o for o in outs if o.get("output_type") == "error"]
    text = "".join(o.get("data", {}).get("text/markdown", "") for o in outs)
    assert "fails the quality gate" in text and "dit 3.00x, dit-v 1.50x" in text
    assert (tmp_path / RESULTS / "figures" / "x0_error.png").is_file()


def test_dvc_wiring():
    """faithful reads the golden file it names and commits its output; the results and report stages
    depend on both diagnostics' outputs and link / run the why_ddpm notebook."""
    stages = yaml.safe_load((ROOT / "papers" / "dit" / "dvc.yaml").read_text())["stages"]
    f = stages["faithful"]
    argv = shlex.split(f["cmd"])
    golden, out = argv[argv.index("--golden") + 1], argv[argv.index("--out") + 1]
    assert (ROOT / golden).is_file() and {golden, "pipelines/faithful.py", "common/diagnostics.py"} <= set(f["deps"])
    assert f["outs"] == [{out: {"cache": False}}]
    x0 = next(iter(stages["x0-error"]["outs"][0]))
    for name in ("results", "report"):
        assert {out, x0, "papers/dit/why_ddpm.py"} <= set(stages[name]["deps"]), name
        assert why_ddpm.NOTEBOOK in shlex.split(stages[name]["cmd"]), name
