"""Leaderboard stage: data.json content, the template fill, assets, links; bad inputs stop the stage with
one line naming the file and key, and nothing written. What a reader sees is checked in test_browser.py."""
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_sweep import write_sweep

from common.metrics import schema
from pipelines import leaderboard

ROOT = Path(__file__).resolve().parents[1]


def row(variant, fid, **kw):
    return {"variant": variant, "fid": fid, "fid_std": 0.5, "fid_features": "mnist-cnn", "fid_samples": 500,
            "class_consistency": 0.9, "params": 1_300_000, "gflops": 0.12, "train_steps": 4000,
            "train_img_per_s": 300.0, "sample_s_per_img": 0.01, "seeds": [0, 1], "sampler": "euler",
            "sample_steps": 50, "cfg_scale": 2.0, "ema": True, **kw}


CLAIM = {"claim": "b beats a", "paper": "2.1 vs 2.3", "measured": "3.5 vs 12.0", "verdict": "reproduced",
         "key": "b-beats-a", "compares": ["b", "a"], "metric": "fid", "direction": "lower", "kind": "better",
         "margin": 1.0, "rule": "b's FID is lower than a's by more than 1.0, one-sided Welch p < 0.05",
         "values": {"b": [3.4, 3.6], "a": [11.9, 12.1]},
         "estimate": {"diff": 8.5, "ci90": [8.2, 8.8], "p_one_sided": 0.001, "df": 2.0},
         "gate": {"passed": True, "detail": "b 0.90 >= 0.8 (pass); a 0.90 (pass)",
                  "arms": {"b": {"passed": True, "detail": "b 0.90 >= 0.8"}}},
         "outcome": "better", "reason": "b is better by 8.5 (90% CI 8.2 to 8.8), beyond the margin 1.0",
         "seeds_needed": None}
GOOD_TOP = {"paper": "x", "title": "X", "arxiv": "2411.12663", "preset": "tiny", "dataset": "mnist5k"}


@pytest.fixture
def repo(tmp_path):
    """A repo root with papers/good (3 variants, a thumbnail, a notebook) and papers/todo (no results)."""
    good = tmp_path / "papers" / "good"
    (good / "results" / "notebooks").mkdir(parents=True)
    (good / "__init__.py").write_text('"""Good Paper: a title line.\n\nDetails."""\nimport torch\n'
                                      'TITLE = "Good Paper"\nARXIV = "2411.12663"\n')
    (good / "README.md").write_text("# good\n")
    (good / "results" / "README.md").write_text("# good: results\n")
    from PIL import Image
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(good / "results" / "a_grid.png")
    (good / "results" / "notebooks" / "samples.html").write_text("<html></html>")
    (good / "results" / "metrics.json").write_text(json.dumps({
        "paper": "good", "title": "Good Paper </script>", "arxiv": "2411.12663", "preset": "tiny",
        "dataset": "mnist5k", "toy_scale": True,
        "rows": [row("a", 12.0, thumbnail="papers/good/results/a_grid.png"), row("b", 3.5),
                 row("c", 30.0, fid_std=None, seeds=None, class_consistency=None)],
        "claims": [CLAIM],
        "notebooks": {"samples": "papers/good/results/notebooks/samples.html",
                      "curves": "papers/good/results/notebooks/curves.html"}}))
    (tmp_path / "papers" / "todo").mkdir()
    (tmp_path / "papers" / "todo" / "__init__.py").write_text('"""Todo paper."""\n')
    return tmp_path


def embedded(page: str) -> dict:
    (text,) = re.findall(r'<script id="leaderboard-data" type="application/json">(.*?)</script>', page, re.S)
    return json.loads(text)


