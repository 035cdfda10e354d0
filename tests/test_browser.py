"""The leaderboard page in headless Chromium (Debian's chromium driven by Playwright): what a reader sees.

Builds the page from the template with two fake papers (one with results, one pending), opens it over
file://, and checks the rows, the toy-scale labels, header-click sorting, the thumbnails, the claims and
links, that text stays text, and that no JS or console error happens. The screenshot path is printed
(run with -s to see it).

Under CI (`CI=true`) the test is required: a missing chromium or Playwright FAILS it (`make browser`
installs chromium). Elsewhere it is skipped with the reason. `CHROMIUM` overrides the browser's path.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_sweep import write_sweep

from pipelines import leaderboard

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require(ok: bool, reason: str) -> None:
    """Fail under CI, skip elsewhere."""
    if not ok:
        (pytest.fail if in_ci() else pytest.skip)(f"{reason} (required when CI=true)")


def fake_repo(root: Path):
    from PIL import Image

    good = root / "papers" / "pom"
    (good / "results").mkdir(parents=True)
    (good / "__init__.py").write_text('"""PoM: Polynomial Mixer."""\nTITLE = "PoM"\nARXIV = "2411.12663"\n')
    (good / "README.md").write_text("# PoM\n")
    digits = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    Image.fromarray(digits).save(good / "results" / "grid.png")
    rows = [{"variant": v, "fid": fid, "fid_std": 0.3, "fid_features": "mnist-cnn", "fid_samples": 500,
             "class_consistency": cc, "params": p, "gflops": 0.1, "train_steps": 2000, "train_img_per_s": 250.0,
             "sample_s_per_img": 0.02, "seeds": [0, 1, 2], "sampler": "euler", "sample_steps": 50,
             "cfg_scale": 2.0, "ema": True, "thumbnail": "papers/pom/results/grid.png"}
            for v, fid, cc, p in [("dit-attention", 20.5, 0.91, 1_500_000), ("dit-pom", 9.25, 0.95, 1_200_000),
                                  ("sit-pom", 100.0, 0.5, 900_000)]]
    (good / "results" / "metrics.json").write_text(json.dumps({
        "paper": "pom", "title": "PoM: Efficient Image and Video Generation with the <b>Polynomial</b> Mixer",
        "arxiv": "2411.12663", "preset": "tiny", "dataset": "mnist5k", "toy_scale": True, "rows": rows,
        "claims": [{"claim": "PoM matches attention FID", "paper": "2.46 vs 2.27", "measured": "9.25 vs 20.5",
                    "verdict": "reproduced", "compares": ["dit-pom", "dit-attention"], "kind": "comparable",
                    "rule": "90% Welch interval of the FID difference inside +-2.0", "values": {},
                    "gate": {"passed": True, "detail": "dit-pom 0.95 >= 0.8 (pass); dit-attention 0.91 (pass)"},
                    "estimate": {"diff": -1.5, "ci90": [-1.9, -1.1], "p_one_sided": None, "df": 3.9},
                    "outcome": "comparable", "reason": "the interval lies inside the margin", "seeds_needed": None},
                   {"claim": "linear scaling in N", "paper": "yes", "measured": "n/a on CPU",
                    "verdict": "inconclusive", "compares": ["sit-pom", "dit-attention"], "kind": "better",
                    "rule": "one-sided Welch test", "values": {},
                    "gate": {"passed": False, "detail": "sit-pom 0.50 < 0.8 (fail)"},
                    "reason": "below the quality gate"}],
        "notebooks": {"samples": "papers/pom/results/notebooks/samples.html"}}))
    todo = root / "papers" / "dydit"
    todo.mkdir(parents=True)
    (todo / "__init__.py").write_text('"""DyDiT: dynamic diffusion transformer."""\n')
    write_sweep(good / "results" / "sweep.json")


OLD_CLAIM_KEYS = ("claim", "paper", "measured", "verdict")


def with_an_older_claim(out: Path) -> None:
    """Rewrite the page with its second claim cut to the keys claims had before rule, gate and reason: the
    template must draw both kinds (a data.json written before those keys existed)."""
    data = json.loads((out / "data.json").read_text())
    claims = data["papers"][next(i for i, p in enumerate(data["papers"]) if p["paper"] == "pom")]["claims"]
    claims[1] = {k: claims[1][k] for k in OLD_CLAIM_KEYS}
    (out / "index.html").write_text(leaderboard.render(data))


def test_leaderboard_in_chromium(tmp_path):
    require(CHROMIUM.exists(), f"needs Debian chromium at {CHROMIUM} (`make browser` installs it)")
    try:
        from playwright import sync_api
    except ImportError:
        require(False, "needs the playwright package (pip install -e '.[dev]')")
    fake_repo(tmp_path)
    out = tmp_path / "leaderboard"
    leaderboard.build(tmp_path / "papers", out)
    with_an_older_claim(out)

    errors = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
            page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
            page.goto((out / "index.html").as_uri())

            heads = page.locator("#board thead th")
            assert heads.all_inner_texts()[:5] == ["paper", "variant", "dataset", "preset", "FID"]
            rows = page.locator("#board tbody tr")
            assert rows.count() == 3
            assert page.locator("text=toy scale: mnist5k, not comparable to ImageNet FIDs").count() >= 4

            def column(i):
                return [rows.nth(k).locator("td").nth(i).inner_text() for k in range(rows.count())]

            assert column(4)[0].splitlines() == ["20.50 ± 0.30", "mnist-cnn, n=500"]  # the FID with its protocol
            assert column(6) == ["1.5M", "1.2M", "900k"] and column(12) == ["0,1,2"] * 3
            fid_header = page.locator("#board thead th", has_text="FID")
            fid_header.click()
            assert [v.split()[0] for v in column(4)] == ["9.25", "20.50", "100.00"]  # numeric, not lexical
            assert fid_header.get_attribute("aria-sort") == "ascending"
            fid_header.click()
            assert [v.split()[0] for v in column(4)] == ["100.00", "20.50", "9.25"]
            page.locator("#board thead th", has_text="variant").click()
            assert column(1) == ["dit-attention", "dit-pom", "sit-pom"]

            section = page.locator("#paper-pom")
            assert "<b>Polynomial</b>" in section.locator("h2").inner_text()  # text stays text
            assert section.locator("a[href='https://arxiv.org/abs/2411.12663']").count() == 1
            assert section.locator("a", has_text="README.md").get_attribute("href") == "../papers/pom/README.md"
            assert section.locator(".missing", has_text="samples notebook (missing)").count() == 1
            assert section.locator(".verdict.v-reproduced").inner_text() == "reproduced"
            assert section.locator(".verdict.v-inconclusive").count() == 1
            claims = section.locator("table.claims")
            assert claims.locator("th").all_inner_texts()[3:] == ["verdict", "rule", "gate", "reason"]
            new, old = claims.locator("tbody tr").nth(0), claims.locator("tbody tr").nth(1)
            assert new.locator(".rule-cell").inner_text() == "90% Welch interval of the FID difference inside +-2.0"
            assert new.locator(".gate-cell").inner_text() == \
                "pass dit-pom 0.95 >= 0.8 (pass); dit-attention 0.91 (pass)"
            assert new.locator(".gate-cell .g-pass").count() == 1
            assert new.locator(".reason-cell").inner_text().splitlines() == [
                "the interval lies inside the margin", "outcome: comparable; difference -1.5; 90% CI [-1.9, -1.1]; df 3.9"]
            assert [old.locator(f".{c}-cell").inner_text() for c in ("rule", "gate", "reason")] == ["\u2013"] * 3
            assert "Welch" in page.locator("#rule-text").inner_text()
            assert page.locator("#gate-text").inner_text().startswith("Gates, per arm")

            sweep = page.locator("#sweep-pom")
            assert sweep.locator("h2").inner_text().startswith("Shared reference recipe")
            srows = sweep.locator("table.sweep tbody tr")
            assert srows.count() == 5 and srows.first.locator("td").first.inner_text() == "base"
            by_name = {srows.nth(k).locator("td").first.inner_text(): srows.nth(k).locator("td").all_inner_texts()
                       for k in range(srows.count())}
            assert by_name["base"][1:3] == ["(the recipe)", "success"] and by_name["base"][7] == "pass"
            assert by_name["t-uniform"][1] == "diffusion.t_sampling=uniform" and by_name["t-uniform"][7] == "fail"
            assert by_name["lr-1e-3"][2] == "failed" and by_name["lr-1e-3"][5] == "\u2013"
            assert "never comparable with ImageNet FIDs" in sweep.inner_text()
            thumbs = section.locator(".thumbs img")
            assert thumbs.count() == 3
            thumbs.last.scroll_into_view_if_needed()
            page.wait_for_function("Array.from(document.querySelectorAll('.thumbs img'))"
                                   ".every(i => i.complete && i.naturalWidth > 0)", timeout=5000)
            assert "No results yet: dydit" in page.locator("#pending").inner_text()
            assert "DyDiT: dynamic diffusion transformer." in page.locator("#paper-dydit h2").inner_text()
            assert "git revision" in page.locator("#generated").inner_text()

            shot = tmp_path / "leaderboard.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"leaderboard screenshot: {shot}")
            assert shot.stat().st_size > 0
        finally:
            browser.close()
    assert errors == []


@pytest.mark.parametrize("ci", ["true", ""])
def test_browser_test_is_required_in_ci(tmp_path, monkeypatch, ci):
    monkeypatch.setenv("CI", ci)
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", tmp_path / "no-chromium")
    outcome = pytest.fail.Exception if ci else pytest.skip.Exception
    with pytest.raises(outcome, match="no-chromium.*required when CI=true"):
        test_leaderboard_in_chromium(tmp_path)


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("ci", ["true", ""])
def test_make_browser_fails_in_ci_without_chromium(tmp_path, ci):
    env = {"PATH": str(tmp_path), **({"CI": ci} if ci else {})}  # no apt-get, no chromium: nothing installs
    res = subprocess.run([shutil.which("make"), "-s", "-C", str(ROOT), "browser", f"CHROMIUM={tmp_path}/chromium"],
                         env=env, capture_output=True, text=True, timeout=60)
    if ci:
        assert res.returncode != 0 and "error: chromium could not be installed" in res.stderr
    else:
        assert res.returncode == 0 and "browser test will be skipped" in res.stdout
