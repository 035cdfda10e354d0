"""Timing, peak-memory and FLOP utilities, `bench_mixers` (one mixer layer, forward + backward) and the
core benchmark (`core`: a training step of the tiny presets, FID of 2,000 samples). A paper's own
benchmark lives in `papers/<p>/bench.py` and builds on these.

What is measured, and how (so the numbers can be trusted):

- time: `ms_fwd_bwd` is the median wall time of `y = mixer(x); y.sum().backward()` (no optimizer),
  after one untimed warm-up run, with `torch.set_num_threads(threads)`.
- FLOPs: `torch.utils.flop_counter.FlopCounterMode` over the same forward + backward. It counts
  matrix products only (elementwise work is free). Its registry misses the CPU flash-attention op
  that `F.scaled_dot_product_attention` dispatches to on CPU, so `common.flops.count_flops` adds that op and
  its backward with torch's own SDPA formulas (otherwise attention would look linear).
- peak memory: every (mixer, N) point runs in a FRESH Python subprocess. After the model and input
  exist, and after one tiny warm-up pass (8 tokens) that loads libraries and lazy buffers, it reads `resource.getrusage(RUSAGE_SELF).ru_maxrss`, runs the first forward + backward, and
  reports the growth of the maximum resident set size. That is the extra RAM the operating system
  really had to provide for activations, gradients and temporaries (the process peak, not what
  torch thinks it allocated), for the first iteration; a fresh process keeps earlier points from
  hiding later peaks. Large CPU allocations are mmap-ed and returned on free, so this tracks the
  true transient peak, up to page granularity and the allocator's small-block caching. (A region inside a
  longer-lived process, e.g. generation after building a model, needs `PeakRSS`: ru_maxrss cannot be reset.)
- `gflops_per_s` = gflop / time, to compare with `matmul_gflops_per_s()` (a large fp32 GEMM on this
  machine with the same thread count): the fraction tells how close a mixer runs to the GEMM
  roofline.

Points predicted (quadratic extrapolation from the previous point, for every mixer not declared
`linear`) to take more than `max_seconds` per forward + backward, or more than `max_gb` of memory,
are skipped (returned with `skipped` set) instead of hanging the machine. Functions return data only;
the CLI and the DVC stage that write files live in pipelines/.
"""
from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time

import torch

from common.errors import UserError
from common.flops import count_flops  # counts CPU flash attention too (see common/flops.py)


def time_ms(fn, reps: int = 5, warmup: int = 1) -> float:
    """Median wall time of fn() in milliseconds after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(max(1, reps)):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    ts.sort()
    return 1e3 * ts[len(ts) // 2]


def matmul_gflops_per_s(n: int = 2048, reps: int = 5, threads: int | None = None) -> float:
    """fp32 GEMM throughput (n x n @ n x n) on this machine: the yardstick for gflops_per_s."""
    if threads:
        torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / (time_ms(lambda: a @ b, reps) * 1e-3) / 1e9


def loglog_slope(xs, ys) -> float:
    """Least-squares slope of log(y) against log(x) (1 = linear, 2 = quadratic)."""
    lx = [math.log(x) for x in xs]
    ly = [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def machine() -> dict:
    """What the numbers were measured on (written beside them)."""
    return {"cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "machine": platform.machine(), "device": "cpu"}


def maxrss_mb() -> float:
    """The process's lifetime high-water mark of resident memory (ru_maxrss), in MB. Only a difference of two
    reads in a FRESH process whose earlier life peaked lower means anything: use `PeakRSS` for a region."""
    import resource

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux (bytes on macOS)
    return kb / 1024 / (1024 if sys.platform == "darwin" else 1)


class BenchError(UserError):
    """A benchmark number that cannot be trusted (a failed self-check, an impossible value): never written."""


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """The process's resident set size now (Linux /proc/self/statm; psutil elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        import psutil

        return psutil.Process().memory_info().rss