def test_data_json_rows_and_meta(repo):
    out = repo / "leaderboard"
    leaderboard.build(repo / "papers", out)
    data = json.loads((out / "data.json").read_text())
    assert [(r["paper"], r["variant"]) for r in data["rows"]] == [("good", "a"), ("good", "b"), ("good", "c")]
    assert all(r["dataset"] == "mnist5k" and r["toy_scale"] for r in data["rows"])
    assert {p["paper"]: p["status"] for p in data["papers"]} == {"good": "ok", "todo": "pending"}
    good, todo = data["papers"]
    assert good["arxiv"] == "2411.12663" and good["readme"] == "../papers/good/README.md"
    assert good["results_md"] == "../papers/good/results/README.md"
    assert good["notebooks"]["samples"] == {"href": "../papers/good/results/notebooks/samples.html", "exists": True}
    assert good["notebooks"]["curves"]["exists"] is False
    assert todo["title"] == "Todo paper." and todo["todo"] == "run: dvc repro papers/todo/dvc.yaml"
    assert data["generated_at"]


def test_page_is_the_template_with_data_json_embedded(repo):
    out = repo / "leaderboard"
    data = leaderboard.build(repo / "papers", out)
    page = (out / "index.html").read_text()
    assert embedded(page) == json.loads((out / "data.json").read_text()) == json.loads(json.dumps(data))
    assert "</script>" not in page.split('type="application/json">', 1)[1].split("</script>", 1)[0]
    template = (ROOT / "common" / "report" / "leaderboard.html").read_text()
    head, tail = template.split(leaderboard.PLACEHOLDER)
    assert page.startswith(head) and page.endswith(tail)  # the stage only fills the placeholder
    assert "http://" not in page and "https://" not in page.replace("https://arxiv.org/abs/", "")  # no CDN


def test_template_is_package_data():
    from setuptools.config.pyprojecttoml import read_configuration

    globs = read_configuration(ROOT / "pyproject.toml")["tool"]["setuptools"]["package-data"]["common.report"]
    assert "leaderboard.html" in {p.name for g in globs for p in (ROOT / "common" / "report").glob(g)}


def test_thumbnail_copied_into_assets(repo):
    out = repo / "leaderboard"
    (out / "assets").mkdir(parents=True)
    (out / "assets" / "stale.png").write_text("old")
    data = leaderboard.build(repo / "papers", out)
    thumb = data["rows"][0]["thumbnail"]
    assert thumb == "assets/good-a.png" and (out / thumb).is_file()
    assert data["rows"][1].get("thumbnail") is None
    assert sorted(p.name for p in (out / "assets").iterdir()) == ["good-a.png"]  # rewritten completely


def _tree(path: Path) -> dict:
    return {p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()} if path.exists() else {}


@pytest.fixture
def cli(capsys):
    """The stage's main() in this process: (exit code, stdout, stderr)."""
    def run(*args):
        try:
            code = leaderboard.main([str(a) for a in args])
        except SystemExit as e:  # the one error path: one stderr line, exit 2
            code = e.code
        out, err = capsys.readouterr()
        return code, out, err
    return run


def _bad(repo, text):
    (repo / "papers" / "good" / "results" / "metrics.json").write_text(text)


BAD = [
    ('{"paper": "good", "rows": [', ["papers/good/results/metrics.json", "not valid JSON", "line 1"]),
    (json.dumps([1, 2]), ["papers/good/results/metrics.json", "JSON object", "list"]),
    (json.dumps({**GOOD_TOP, "rows": []}), ["papers/good/results/metrics.json", "'rows' is empty"]),
    (json.dumps({**GOOD_TOP, "rows": [{"fid": 1.0, "fid_features": "f"}]}), ["rows[0]", "'variant'"]),
    (json.dumps({**GOOD_TOP, "rows": [{"variant": "a", "fid": "oops", "fid_features": "f"}]}),
     ["rows[0] (a)", "'fid'", "'oops'"]),
    (json.dumps({**GOOD_TOP, "rows": [row("a", 1.0, thumbnail="papers/good/results/none.png")]}),
     ["rows[0] (a)", "'thumbnail'", "none.png", "does not exist"]),
]


@pytest.mark.parametrize("text, words", BAD)
def test_malformed_metrics_fail_the_stage(repo, cli, text, words):
    out = repo / "leaderboard"
    leaderboard.build(repo / "papers", out)  # a good page exists; a bad input must leave it as it is
    before = _tree(out)
    _bad(repo, text)
    code, stdout, stderr = cli("--papers", repo / "papers", "--out", out)
    assert code == 2 and stdout == ""
    (line,) = stderr.splitlines()
    assert line.startswith("error: ") and all(w in line for w in words), line
    assert _tree(out) == before


