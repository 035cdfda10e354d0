"""Leaderboard stage: data.json content, sortable cells, toy-scale labels, error rows, assets, links."""
import json
import re

import numpy as np
import pytest

from pipelines import leaderboard


def row(variant, fid, **kw):
    return {"variant": variant, "fid": fid, "fid_std": 0.5, "fid_features": "mnist-cnn", "fid_samples": 500,
            "class_consistency": 0.9, "params": 1_300_000, "gflops": 0.12, "train_steps": 4000,
            "train_img_per_s": 300.0, "sample_s_per_img": 0.01, "seeds": [0, 1], "sampler": "euler",
            "sample_steps": 50, "cfg_scale": 2.0, "ema": True, **kw}


@pytest.fixture
def repo(tmp_path):
    """A repo root with papers/good (3 variants, a thumbnail, a notebook), papers/bad, papers/todo."""
    good = tmp_path / "papers" / "good"
    (good / "results" / "notebooks").mkdir(parents=True)
    (good / "__init__.py").write_text('"""Good Paper: a title line.\n\nDetails."""\nimport torch\n'
                                      'TITLE = "Good Paper"\nARXIV = "2411.12663"\n')
    (good / "README.md").write_text("# good\n")
    (good / "results").mkdir(exist_ok=True)
    (good / "results" / "README.md").write_text("# good: results\n")
    from PIL import Image
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(good / "results" / "a_grid.png")
    (good / "results" / "notebooks" / "samples.html").write_text("<html></html>")
    (good / "results" / "metrics.json").write_text(json.dumps({
        "paper": "good", "title": "Good Paper", "arxiv": "2411.12663", "preset": "tiny", "dataset": "mnist5k",
        "toy_scale": True,
        "rows": [row("a", 12.0, thumbnail="papers/good/results/a_grid.png"), row("b", 3.5),
                 row("c", 30.0, fid_std=None, seeds=None, class_consistency=None)],
        "claims": [{"claim": "b beats a", "paper": "2.1 vs 2.3", "measured": "3.5 vs 12.0",
                    "verdict": "reproduced"}],
        "notebooks": {"samples": "papers/good/results/notebooks/samples.html",
                      "curves": "papers/good/results/notebooks/curves.html"}}))
    bad = tmp_path / "papers" / "bad" / "results"
    bad.mkdir(parents=True)
    (bad / "metrics.json").write_text('{"paper": "bad", "rows": [')
    (tmp_path / "papers" / "todo").mkdir()
    (tmp_path / "papers" / "todo" / "__init__.py").write_text('"""Todo paper."""\n')
    return tmp_path


def test_data_json_rows_and_meta(repo):
    out = repo / "leaderboard"
    leaderboard.build(repo / "papers", out)
    data = json.loads((out / "data.json").read_text())
    assert [(r["paper"], r["variant"]) for r in data["rows"]] == [("good", "a"), ("good", "b"), ("good", "c")]
    assert all(r["dataset"] == "mnist5k" and r["toy_scale"] for r in data["rows"])
    status = {p["paper"]: p["status"] for p in data["papers"]}
    assert status == {"bad": "error", "good": "ok", "todo": "pending"}
    good = next(p for p in data["papers"] if p["paper"] == "good")
    assert good["arxiv"] == "2411.12663" and good["readme"] == "../papers/good/README.md"
    assert good["results_md"] == "../papers/good/results/README.md"
    assert good["notebooks"]["samples"] == {"href": "../papers/good/results/notebooks/samples.html", "exists": True}
    assert good["notebooks"]["curves"]["exists"] is False
    assert data["generated_at"]


def test_thumbnail_copied_into_assets(repo):
    out = repo / "leaderboard"
    data = leaderboard.build(repo / "papers", out)
    thumb = data["rows"][0]["thumbnail"]
    assert thumb == "assets/good-a.png" and (out / thumb).is_file()
    assert data["rows"][1]["thumbnail"] is None
    assert f'src="{thumb}"' in (out / "index.html").read_text()


def test_html_sort_keys_toy_label_error_row(repo):
    out = repo / "leaderboard"
    leaderboard.build(repo / "papers", out)
    page = (out / "index.html").read_text()
    body = page.split('<tbody>', 1)[1].split('</tbody>', 1)[0]
    rows = re.findall(r"<tr.*?</tr>", body)
    assert len(rows) == 3
    # FID is the 5th column; its sort key is the raw number, empty when missing
    keys = [re.findall(r'data-sort="([^"]*)"', r) for r in rows]
    assert [k[4] for k in keys] == ["12.0", "3.5", "30.0"]  # FID column: raw numbers
    assert [k[5] for k in keys] == ["0.9", "0.9", ""]  # class-consistency: empty when missing
    assert page.count("toy scale: mnist5k, not comparable to ImageNet FIDs") >= 3
    err = page.split('<tbody class="errors">', 1)[1].split("</tbody>", 1)[0]
    assert "papers/bad/results/metrics.json is not valid JSON" in err
    assert 'class="verdict v-reproduced"' in page
    assert "https://arxiv.org/abs/2411.12663" in page
    assert "curves notebook (missing)" in page
    assert "<script" in page and "http://" not in page.replace("https://arxiv.org", "")  # no CDN


GOOD_TOP = {"paper": "x", "title": "X", "arxiv": "2411.12663", "preset": "tiny", "dataset": "mnist5k"}


@pytest.mark.parametrize("metrics, words", [
    ({**GOOD_TOP, "rows": []}, ["rows", "empty"]),
    ({**GOOD_TOP, "rows": [{"fid": 1.0, "fid_features": "f"}]}, ["rows[0]", "variant"]),
    ({**GOOD_TOP, "rows": [{"variant": "a", "fid": "12", "fid_features": "f"}]}, ["rows[0]", "fid", "'12'"]),
    ([1, 2], ["list"]),
])
def test_bad_metrics_give_named_error(tmp_path, metrics, words):
    res = tmp_path / "papers" / "x" / "results"
    res.mkdir(parents=True)
    (res / "metrics.json").write_text(json.dumps(metrics))
    data = leaderboard.build(tmp_path / "papers", tmp_path / "lb")
    (entry,) = data["papers"]
    assert entry["status"] == "error" and entry["rows"] == []
    assert all(w in entry["error"] for w in words), entry["error"]
    page = (tmp_path / "lb" / "index.html").read_text()
    assert 'class="error"' in page and "papers/x/results/metrics.json" in page


@pytest.mark.parametrize("metrics, words", [
    ({"rows": []}, ["rows", "empty"]),
    ({"rows": [{"variant": "a", "fid": "12"}]}, ["rows[0].fid", "'12'"]),
    ({"rows": [{"variant": "a", "seeds": "0"}], "claims": {}}, ["seeds", "claims"]),
])
def test_fallback_checks(metrics, words):
    problems = " ".join(leaderboard.basic_problems(metrics))
    assert all(w in problems for w in words), problems
    assert leaderboard.basic_problems({"rows": [{"variant": "a", "fid": 1.0, "seeds": [0]}]}) == []


def test_paper_meta_reads_without_import(tmp_path):
    init = tmp_path / "__init__.py"
    init.write_text('"""Polynomial Mixer for diffusion.\n\nMore."""\nimport not_a_module\nARXIV = "2411.12663"\n')
    assert leaderboard.paper_meta(init) == {"title": "Polynomial Mixer for diffusion.", "arxiv": "2411.12663"}