def _hwm_bytes() -> int:
    with open("/proc/self/status") as f:
        line = next(ln for ln in f if ln.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def _reset_hwm() -> bool:
    """Reset the kernel's resident high-water mark (VmHWM) to the current RSS; False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _hwm_bytes()
        return True
    except (OSError, StopIteration):
        return False


class PeakRSS:
    """The peak resident memory of a code region above the RSS right before it, in MB:

        with PeakRSS() as probe:
            work()
        probe.peak_mb

    Why not ru_maxrss: it is the high-water mark of the whole process life, so an earlier peak (importing
    torch, building a model) hides the region's peak, and "peak - baseline" goes to 0 or below (the old video
    benchmark read 0 MB for a 96 MB KV cache). Two ways to see the region alone, best first:
    - `hwm` (Linux): reset the kernel's high-water mark at the start (`5` into /proc/self/clear_refs) and read
      VmHWM at the end. The kernel raises the mark before any page leaves the process, so a transient peak
      is seen however short it was, to the page;
    - `sampled` (where clear_refs is not writable): a thread reads the RSS every `interval` seconds (torch
      releases the GIL in its kernels, so the thread keeps running); a peak shorter than the interval can
      be missed, which the benchmarks' planted-allocation check would reveal.
    Either way it is the operating system's view (pages mapped and touched), so the allocator must give
    freed memory back for the peak to follow live tensors: run with glibc's `MALLOC_MMAP_THRESHOLD_` fixed
    (see `papers.pom.bench`). `method` forces one of the two (tests use it)."""

    def __init__(self, interval: float = 0.001, method: str | None = None):
        if method not in (None, "hwm", "sampled"):
            raise ValueError(f"unknown PeakRSS method '{method}' (hwm, sampled)")
        self.interval, self.method = interval, method
        self.base = self.peak = self.samples = 0  # samples: RSS reads the `sampled` thread has made
        self._stop = self._thread = None

    def __enter__(self):
        import gc
        import threading

        gc.collect()  # garbage of earlier work must not be freed inside the region (a dip, not a peak)
        if self.method in (None, "hwm"):
            ok = _reset_hwm()
            if not ok and self.method == "hwm":
                raise BenchError("PeakRSS(method='hwm') needs a writable /proc/self/clear_refs (Linux)")
            self.method = "hwm" if ok else "sampled"
        self.base = self.peak = rss_bytes()
        if self.method == "sampled":
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes())
            self.samples += 1

    def __exit__(self, *exc):
        if self.method == "hwm":
            self.peak = max(_hwm_bytes(), rss_bytes())
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, rss_bytes())
        return False

    @property
    def peak_mb(self) -> float:
        return (self.peak - self.base) / 2**20

    @property
    def base_mb(self) -> float:
        return self.base / 2**20


def ram_mb() -> float:
    """This machine's physical memory in MB (the bound on any believable memory reading)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * _PAGE / 2**20
    except (ValueError, OSError, AttributeError):
        import psutil

        return psutil.virtual_memory().total / 2**20


def check_mb(value, what: str, lo: float = 0.0) -> float:
    """`value` (MB) if it is a believable memory reading: a finite number in [lo, machine RAM]; else a
    BenchError naming `what` (so a broken measurement never reaches a results file)."""
    limit = ram_mb()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BenchError(f"{what} = {value!r} is not a finite number of MB: the measurement is broken")
    if not lo <= value <= limit:
        raise BenchError(f"{what} = {value:.1f} MB is outside [{lo:g}, {limit:.0f}] MB (0 to this machine's RAM): "
                         "the measurement is broken")
    return float(value)


