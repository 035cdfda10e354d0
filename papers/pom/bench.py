"""PoM's benchmarks (the paper's `bench` stage): what its scaling and video-memory claims are judged on.

    python -m pipelines.bench pom --out papers/pom/results/bench.json

`run(section)` takes the `bench:` section of papers/pom/params.yaml and returns bench.json's content:
- `scaling`: forward+backward time, peak memory and achieved FLOP/s of one mixer layer, PoM vs SDPA
  attention, over the sequence length N (D=256, batch 4; `common.bench.bench_mixers`), with the derived
  log-log slopes, speedups, crossover N and the PoM layer's share of this machine's matmul FLOP/s;
  PoM in four settings (`ARMS`): one gate per state channel (the paper's) or per head, each with
  autograd's backward or the lean one (`common.mixers.pom_lean`), summarised by `layer_memory`;
- `video`: measured peak memory and time per frame of frame-by-frame generation with an untrained
  block-causal video DiT against the number of frames, PoM state vs attention key/value cache, with the
  self-checks that make the memory numbers trustworthy (`bench_video`, `video_summary`).
`papers.pom.claims` turns these numbers into verdicts.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from common.bench import (
    MMAP_ALL,
    BenchError,
    PeakRSS,
    bench_mixers,
    check_mb,
    check_monotone,
    loglog_slope,
    machine,
    matmul_gflops_per_s,
    run_in_subprocess,
)
from common.config import build_section

POM = {"degree": 2, "expand": 2}  # the mixer measured (the paper's default, DiPoM's)
ARMS = {  # label -> (mixer, kwargs): PoM with its gate per state channel or per head, autograd's or lean backward
    "pom": ("pom", POM),
    "pom-lean": ("pom", {**POM, "lean": True}),
    "pom-head": ("pom", {**POM, "gate_heads": 1}),
    "pom-head-lean": ("pom", {**POM, "gate_heads": 1, "lean": True}),
    "attention": ("attention", {}),
}


@dataclass
class BenchConfig:
    tokens: list[int] = field(default_factory=lambda: [64, 256, 1024, 4096, 16384])  # N of the mixer scaling
    dim: int = 256
    batch: int = 4
    frames: list[int] = field(default_factory=lambda: [4, 8, 16, 32])  # video lengths of the memory benchmark
    max_seconds: float = 150.0  # skip attention points predicted to take longer per forward+backward
    ranges: ClassVar[dict] = {"dim": (1, None), "batch": (1, None), "max_seconds": (1e-9, None)}


def measure_video_point(mixer: str, frames: int, model: str = "DiT-M/4", batch: int = 8, steps: int = 4,
                        cfg_scale: float = 2.0, threads: int = 1, seed: int = 0, plant_mb: float = 0.0) -> dict:
    """Sequential generation of `frames` frames in THIS process (run it in a fresh one: `bench_video`).

    Memory is `common.bench.PeakRSS` around the generation call alone, its baseline taken right before it
    (after the model, the noise and a warm-up exist). `plant_mb` > 0 allocates (and touches) a tensor of
    that size inside the measured region, held through generation: the planted-allocation self-check."""
    from common.diffusion import FlowMatching
    from common.diffusion.video import sample_sequential, sample_sequential_with_states, state_bytes
    from common.models import create_model

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    net = create_model(model, frames=frames, mask="block", mixer=mixer).eval()
    for p in net.parameters():  # untrained but not identity: undo adaLN-Zero so every layer computes
        if p.requires_grad and p.dim() > 0 and not p.abs().sum():
            p.data.normal_(0, 0.02)
    noise = torch.randn(batch, frames, net.in_channels, net.input_size, net.input_size)  # (B, F, C, H, W)
    y = torch.arange(batch) % net.num_classes
    fm = FlowMatching()
    # warm-up on ONE row, one frame, one step: loads libraries and lazy buffers (outside the region below)
    sample_sequential(fm, net, noise[:1, :1], y[:1], 1, cfg_scale)
    plant = None
    with PeakRSS() as probe:
        if plant_mb:
            plant = torch.ones(int(plant_mb * 2**20) // 4)  # ones, not empty: every page is touched
        t0 = time.perf_counter()
        video, states = sample_sequential_with_states(fm, net, noise, y, steps, cfg_scale)
        seconds = time.perf_counter() - t0
    del plant
    video_mb = video.numel() * video.element_size() / 2**20
    return {"mixer": mixer, "frames": frames, "model": model, "batch": batch, "steps": steps,
            "cfg_scale": cfg_scale, "threads": threads, "plant_mb": plant_mb, "probe": probe.method,
            "peak_mb": probe.peak_mb, "work_mb": probe.peak_mb - video_mb, "base_mb": probe.base_mb,
            "s_per_frame": seconds / frames, "state_mb": state_bytes(states) / 2**20, "video_mb": video_mb}


PLANT_MB, PLANT_TOL = 64.0, 0.10  # planted allocation and the share of it the probe may miss or add
KV_TOL = 0.10  # attention's measured growth vs the KV bytes alive at its peak, relative
MIN_KV_GROWTH_MB = 50.0  # attention's cache growth must dwarf the probe's few-MB resolution


def bench_video(mixers=("pom", "attention"), frames=(4, 8, 16, 32), model: str = "DiT-M/4", batch: int = 8,
                steps: int = 4, cfg_scale: float = 2.0, threads: int = 1, timeout: float = 1800,
                subprocess_per_point: bool = True, log=print) -> dict:
    """Peak memory and time of sequential generation with an untrained video DiT (mask='block'), self-checked.

    Returns `video_summary` of one row per (mixer, frames) and of the planted-allocation point; raises
    BenchError naming the self-check that failed (then no number is reported). With `subprocess_per_point`
    every point runs in two FRESH Python processes (nothing of an earlier point stays in the heap): one
    for memory, one for time.

    - peak_mb: `common.bench.PeakRSS` around the generation call: the kernel's resident high-water mark,
      reset right before generation (after building the model, the noise and a one-row, one-frame,
      one-step warm-up), minus the RSS at that moment. The memory process runs with glibc's
      `MALLOC_MMAP_THRESHOLD_=65536`, so every block >= 64 KiB is its own mapping, returned to the OS
      when freed: the resident peak is the peak of live tensors, not of the heap's history. It includes
      all that generation needs: mixer states, activations, temporaries, the output video.
    - work_mb = peak_mb - video_mb: without the output buffer (`video_mb`, B*F*C*H*W fp32, which any
      method must hold and which grows with frames for every mixer).
    - state_mb: exact bytes of the per-block mixer states after the last frame (KV cache vs PoM state).
    - s_per_frame: wall time / frames in the timing process (default allocator; the mmap setting slows
      small models), including steps + 1 network calls per frame, 2B rows with CFG.
    The default size (DiT-M/4: 6 blocks of width 64, 64 tokens a frame; batch 8, doubled by CFG) gives
    attention a KV cache of 3 MB a frame, 84 MB more at 32 frames than at 4, at < 1 s a frame on 1 thread.
    """
    if len(set(frames)) < 2 or "attention" not in mixers:
        raise BenchError(f"bench.frames {list(frames)} with mixers {list(mixers)}: the video memory benchmark "
                         "needs >= 2 frame counts and attention (its self-check reference)")
    point = f"{__name__}.measure_video_point"

    def measure(**kw):
        if not subprocess_per_point:
            return measure_video_point(**kw)
        row = run_in_subprocess(point, kw, timeout, env=MMAP_ALL)  # memory: the resident peak follows live tensors
        row["s_per_frame"] = run_in_subprocess(point, kw, timeout)["s_per_frame"]  # time
        return row

    base = dict(model=model, batch=batch, steps=steps, cfg_scale=cfg_scale, threads=threads)
    rows = []
    for name in mixers:
        for F in sorted(frames):
            rows.append(measure(mixer=name, frames=F, **base))
            r = rows[-1]
            log(f"{name:>10} F={F:>3} peak {r['peak_mb']:7.1f} MB (work {r['work_mb']:7.1f} MB, state "
                f"{r['state_mb']:6.2f} MB, video {r['video_mb']:5.2f} MB, probe {r['probe']}) "
                f"{r['s_per_frame']:6.3f} s/frame")
    planted = measure(mixer=mixers[0], frames=min(frames), plant_mb=PLANT_MB, **base)
    log(f"{mixers[0]:>10} F={min(frames):>3} with a planted {PLANT_MB:.0f} MB tensor: peak {planted['peak_mb']:7.1f} MB")
    return video_summary(rows, planted)


def video_summary(rows: list[dict], planted: dict) -> dict:
    """Memory growth from the fewest to the most frames per mixer, once the values and the self-checks pass.

    Values: every memory reading is a finite number in [0, RAM]; a growth (a difference of two readings)
    may dip below 0 by no more than the planted check's tolerance (the probe's certified resolution).
    Self-checks, all needed, else BenchError naming the first that failed:
    - `planted-allocation`: the planted point minus the same point without the plant is PLANT_MB within
      PLANT_TOL (the probe sees what is allocated in the region, and nothing else);
    - `kv-size`: attention's KV cache grows by >= MIN_KV_GROWTH_MB from the fewest to the most frames (the
      benchmark is big enough to resolve a growth against the probe's few-MB noise);
    - `kv-growth`: attention's measured growth matches the KV bytes alive at its peak within KV_TOL. At the
      last frame two caches are alive: the sampler still holds the previous frames' (F-1 frames) while each
      block's `step` concatenates it with the new frame into a fresh one (F frames); so the expected growth
      is 2 * (KV(hi) - KV(lo)), 14x KV(lo) from 4 to 32 frames (the cache alone grows by 7x KV(lo)).
    """
    for r in rows + [planted]:
        where = f"video point {r['mixer']} F={r['frames']}"
        for key in ("peak_mb", "work_mb", "state_mb", "video_mb", "base_mb"):
            check_mb(r[key], f"{where}: {key}")
    check_monotone([r for r in rows if r["mixer"] == "attention"], "frames", "work_mb", "attention's video memory")
    by = {(r["mixer"], r["frames"]): r for r in rows}
    lo, hi = min(r["frames"] for r in rows), max(r["frames"] for r in rows)
    resolution = PLANT_TOL * PLANT_MB
    growth = {m: check_mb(by[m, hi]["work_mb"] - by[m, lo]["work_mb"], f"{m} memory growth {lo}->{hi} frames",
                          lo=-resolution) for m in sorted({r["mixer"] for r in rows})}

    seen = planted["peak_mb"] - by[planted["mixer"], planted["frames"]]["peak_mb"]
    att_lo, att_hi = by["attention", lo], by["attention", hi]
    kv_growth = att_hi["state_mb"] - att_lo["state_mb"]
    expected = 2 * kv_growth
    checks = {
        "planted-allocation": {
            "passed": abs(seen - PLANT_MB) <= PLANT_TOL * PLANT_MB, "seen_mb": seen, "planted_mb": PLANT_MB,
            "detail": f"a {PLANT_MB:.0f} MB tensor allocated in the measured region was seen as {seen:.1f} MB "
                      f"(tolerance {PLANT_TOL:.0%})"},
        "kv-size": {
            "passed": kv_growth >= MIN_KV_GROWTH_MB, "kv_growth_mb": kv_growth,
            "detail": f"attention's KV cache grows by {kv_growth:.1f} MB from {lo} to {hi} frames "
                      f"(needed: >= {MIN_KV_GROWTH_MB:.0f} MB)"},
        "kv-growth": {
            "passed": abs(growth["attention"] - expected) <= KV_TOL * expected,
            "measured_mb": growth["attention"], "expected_mb": expected,
            "detail": f"attention's measured growth {lo}->{hi} frames {growth['attention']:.1f} MB = "
                      f"{growth['attention'] / max(att_lo['state_mb'], 1e-9):.1f}x its {lo}-frame KV cache "
                      f"({att_lo['state_mb']:.1f} MB); expected 2 x (KV({hi}) - KV({lo})) = {expected:.1f} MB "
                      f"(the previous and the new cache alive together), tolerance {KV_TOL:.0%}"},
    }
    for name, c in checks.items():
        if not c["passed"]:
            raise BenchError(f"video memory self-check '{name}' failed: {c['detail']}")

    def ratio(m):  # working memory at the most frames over the fewest (None when the fewest is ~0)
        w = by[m, lo]["work_mb"]
        return by[m, hi]["work_mb"] / w if w >= 1.0 else None

    return {"rows": rows, "planted": planted, "frames_lo": lo, "frames_hi": hi, "growth_mb": growth,
            "pom_growth_ratio": growth["pom"] / growth["attention"], "checks": checks,
            "pom_mem_ratio": ratio("pom"), "attention_mem_ratio": ratio("attention")}


def _nearest(rows, mixer, N):
    return next((r for r in rows if r["mixer"] == mixer and r["N"] == N and r.get("ms_fwd_bwd")), None)


def scaling(rows: list[dict], Ns, matmul: float) -> dict:
    """Derived numbers of the mixer benchmark: log-log slopes over N >= 1024, speedups, crossover N."""
    def slope(mixer):
        pts = [(r["N"], r["ms_fwd_bwd"]) for r in rows if r["mixer"] == mixer and r.get("ms_fwd_bwd") and r["N"] >= 1024]
        return loglog_slope(*zip(*pts)) if len(pts) >= 2 else None

    def speedup(N):
        p, a = _nearest(rows, "pom", N), _nearest(rows, "attention", N)
        return a["ms_fwd_bwd"] / p["ms_fwd_bwd"] if p and a else None

    big = max((r for r in rows if r["mixer"] == "pom" and r.get("gflops_per_s")), key=lambda r: r["N"], default=None)
    return {"rows": rows, "pom_slope": slope("pom"), "attention_slope": slope("attention"),
            "speedup_4096": speedup(4096), "speedup_16384": speedup(16384),
            "crossover_n": next((N for N in sorted(Ns) if (speedup(N) or 0) > 1.0), None),
            "matmul_gflops_per_s": matmul, "pom_flops_efficiency": big["gflops_per_s"] / matmul if big else None}


FLOOR_TOL = 0.10  # the lean per-channel layer's peak may exceed its floor by this share
EXTRA_TIME_MAX = 0.15  # extra forward+backward time the lean backward may cost over autograd's
MEMORY_MIN_N = 4096  # the memory comparison holds from this N on


def measure_lean_time(N: int, dim: int, batch: int, heads: int, gate_heads: int, reps: int = 3, threads: int = 1,
                      seed: int = 0) -> dict:
    """The lean backward's time over autograd's for one PoM layer, as a ratio measured in ONE process: the two
    (same weights) alternate forward+backward passes, so a machine whose load changes slows both alike.
    Returns the median of the per-pair ratios and both medians in ms."""
    from common.bench import time_ms
    from common.mixers.pom import PoM

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    plain = PoM(dim, heads, gate_heads=gate_heads, **POM)
    lean = PoM(dim, heads, gate_heads=gate_heads, lean=True, **POM)
    lean.load_state_dict(plain.state_dict())
    x = torch.randn(batch, N, dim, requires_grad=True)

    def fwd_bwd(m):
        m.zero_grad(set_to_none=True)
        x.grad = None
        m(x).sum().backward()

    fwd_bwd(plain), fwd_bwd(lean)  # warm-up
    pairs = [(time_ms(lambda: fwd_bwd(plain), 1, 0), time_ms(lambda: fwd_bwd(lean), 1, 0)) for _ in range(reps)]
    ratios = sorted(b / a for a, b in pairs)
    mid = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
    return {"N": N, "gate_heads": gate_heads, "reps": reps, "threads": threads, "ratio": ratios[len(ratios) // 2],
            "ms_plain": mid([a for a, _ in pairs]), "ms_lean": mid([b for _, b in pairs])}


def layer_memory(rows: list[dict], dim: int, batch: int, heads: int, pom: dict = POM, times: list | None = None) -> dict:
    """PoM layer memory against attention's and against its floor, for N >= MEMORY_MIN_N.

    Floor: what one token must keep without recomputing the input GEMM (`common.mixers.pom_lean`): the
    fused projection [a; g] (S + G floats) until backward, and its input gradient (D floats) that backward
    writes; plus, once per batch row, the (G, D) readout matrix that forward and backward both use. The
    weights and the input x exist before the measured region. S = degree * expand * D; G = S with one
    gate per channel, `heads` with one per head. `times`: `measure_lean_time` rows; their in-process ratio
    replaces the ratio of the two arms' separately measured times where both exist."""
    paired = {(t["N"], bool(t["gate_heads"])): t["ratio"] for t in times or []}
    S = pom["degree"] * pom["expand"] * dim
    by = {(r["mixer"], r["N"]): r for r in rows if r.get("peak_mb") is not None}
    points = []

    def get(label, N, key):
        return (by.get((label, N)) or {}).get(key)

    for N in sorted({r["N"] for r in rows if r["N"] >= MEMORY_MIN_N}):
        p = {"N": N, **{f"{k}_mb": get(k, N, "peak_mb") for k in ARMS}}
        for gate, G in (("", S), ("head-", heads)):
            p[f"pom-{gate}floor_mb"] = (batch * N * (S + G + dim) + batch * G * dim) * 4 / 2**20
            plain, lean = get(f"pom-{gate}".rstrip("-"), N, "ms_fwd_bwd"), get(f"pom-{gate}lean", N, "ms_fwd_bwd")
            ratio = paired.get((N, gate == "head-"))
            p[f"pom-{gate}lean_time_ratio"] = ratio if ratio is not None else (lean / plain if lean and plain else None)
        p["floor_ratio"] = p["pom-lean_mb"] / p["pom-floor_mb"] if p["pom-lean_mb"] is not None else None
        p["head_vs_attention"] = (p["pom-head-lean_mb"] / p["attention_mb"]
                                  if p["pom-head-lean_mb"] is not None and p["attention_mb"] else None)
        points.append(p)
    return {"points": points, "min_n": MEMORY_MIN_N, "floor_tol": FLOOR_TOL, "extra_time_max": EXTRA_TIME_MAX,
            "time_ratio": "lean over autograd, alternating passes in one process" if paired else "lean over autograd, "
                          "each measured in its own process",
            "floor": "per token: S + G floats of the fused projection kept for backward + D of the input gradient; "
                     "per batch row: the (G, D) readout matrix"}


