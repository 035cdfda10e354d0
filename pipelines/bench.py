"""Benchmarks, written as DVC metrics (`make bench`). Speed is measured here, never in tests.

    python -m pipelines.bench core --out bench/core.json
    python -m pipelines.bench pom --params papers/pom/params.yaml --out papers/pom/results/bench.json

`core`: one training step of the tiny DiT (DDPM) and SiT (flow) presets (ms/step, img/s, batch 64, 64
tokens) and feature extraction + FID for 2,000 samples in the `mnist-cnn` space.
`pom`: forward+backward time, peak memory and achieved FLOP/s of one mixer layer, PoM vs SDPA
attention, over sequence length N (D=256, batch 4); sequential video generation memory and time per
frame vs the number of frames, PoM state vs attention KV cache. Derived numbers (log-log slopes,
speedups, crossover N, memory ratios) are what `papers/pom` turns into claims.
"""
from __future__ import annotations

import platform
import time
from pathlib import Path

import torch

from common.io import check_writable, write_json

from ._cli import StageParser, friendly_errors


def _machine() -> dict:
    import os

    return {"cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "machine": platform.machine(), "device": "cpu"}


def bench_train_step(model_name: str, objective: str, batch: int = 64, steps: int = 10, warmup: int = 3) -> dict:
    from common.diffusion import create_objective
    from common.models import count_params, create_model

    torch.manual_seed(0)
    model = create_model(model_name, learn_sigma=objective == "ddpm")
    obj = create_objective(objective)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, model.in_channels, model.input_size, model.input_size)
    y = torch.randint(0, model.num_classes, (batch,))
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        loss = obj.training_losses(model, x, y)["loss"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    ms = 1000 * sorted(times)[len(times) // 2]
    return {"model": model_name, "objective": objective, "params": count_params(model), "batch": batch,
            "ms_per_step": ms, "img_per_s": batch / ms * 1000}


def core(out: Path) -> dict:
    from common.metrics import bench_fid

    res = {"machine": _machine(), "train_step": [bench_train_step("DiT-T/4", "ddpm"), bench_train_step("DiT-T/4", "flow")]}
    for r in res["train_step"]:
        print(f"train step {r['model']} {r['objective']}: {r['ms_per_step']:.0f} ms/step, {r['img_per_s']:.0f} img/s")
    res["fid_2000"] = bench_fid(n=2000)
    print(f"FID of 2,000 samples (features + statistics): {res['fid_2000']}")
    return res


def _nearest(rows, mixer, N):
    return next((r for r in rows if r["mixer"] == mixer and r["N"] == N and r.get("ms_fwd_bwd")), None)


def pom(out: Path, params: str | None) -> dict:
    from common.bench import bench_mixers, loglog_slope, matmul_gflops_per_s
    from common.config import load_params
    from common.diffusion.video import bench_video

    bp = (load_params(params).get("bench") if params else None) or {}
    Ns = bp.get("tokens", [64, 256, 1024, 4096, 16384])
    dim, batch = bp.get("dim", 256), bp.get("batch", 4)
    threads = torch.get_num_threads()
    rows = bench_mixers(Ns=Ns, dim=dim, batch=batch, heads=4, threads=threads, reps=3,
                        max_seconds=bp.get("max_seconds", 150.0), mixer_kwargs={"pom": {"degree": 2, "expand": 2}})
    mm = matmul_gflops_per_s(threads=threads)

    def slope(mixer):
        pts = [(r["N"], r["ms_fwd_bwd"]) for r in rows if r["mixer"] == mixer and r.get("ms_fwd_bwd") and r["N"] >= 1024]
        return loglog_slope(*zip(*pts)) if len(pts) >= 2 else None

    def speedup(N):
        p, a = _nearest(rows, "pom", N), _nearest(rows, "attention", N)
        return a["ms_fwd_bwd"] / p["ms_fwd_bwd"] if p and a else None

    cross = next((N for N in sorted(Ns) if (speedup(N) or 0) > 1.0), None)
    big = max((r for r in rows if r["mixer"] == "pom" and r.get("gflops_per_s")), key=lambda r: r["N"], default=None)
    scaling = {"rows": rows, "pom_slope": slope("pom"), "attention_slope": slope("attention"),
               "speedup_4096": speedup(4096), "speedup_16384": speedup(16384), "crossover_n": cross,
               "matmul_gflops_per_s": mm,
               "pom_flops_efficiency": big["gflops_per_s"] / mm if big else None,
               "protocol": {"dim": dim, "batch": batch, "heads": 4, "pom": {"degree": 2, "expand": 2},
                            "pass": "forward+backward, fp32, CPU", "threads": threads}}
    frames = bp.get("frames", [4, 8, 16, 32])
    vrows = bench_video(frames=frames, model="DiT-M/4", batch=8, steps=4)

    def ratio(mixer, key):
        by = {r["frames"]: r[key] for r in vrows if r["mixer"] == mixer}
        lo, hi = min(by), max(by)
        return by[hi] / max(by[lo], 1e-9), lo, hi

    pr, lo, hi = ratio("pom", "work_mb")
    video = {"rows": vrows, "frames_lo": lo, "frames_hi": hi,
             # working memory = peak RSS growth minus the output video (which grows with frames for any mixer)
             "pom_mem_ratio": pr, "attention_mem_ratio": ratio("attention", "work_mb")[0],
             "pom_peak_ratio": ratio("pom", "peak_mb")[0], "attention_peak_ratio": ratio("attention", "peak_mb")[0],
             "protocol": {"model": "DiT-M/4 (untrained), mask=block", "batch": 8, "steps": 4, "cfg_scale": 2.0,
                          "memory": "peak RSS growth during generation minus the output video, fresh process "
                                    "per point (see common.diffusion.video.bench_video)"}}
    # top-level `rows` is the mixer scaling table the `metrics` notebook plots (its `scaling` figure)
    return {"machine": _machine(), "rows": rows, "scaling": scaling, "video": video}


# the `bench:` section of a params file (pom): key -> (what it must be, the check)
def _int(x, lo: int = 1) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= lo


BENCH_KEYS = {
    "tokens": ("a non-empty list of ints >= 1", lambda v: isinstance(v, list) and bool(v) and all(map(_int, v))),
    "frames": ("a non-empty list of ints >= 1", lambda v: isinstance(v, list) and bool(v) and all(map(_int, v))),
    "dim": ("an int >= 1", _int),
    "batch": ("an int >= 1", _int),
    "max_seconds": ("a number > 0", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0),
}


def bench_section(params: str | None) -> dict:
    """The validated `bench:` section of `params` (empty without one); ConfigError naming a bad key."""
    from common.config import ConfigError, load_params

    section = (load_params(params).get("bench") if params else None) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"params key 'bench' must be a mapping, got {type(section).__name__} ({section!r:.60})")
    for k, v in section.items():
        if k not in BENCH_KEYS:
            raise ConfigError(f"unknown params key 'bench.{k}' (known: {', '.join(sorted(BENCH_KEYS))})")
        want, ok = BENCH_KEYS[k]
        if not ok(v):
            raise ConfigError(f"params key 'bench.{k}' must be {want}, got {v!r}")
    return section


@friendly_errors
def main(argv=None):
    ap = StageParser("bench", __doc__)
    ap.add_argument("which", choices=("core", "pom"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--params", default=None)
    args = ap.parse_args(argv)
    out = Path(args.out)
    bench_section(args.params)  # a bad params file fails now, not after minutes of benchmarks
    check_writable(out, what="--out")
    res = core(out) if args.which == "core" else pom(out, args.params)
    write_json(out, res, newline=False)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