def measure_point(mixer: str, N: int, dim: int, batch: int, heads: int, reps: int, threads: int,
                  mixer_kwargs: dict | None = None, seed: int = 0, label: str | None = None,
                  part: str = "both") -> dict:
    """One (mixer, N) point in THIS process (call it in a fresh process: `bench_mixers` does).

    part "memory": the peak resident memory of one forward+backward above the RSS right before it
    (`PeakRSS`; run with glibc's MALLOC_MMAP_THRESHOLD_ fixed so that freed tensors leave the process);
    part "time": the median of `reps` forward+backward passes and the FLOPs they count; "both": one process."""
    from common.mixers import build_mixer

    if part not in ("both", "memory", "time"):
        raise ValueError(f"unknown benchmark part '{part}' (both, memory, time)")
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    m = build_mixer(mixer, dim, heads, **(mixer_kwargs or {}))
    x = torch.randn(batch, N, dim, requires_grad=True)  # (B, N, D)

    def fwd_bwd():
        m.zero_grad(set_to_none=True)
        x.grad = None
        m(x).sum().backward()

    # import and initialise everything lazily loaded (triton via the flop counter, oneDNN, autograd
    # threads) on a tiny input first, so the region below excludes these one-off costs
    xs = torch.randn(batch, min(N, 8), dim, requires_grad=True)
    count_flops(lambda: m(xs).sum().backward())
    flops = count_flops(fwd_bwd)  # the first full pass: also the warm-up
    row = {"mixer": label or mixer, "kind": mixer, "mixer_kwargs": mixer_kwargs or {}, "N": N, "dim": dim,
           "batch": batch, "heads": heads, "threads": threads, "gflop": flops / 1e9}
    if part in ("both", "memory"):
        m.zero_grad(set_to_none=True)
        x.grad = None
        with PeakRSS() as probe:  # x and the weights exist before; their gradients are inside
            fwd_bwd()
        row.update(peak_mb=probe.peak_mb, probe=probe.method)
    if part in ("both", "time"):
        ms = time_ms(fwd_bwd, reps, warmup=0)
        row.update(ms_fwd_bwd=ms, gflops_per_s=flops / 1e9 / (ms * 1e-3))
    return row


def check_monotone(rows: list[dict], x: str, y: str, what: str, slack_mb: float = 6.4) -> None:
    """BenchError unless `y` (MB) never falls as `x` grows, within `slack_mb` (the probe's certified resolution,
    10% of the planted 64 MB): per-token and per-frame memory only adds up, so a drop means a broken reading."""
    pts = sorted((r[x], r[y]) for r in rows if r.get(y) is not None)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if y1 < y0 - slack_mb:
            raise BenchError(f"{what}: {y} falls from {y0:.1f} MB at {x}={x0} to {y1:.1f} MB at {x}={x1}: "
                             "memory that must grow does not, the measurement is broken")


MMAP_ALL = {"MALLOC_MMAP_THRESHOLD_": str(64 * 1024)}  # glibc: blocks >= 64 KiB mapped alone, unmapped on free


