"""The bench stage: dispatch to a paper's bench module by convention, bad params and paths as one line;
the generic pieces of common.bench at toy size (numbers are measured by the stage, never checked here)."""
import json

import pytest

from common.bench import bench_mixers, run_in_subprocess
from pipelines import bench


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as e:
        bench.main([str(a) for a in args])
    err = capsys.readouterr().err
    return e.value.code, err


@pytest.mark.parametrize("args, words", [
    (["nopaper"], ["unknown paper 'nopaper'", "core"]),
    (["dit"], ["paper 'dit' has no benchmark", "papers/dit/bench.py"]),
    (["pom", "--params", "{params}"], ["'bench.tokens'", "list"]),
])
def test_bad_inputs_are_one_line(tmp_path, capsys, args, words):
    params = tmp_path / "params.yaml"
    params.write_text("bench: {tokens: 64}\n")
    out = tmp_path / "res" / "bench.json"
    code, err = run_cli(capsys, *[a.format(params=params) for a in args], "--out", out)
    assert code == 2 and len(err.splitlines()) == 1 and all(w in err for w in words), err
    assert not out.parent.exists()  # nothing written


def test_unwritable_out_fails_before_benchmarking(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    for out in (tmp_path, tmp_path / "file" / "bench.json"):
        code, err = run_cli(capsys, "core", "--out", out)
        assert code == 2 and len(err.splitlines()) == 1 and f"--out '{out}'" in err


def test_paper_bench_module_found_by_convention():
    import papers.pom.bench

    assert bench.paper_bench("pom") is papers.pom.bench and callable(papers.pom.bench.run)


def test_linear_mixers_are_measured_at_every_n():
    """A mixer declared linear is never skipped; the others are extrapolated quadratically."""
    rows = bench_mixers(("pom", "attention"), Ns=(8, 16), dim=16, batch=1, heads=2, reps=1, threads=1,
                        linear=("pom",), max_seconds=1e-9, subprocess_per_point=False, log=lambda *_: None)
    got = {(r["mixer"], r["N"]): r.get("skipped") for r in rows}
    assert got[("pom", 8)] is None and got[("pom", 16)] is None and got[("attention", 8)] is None
    assert "predicted" in got[("attention", 16)]


def test_run_in_subprocess_returns_json_and_passes_env():
    assert run_in_subprocess("json.dumps", {"obj": [1, 2]}, timeout=60) == "[1, 2]"
    assert run_in_subprocess("os.getenv", {"key": "BENCH_TEST_VAR"}, timeout=60, env={"BENCH_TEST_VAR": "7"}) == "7"
    with pytest.raises(RuntimeError, match="json.loads"):
        run_in_subprocess("json.loads", {"s": "{"}, timeout=60)


def test_pom_derived_numbers():
    """PoM's scaling and video summaries from benchmark rows (the numbers its claims read)."""
    from papers.pom.bench import scaling, video_ratios

    rows = [{"mixer": m, "N": n, "ms_fwd_bwd": (n if m == "pom" else n * n / 1024) / 10, "gflops_per_s": 5.0}
            for m in ("pom", "attention") for n in (256, 1024, 4096)]
    sc = scaling(rows, [256, 1024, 4096], matmul=10.0)
    assert sc["pom_slope"] == pytest.approx(1.0) and sc["attention_slope"] == pytest.approx(2.0)
    assert sc["speedup_4096"] == pytest.approx(4.0) and sc["crossover_n"] == 4096
    assert sc["pom_flops_efficiency"] == pytest.approx(0.5)
    vid = video_ratios([{"mixer": m, "frames": f, "work_mb": w, "peak_mb": w + 1} for m, f, w in
                        (("pom", 4, 2.0), ("pom", 8, 2.0), ("attention", 4, 2.0), ("attention", 8, 6.0))])
    assert (vid["frames_lo"], vid["frames_hi"], vid["pom_mem_ratio"], vid["attention_mem_ratio"]) == (4, 8, 1.0, 3.0)
    json.dumps(sc), json.dumps(vid)


def test_video_point_measures_state_and_video():
    from papers.pom.bench import measure_video_point

    row = measure_video_point("pom", frames=2, model="DiT-M/8", batch=1, steps=1, cfg_scale=1.0)
    assert row["state_mb"] > 0 and row["video_mb"] == pytest.approx(2 * 32 * 32 * 4 / 2**20)
    assert row["s_per_frame"] > 0