@pytest.mark.parametrize("case", ["no papers dir", "out is a file", "out under a file"])
def test_path_errors_are_one_line(repo, cli, case):
    papers, out = repo / "papers", repo / "leaderboard"
    if case == "no papers dir":
        papers, word = repo / "nope", "--papers"
    elif case == "out is a file":
        out.write_text("not a dir")
        word = "--out"
    else:
        (repo / "file").write_text("x")
        out, word = repo / "file" / "lb", "--out"
    before = _tree(repo)
    code, _, stderr = cli("--papers", papers, "--out", out)
    assert code == 2
    (line,) = stderr.splitlines()
    assert line.startswith("error: ") and word in line and str(out if word == "--out" else papers) in line, line
    assert _tree(repo) == before


def test_cli_exit_codes(repo):
    """The real command line: exit 0 on good papers, 2 and one stderr line on a malformed one."""
    def run():
        return subprocess.run([sys.executable, "-m", "pipelines.leaderboard", "--papers", "papers", "--out", "lb"],
                              cwd=repo, capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    res = run()
    assert res.returncode == 0 and res.stderr == "" and "3 rows from 1 papers" in res.stdout
    _bad(repo, "{")
    res = run()
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "papers/good/results/metrics.json" in res.stderr


def test_paper_meta_reads_without_import(tmp_path):
    init = tmp_path / "__init__.py"
    init.write_text('"""Polynomial Mixer for diffusion.\n\nMore."""\nimport not_a_module\nARXIV = "2411.12663"\n')
    assert leaderboard.paper_meta(init) == {"title": "Polynomial Mixer for diffusion.", "arxiv": "2411.12663"}
    assert leaderboard.paper_meta(tmp_path / "missing.py") == {"title": None, "arxiv": None}


def test_claims_keep_rule_gate_reason_and_the_rule_is_stated(repo):
    data = leaderboard.build(repo / "papers", repo / "leaderboard")
    (claim,) = data["papers"][0]["claims"]
    assert claim == CLAIM  # every key reaches the page: rule, gate (detail, arms), reason, estimate
    assert data["rule"] == {"text": leaderboard.RULE_TEXT, "gates": leaderboard.GATE_TEXT}
    assert "Welch" in data["rule"]["text"] and "Gates" not in data["rule"]["text"]
    assert str(schema.IMAGE_GATE) in data["rule"]["gates"]


def test_sweep_table_is_data_of_the_page(repo):
    out = repo / "leaderboard"
    assert leaderboard.build(repo / "papers", out)["sweeps"] == []  # no sweep.json: no section
    sweep = write_sweep(repo / "papers" / "good" / "results" / "sweep.json")
    data = leaderboard.build(repo / "papers", out)
    (shown,) = data["sweeps"]
    assert shown == {**sweep, "paper": "good"} and shown["rows"][0]["name"] == sweep["base"]
    assert embedded((out / "index.html").read_text())["sweeps"] == data["sweeps"]


@pytest.mark.parametrize("text, words", [
    ("{", ["papers/good/results/sweep.json", "not valid JSON"]),
    (json.dumps({"rows": 3}), ["papers/good/results/sweep.json", "list 'rows'"]),
    (json.dumps({"rows": [{"state": "queued"}]}), ["sweep.json", "rows[0]", "'name'"]),
    (json.dumps({"rows": [{"name": "x", "changed": [1]}]}), ["sweep.json", "rows[0] (x)", "'changed'"]),
])
def test_malformed_sweep_fails_the_stage(repo, cli, text, words):
    out = repo / "leaderboard"
    leaderboard.build(repo / "papers", out)
    before = _tree(out)
    (repo / "papers" / "good" / "results" / "sweep.json").write_text(text)
    code, stdout, stderr = cli("--papers", repo / "papers", "--out", out)
    assert code == 2 and stdout == ""
    (line,) = stderr.splitlines()
    assert line.startswith("error: ") and all(w in line for w in words), line
    assert _tree(out) == before