def run_in_subprocess(func: str, kwargs: dict, timeout: float, env: dict | None = None) -> dict:
    """`module.function(**kwargs)` in a FRESH Python process (honest peak memory), its JSON result back.

    The process runs at the repository root with it on PYTHONPATH; `env` adds environment variables."""
    module, name = func.rsplit(".", 1)
    code = (f"import json, sys; from {module} import {name}; "
            f"print(json.dumps({name}(**json.loads(sys.argv[1]))))")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {}))
    out = subprocess.run([sys.executable, "-c", code, json.dumps(kwargs)], capture_output=True, text=True,
                         timeout=timeout, cwd=root, env=env)
    if out.returncode:
        raise RuntimeError(f"benchmark point {func}({kwargs}) failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_mixers(mixers, Ns=(64, 256, 1024, 2048, 4096, 8192, 16384), dim: int = 256, batch: int = 4,
                 heads: int = 4, reps: int = 3, threads: int = 2, mixer_kwargs=None, linear=(),
                 max_seconds: float = 60.0, max_gb: float = 16.0, subprocess_per_point: bool = True,
                 log=print) -> list[dict]:
    """Forward + backward cost of one layer of each mixer over sequence lengths Ns.

    `mixers`: registered names, or a dict label -> (registered name, constructor kwargs) to measure one
    mixer in several settings (`mixer_kwargs`, name -> kwargs, serves the plain-name form). Returns one
    dict per (label, N): {mixer (the label), kind, N, ms_fwd_bwd, peak_mb, gflop, gflops_per_s, ...};
    skipped points carry `skipped` (the reason) and None values. Each point runs in two fresh processes:
    memory (`PeakRSS`, with MMAP_ALL so the resident peak follows live tensors) and time (the default
    allocator: unmapping every freed tensor would slow the timing). Mixers named in `linear` are measured
    at every N; the others are extrapolated quadratically to skip points that would be too slow or too big."""
    arms = (dict(mixers) if isinstance(mixers, dict)
            else {name: (name, (mixer_kwargs or {}).get(name)) for name in mixers})
    rows = []
    for label, (name, kwargs) in arms.items():
        prev = None
        for N in sorted(Ns):
            kw = dict(mixer=name, N=N, dim=dim, batch=batch, heads=heads, reps=reps, threads=threads,
                      mixer_kwargs=kwargs, label=label)
            if prev is not None and label not in linear:  # quadratic extrapolation (conservative for linear mixers)
                r = N / prev["N"]
                est_s, est_gb = prev["ms_fwd_bwd"] * 1e-3 * r * r, max(prev["peak_mb"], 1.0) * r * r / 1024
                if est_s > max_seconds or est_gb > max_gb:
                    rows.append({"mixer": label, "kind": name, "N": N, "ms_fwd_bwd": None, "peak_mb": None,
                                 "gflop": None, "gflops_per_s": None, "est_s": est_s,
                                 "skipped": f"predicted {est_s:.0f} s / {est_gb:.1f} GB per fwd+bwd"})
                    log(f"{label:>14} N={N:>6} skipped ({rows[-1]['skipped']})")
                    continue
                kw["reps"] = max(1, min(reps, int(max_seconds / max(est_s, 1e-9))))
            timeout = 20 * max_seconds + 60
            if subprocess_per_point:
                row = run_in_subprocess("common.bench.measure_point", {**kw, "part": "memory"}, timeout, env=MMAP_ALL)
                timed = run_in_subprocess("common.bench.measure_point", {**kw, "part": "time"}, timeout)
                row.update(ms_fwd_bwd=timed["ms_fwd_bwd"], gflops_per_s=timed["gflops_per_s"])
            else:
                row = measure_point(**kw)
            check_mb(row["peak_mb"], f"{label} N={N}: peak_mb")
            rows.append(row)
            check_monotone([r for r in rows if r["mixer"] == label], "N", "peak_mb", f"{label} layer memory")
            prev = row
            log(f"{label:>14} N={N:>6} {row['ms_fwd_bwd']:10.1f} ms {row['peak_mb']:9.1f} MB "
                f"{row['gflop']:9.2f} GFLOP {row['gflops_per_s']:7.1f} GFLOP/s")
    return rows


def bench_train_step(model_name: str, objective: str, batch: int = 64, steps: int = 10, warmup: int = 3) -> dict:
    """Median wall time of one training step (loss, backward, AdamW) of a registered model."""
    from common.diffusion import create_objective
    from common.models import count_params, create_model

    torch.manual_seed(0)
    model = create_model(model_name, learn_sigma=objective == "ddpm")
    obj = create_objective(objective)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, model.in_channels, model.input_size, model.input_size)  # (B, C, H, W)
    y = torch.randint(0, model.num_classes, (batch,))                             # (B,)
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


def core(log=print) -> dict:
    """The core benchmark: one training step of the tiny DiT (DDPM) and SiT (flow) presets (batch 64, 64
    tokens) and feature extraction + FID of 2,000 samples in the `mnist-cnn` space."""
    from common.metrics import bench_fid

    res = {"machine": machine(),
           "train_step": [bench_train_step("DiT-T/4", "ddpm"), bench_train_step("DiT-T/4", "flow")]}
    for r in res["train_step"]:
        log(f"train step {r['model']} {r['objective']}: {r['ms_per_step']:.0f} ms/step, {r['img_per_s']:.0f} img/s")
    res["fid_2000"] = bench_fid(n=2000)
    log(f"FID of 2,000 samples (features + statistics): {res['fid_2000']}")
    return res


__all__ = ["BenchError", "PeakRSS", "bench_mixers", "bench_train_step", "check_mb", "check_monotone", "core", "count_flops",
           "loglog_slope", "machine", "matmul_gflops_per_s", "maxrss_mb", "MMAP_ALL", "measure_point", "ram_mb", "rss_bytes",
           "run_in_subprocess", "time_ms"]
