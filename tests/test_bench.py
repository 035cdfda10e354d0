"""The bench stage: dispatch to a paper's bench module by convention, bad params and paths as one line;
the generic pieces of common.bench at toy size (numbers are measured by the stage, never checked here)."""
import json
import time

import pytest
import torch

from common.bench import BenchError, PeakRSS, _reset_hwm, bench_mixers, check_mb, ram_mb, run_in_subprocess
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
    """PoM's scaling summary from benchmark rows (the numbers its linear-cost claim reads)."""
    from papers.pom.bench import scaling

    rows = [{"mixer": m, "N": n, "ms_fwd_bwd": (n if m == "pom" else n * n / 1024) / 10, "gflops_per_s": 5.0}
            for m in ("pom", "attention") for n in (256, 1024, 4096)]
    sc = scaling(rows, [256, 1024, 4096], matmul=10.0)
    assert sc["pom_slope"] == pytest.approx(1.0) and sc["attention_slope"] == pytest.approx(2.0)
    assert sc["speedup_4096"] == pytest.approx(4.0) and sc["crossover_n"] == 4096
    assert sc["pom_flops_efficiency"] == pytest.approx(0.5)
    json.dumps(sc)


def _layer_rows(lean_mb: float, head_lean_mb: float, lean_ms: float = 105.0):
    """Benchmark rows at N = 1024 and 4096 (D=8, batch 1, 2 heads) for the five arms of papers.pom.bench.ARMS."""
    rows = []
    for N in (1024, 4096):
        mb = {"pom": 3 * lean_mb, "pom-lean": lean_mb, "pom-head": 2 * head_lean_mb, "pom-head-lean": head_lean_mb,
              "attention": 100.0}
        ms = {"pom": 100.0, "pom-lean": lean_ms, "pom-head": 50.0, "pom-head-lean": 50.0, "attention": 400.0}
        rows += [{"mixer": k, "N": N, "peak_mb": mb[k] * N / 4096, "ms_fwd_bwd": ms[k]} for k in mb]
    return rows


def test_layer_memory_summary_and_claim():
    """Floors from the layer's shapes; the claim holds only when every condition holds at every N >= 4096."""
    from papers.pom import claims
    from papers.pom.bench import layer_memory

    floor = (4096 * (32 + 32 + 8) + 32 * 8) * 4 / 2**20  # batch 1, S = G = 2*2*8 per channel, + D; + G x D
    head_floor = (4096 * (32 + 2 + 8) + 2 * 8) * 4 / 2**20

    def claim(rows):
        lm = layer_memory(rows, dim=8, batch=1, heads=2)
        return lm, next(c for c in claims([], {"bench": {"scaling": {"layer_memory": lm}}}) if c["key"] == "layer-memory")

    lm, good = claim(_layer_rows(lean_mb=1.05 * floor, head_lean_mb=90.0))
    (p,) = lm["points"]  # only N >= 4096
    assert p["N"] == 4096 and p["pom-floor_mb"] == pytest.approx(floor) and p["pom-head-floor_mb"] == pytest.approx(head_floor)
    assert p["floor_ratio"] == pytest.approx(1.05) and p["pom-lean_time_ratio"] == pytest.approx(1.05)
    assert good["verdict"] == "reproduced", good["reason"]
    for rows, words in ((_layer_rows(1.2 * floor, 90.0), "x floor"), (_layer_rows(floor, 120.0), "> attention"),
                        (_layer_rows(floor, 90.0, lean_ms=130.0), "lean time")):
        _, bad = claim(rows)
        assert bad["verdict"] == "not reproduced" and words in bad["reason"], bad["reason"]
    json.dumps(good)


def test_paired_lean_time_replaces_separate_timings():
    from papers.pom.bench import layer_memory, measure_lean_time

    t = measure_lean_time(N=16, dim=8, batch=1, heads=2, gate_heads=1, reps=2)
    assert t["ratio"] > 0 and t["ms_plain"] > 0 and t["ms_lean"] > 0 and t["gate_heads"] == 1
    rows = _layer_rows(lean_mb=1.0, head_lean_mb=1.0, lean_ms=300.0)  # separately timed: 3x slower
    lm = layer_memory(rows, dim=8, batch=1, heads=2, times=[{"N": 4096, "gate_heads": 0, "ratio": 1.02}])
    (p,) = lm["points"]
    assert p["pom-lean_time_ratio"] == 1.02 and p["pom-head-lean_time_ratio"] == 1.0  # paired where measured
    assert "one process" in lm["time_ratio"]