def run(section: dict) -> dict:
    """bench.json's content from the params `bench:` section (ConfigError names a bad `bench.<key>`)."""
    cfg = build_section(BenchConfig, section or {}, "bench")
    threads = torch.get_num_threads()
    rows = bench_mixers(ARMS, Ns=cfg.tokens, dim=cfg.dim, batch=cfg.batch, heads=4, threads=threads,
                        reps=3, max_seconds=cfg.max_seconds, linear=tuple(k for k in ARMS if k.startswith("pom")))
    sc = scaling(rows, cfg.tokens, matmul_gflops_per_s(threads=threads))
    sc["protocol"] = {"dim": cfg.dim, "batch": cfg.batch, "heads": 4, "pom": POM,
                      "arms": {k: {"mixer": m, **kw} for k, (m, kw) in ARMS.items()},
                      "pass": "forward+backward, fp32, CPU", "threads": threads,
                      "memory": "peak resident memory of one forward+backward above the RSS right before it "
                                "(kernel high-water mark reset), input and weights excluded, gradients included; "
                                "a fresh process per point, another one for the time"}
    times = [run_in_subprocess(f"{__name__}.measure_lean_time", dict(N=N, dim=cfg.dim, batch=cfg.batch, heads=4,
                                                                      gate_heads=g, threads=threads), 1800)
             for N in cfg.tokens if N >= MEMORY_MIN_N for g in (0, 1)]
    sc["layer_memory"] = layer_memory(rows, cfg.dim, cfg.batch, heads=4, times=times)
    sc["layer_memory"]["times"] = times
    video = bench_video(frames=cfg.frames, model="DiT-M/4", batch=8, steps=4)
    video["protocol"] = {"model": "DiT-M/4 (untrained), mask=block", "batch": 8, "steps": 4, "cfg_scale": 2.0,
                         "memory": "peak resident memory of the generation call above the RSS right before it "
                                   "(kernel high-water mark reset), minus the output video; fresh process per "
                                   "point; self-checked (see papers.pom.bench.bench_video)"}
    # top-level `rows` is the mixer scaling table the `metrics` notebook plots (its `scaling` figure)
    return {"machine": machine(), "rows": rows, "scaling": sc, "video": video}
