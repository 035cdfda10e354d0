"""The leaderboard page in headless Chromium (Debian's /usr/bin/chromium driven by Playwright).

Builds a page from two fake papers (one with a broken metrics.json), opens it over file://, and checks
the rows, the error row, header-click sorting, the thumbnail, and that no JS or console error happens.
The screenshot path is printed (run with -s to see it).
"""
import json
from pathlib import Path

import numpy as np
import pytest

from pipelines import leaderboard

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium "
                                "(apt-get install chromium, or `make browser`)")


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
        "paper": "pom", "title": "PoM: Efficient Image and Video Generation with the Polynomial Mixer",
        "arxiv": "2411.12663", "preset": "tiny", "dataset": "mnist5k", "toy_scale": True, "rows": rows,
        "claims": [{"claim": "PoM matches attention FID", "paper": "2.46 vs 2.27", "measured": "9.25 vs 20.5",
                    "verdict": "reproduced"},
                   {"claim": "linear scaling in N", "paper": "yes", "measured": "n/a on CPU",
                    "verdict": "inconclusive"}]}))
    bad = root / "papers" / "dydit" / "results"
    bad.mkdir(parents=True)
    (bad / "metrics.json").write_text('{"paper": "dydit", "rows": [{"variant": "x", "fid": "oops"}]}')


def test_leaderboard_in_chromium(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    fake_repo(tmp_path)
    out = tmp_path / "leaderboard"
    leaderboard.build(tmp_path / "papers", out)

    errors = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
            page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
            page.goto((out / "index.html").as_uri())

            rows = page.locator("#board tbody:not(.errors) tr")
            assert rows.count() == 3
            err = page.locator("#board tbody.errors tr.error")
            assert err.count() == 1
            assert "papers/dydit/results/metrics.json" in err.inner_text() and "'oops'" in err.inner_text()
            assert page.locator("text=toy scale: mnist5k, not comparable to ImageNet FIDs").count() >= 3

            def column(i):
                return [rows.nth(k).locator("td").nth(i).inner_text() for k in range(rows.count())]

            fid_header = page.locator("#board thead th", has_text="FID")
            fid_header.click()
            assert [v.split()[0] for v in column(4)] == ["9.25", "20.50", "100.00"]  # numeric, not lexical
            assert fid_header.get_attribute("aria-sort") == "ascending"
            fid_header.click()
            assert [v.split()[0] for v in column(4)] == ["100.00", "20.50", "9.25"]
            page.locator("#board thead th", has_text="variant").click()
            assert column(1) == ["dit-attention", "dit-pom", "sit-pom"]
            assert page.locator("#board tbody.errors tr").count() == 1  # error row stays put

            thumbs = page.locator(".thumbs img")
            assert thumbs.count() == 3
            assert page.evaluate("Array.from(document.querySelectorAll('.thumbs img'))"
                                 ".every(i => i.complete && i.naturalWidth > 0)")
            assert page.locator(".verdict.v-reproduced").count() == 1
            assert "git revision" in page.locator("#generated").inner_text()

            shot = tmp_path / "leaderboard.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"leaderboard screenshot: {shot}")
            assert shot.stat().st_size > 0
        finally:
            browser.close()
    assert errors == []