def test_memory_that_must_grow_is_checked():
    from common.bench import check_monotone

    rows = [{"N": 1024, "peak_mb": 50.0}, {"N": 4096, "peak_mb": 200.0}, {"N": 256, "peak_mb": 12.0}]
    check_monotone(rows, "N", "peak_mb", "ok")
    check_monotone(rows + [{"N": 8192, "peak_mb": 195.0}], "N", "peak_mb", "within the probe's resolution")
    with pytest.raises(BenchError, match="falls from 200.0 MB at N=4096 to 150.0 MB at N=8192"):
        check_monotone(rows + [{"N": 8192, "peak_mb": 150.0}], "N", "peak_mb", "pom layer memory")


def test_labelled_arms_measure_one_mixer_in_several_settings():
    rows = bench_mixers({"pom": ("pom", {"degree": 2}), "pom-lean": ("pom", {"degree": 2, "lean": True})}, Ns=(8,),
                        dim=16, batch=1, heads=2, reps=1, threads=1, subprocess_per_point=False, log=lambda *_: None)
    assert [(r["mixer"], r["kind"]) for r in rows] == [("pom", "pom"), ("pom-lean", "pom")]
    assert rows[0]["gflop"] == pytest.approx(rows[1]["gflop"])  # the lean backward recomputes no GEMM
    assert all(r["peak_mb"] >= 0 and r["ms_fwd_bwd"] > 0 for r in rows)


# ---- the video memory harness: probe, validation, self-checks, claim ------------------------------------
def _held_until_sampled(probe, mb):
    """Allocate (and touch) `mb` MB inside `probe`'s region, hold it until the probe has surely seen it, free it.
    The `sampled` probe is waited for by its own sample count, never by a time budget (no speed dependence)."""
    x = torch.ones(int(mb * 2**20) // 4)
    if probe.method == "sampled":
        seen, give_up = probe.samples, time.monotonic() + 60  # only a dead sampler thread waits this long
        while probe.samples < seen + 2 and time.monotonic() < give_up:
            time.sleep(0.001)
    del x


@pytest.mark.parametrize("method", ["hwm", "sampled"])
def test_peak_probe_sees_a_planted_allocation(method):
    """64 MB allocated and freed inside the region is seen within 10% (a transient peak, not the end state),
    and an empty region reads near 0, however large the process's earlier peak was."""
    if method == "hwm" and not _reset_hwm():
        pytest.skip("the kernel's high-water mark cannot be reset here (/proc/self/clear_refs)")
    big = torch.ones(32 * 2**20)  # a 128 MB earlier peak: ru_maxrss would hide the region below
    del big
    with PeakRSS(method=method) as probe:
        _held_until_sampled(probe, 64)
    assert probe.method == method and probe.peak_mb == pytest.approx(64, rel=0.10)
    with PeakRSS(method=method) as empty:
        pass
    assert 0 <= empty.peak_mb < 6.4


def test_memory_values_are_validated():
    """Negative, NaN, infinite, non-numeric or larger-than-RAM readings are refused, naming the value."""
    assert check_mb(12.5, "x") == 12.5 and check_mb(-1.0, "growth", lo=-6.4) == -1.0
    for bad in (-1e9, -0.5, float("nan"), float("inf"), None, "3", ram_mb() * 2):
        with pytest.raises(BenchError, match="peak_mb"):
            check_mb(bad, "peak_mb")


def _video_rows(pom_growth=0.2, att_factor=2.0, kv_per_frame=3.0, seen=64.0, lo=4, hi=32):
    """Synthetic video points: attention's working memory grows `att_factor` x its KV cache per frame (2 = two
    caches alive at the peak), PoM's by `pom_growth` MB in all; the planted point sees `seen` MB more."""
    rows = []
    for F in (lo, 8, hi):
        vid = F / 32
        att = 3.0 + att_factor * kv_per_frame * F
        pom = 30.0 + pom_growth * (F - lo) / (hi - lo)
        rows += [{"mixer": "attention", "frames": F, "work_mb": att, "peak_mb": att + vid, "video_mb": vid,
                  "state_mb": kv_per_frame * F, "base_mb": 600.0},
                 {"mixer": "pom", "frames": F, "work_mb": pom, "peak_mb": pom + vid, "video_mb": vid,
                  "state_mb": 0.09, "base_mb": 600.0}]
    planted = dict(rows[1], peak_mb=rows[1]["peak_mb"] + seen, work_mb=rows[1]["work_mb"] + seen, plant_mb=64.0)
    return rows, planted


def test_video_summary_self_checks():
    """Passing rows give the growths; each broken measurement is refused, naming the self-check or the value."""
    from papers.pom.bench import video_summary

    vid = video_summary(*_video_rows(pom_growth=0.2))
    assert (vid["frames_lo"], vid["frames_hi"]) == (4, 32) and all(c["passed"] for c in vid["checks"].values())
    assert vid["growth_mb"]["attention"] == pytest.approx(168.0) and vid["growth_mb"]["pom"] == pytest.approx(0.2)
    rows, planted = _video_rows()
    rows[2] = dict(rows[2], work_mb=rows[0]["work_mb"] - 10.0)  # attention at 8 frames below its 4-frame reading
    with pytest.raises(BenchError, match="attention's video memory: work_mb falls"):
        video_summary(rows, planted)
    assert vid["pom_growth_ratio"] == pytest.approx(0.2 / 168.0)
    json.dumps(vid)
    for kw, check in ((dict(seen=40.0), "planted-allocation"), (dict(seen=80.0), "planted-allocation"),
                      (dict(kv_per_frame=1.0), "kv-size"), (dict(att_factor=1.0), "kv-growth"),
                      (dict(att_factor=2.5), "kv-growth")):
        with pytest.raises(BenchError, match=f"self-check '{check}' failed"):
            video_summary(*_video_rows(**kw))
    rows, planted = _video_rows()
    rows[0]["peak_mb"] = float("nan")
    with pytest.raises(BenchError, match="attention F=4: peak_mb"):
        video_summary(rows, planted)
    with pytest.raises(BenchError, match="pom memory growth"):  # below 0 by more than the probe's resolution
        video_summary(*_video_rows(pom_growth=-20.0))


def test_constant_memory_claim_branches():
    """reproduced / not reproduced on self-checked rows; inconclusive when a self-check did not pass."""
    from papers.pom import claims
    from papers.pom.bench import video_summary

    def claim(video):
        out = {c["key"]: c for c in claims([], {"bench": {"video": video}})}
        return out["constant-memory"]

    good, bad = video_summary(*_video_rows(pom_growth=1.0)), video_summary(*_video_rows(pom_growth=40.0))
    assert claim(good)["verdict"] == "reproduced" and claim(good)["outcome"] == "better"
    assert claim(bad)["verdict"] == "not reproduced" and "0.238 > 0.1" in claim(bad)["reason"]
    failed = dict(good, checks={**good["checks"], "kv-growth": {"passed": False, "detail": "x"}})
    unchecked = {k: v for k, v in good.items() if k != "checks"}  # an older bench.json
    for video, named in ((failed, "kv-growth"), (unchecked, "planted-allocation")):
        c = claim(video)
        assert c["verdict"] == "inconclusive" and named in c["reason"], c["reason"]
    keys = {"key", "claim", "paper", "compares", "metric", "kind", "rule", "values", "gate", "measured", "outcome",
            "reason", "verdict"}
    for video in (good, bad, failed):
        c = claim(video)
        assert keys <= set(c) and c["gate"]["passed"] is None and c["kind"] == "measurement"


def test_video_point_measures_state_and_video():
    from papers.pom.bench import measure_video_point

    row = measure_video_point("pom", frames=2, model="DiT-M/8", batch=1, steps=1, cfg_scale=1.0)
    assert row["state_mb"] > 0 and row["video_mb"] == pytest.approx(2 * 32 * 32 * 4 / 2**20)
    assert row["s_per_frame"] > 0 and row["peak_mb"] >= 0 and row["probe"] in ("hwm", "sampled")
    assert row["work_mb"] == pytest.approx(row["peak_mb"] - row["video_mb"])
