"""PoM's own figure and table (papers/pom/notebooks/scaling.ipynb), from the bench.json that
`papers.pom.bench.run` writes: one mixer layer's time and memory against N, and frame-by-frame video
generation's memory and time against the number of frames (PoM state vs attention key/value cache)."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure


def load_bench(path) -> dict:
    """bench.json with its `scaling` and `video` sections (KeyError names a missing one)."""
    b = json.loads(Path(path).read_text())
    for key in ("machine", "scaling", "video"):
        if key not in b:
            raise KeyError(f"{path}: no '{key}' section (written by `python -m pipelines.bench pom`)")
    rows = [r for r in b["scaling"]["rows"] if r.get("ms_fwd_bwd") is not None]
    print(f"bench read from {path}: {len(rows)} mixer points, {len(b['video']['rows'])} video points")
    return b


def scaling_figure(b: dict, paper: str = "pom") -> Figure:
    """2 x 2: layer time and memory vs N (log-log); video working memory and time per frame vs frames."""
    sc, vid = b["scaling"], b["video"]
    rows = pd.DataFrame([r for r in sc["rows"] if r.get("ms_fwd_bwd") is not None])
    vrows = pd.DataFrame(vid["rows"])
    p, vp = sc["protocol"], vid["protocol"]
    fig = Figure(figsize=(11, 8))
    ax = fig.subplots(2, 2)
    for name, g in rows.groupby("mixer"):
        ax[0, 0].loglog(g["N"], g["ms_fwd_bwd"], "o-", label=name)
        ax[0, 1].loglog(g["N"], g["peak_mb"].clip(lower=0.1), "o-", label=name)
    ax[0, 0].set(xlabel="tokens N", ylabel="ms (forward + backward)", title="time of one mixer layer")
    ax[0, 1].set(xlabel="tokens N", ylabel="peak RSS growth (MB)", title="memory of one mixer layer")
    for name, g in vrows.groupby("mixer"):
        ax[1, 0].plot(g["frames"], g["work_mb"], "o-", label=name)
        ax[1, 1].plot(g["frames"], g["s_per_frame"], "o-", label=name)
    ax[1, 0].set(xlabel="frames generated", ylabel="peak memory above the start, output excluded (MB)",
              title="frame-by-frame generation: memory")
    ax[1, 1].set(xlabel="frames generated", ylabel="seconds per frame", title="frame-by-frame generation: time")
    for a in ax.flat:
        a.legend()
        a.grid(alpha=0.3, which="both")
    proto = (f"CPU ({b['machine'].get('threads')} threads), D={p['dim']}, batch {p['batch']}, {p['heads']} heads, "
             f"PoM k={p['pom']['degree']} e={p['pom']['expand']}, fwd+bwd fp32")
    fig.suptitle(f"{paper}: {proto}\nvideo: {vp['model']}, batch {vp['batch']}, {vp['steps']} Euler steps, "
                 f"cfg {vp['cfg_scale']}", fontsize=9)
    fig.tight_layout()
    return fig


def scaling_table(b: dict):
    """The derived numbers the claims read (slopes, speedups, crossover, memory ratios), as Markdown."""
    from IPython.display import Markdown

    sc, vid = b["scaling"], b["video"]
    growth = vid.get("growth_mb") or {}

    def fmt(v, f="{:.2f}"):
        return "n/a" if v is None else f.format(v)

    return Markdown("\n".join([
        "| quantity | value |", "|---|---|",
        f"| log-log slope of PoM time, N >= 1024 | {fmt(sc.get('pom_slope'))} |",
        f"| log-log slope of attention time, N >= 1024 | {fmt(sc.get('attention_slope'))} |",
        f"| speedup of PoM at N = 4096 | {fmt(sc.get('speedup_4096'))}x |",
        f"| speedup of PoM at N = 16384 | {fmt(sc.get('speedup_16384'))}x |",
        f"| crossover N (PoM faster from) | {sc.get('crossover_n')} |",
        f"| PoM achieved FLOP/s / matmul FLOP/s | {fmt(sc.get('pom_flops_efficiency'))} |",
        f"| working memory {vid.get('frames_hi')} / {vid.get('frames_lo')} frames, PoM | {fmt(vid.get('pom_mem_ratio'))}x |",
        f"| same, attention with KV cache | {fmt(vid.get('attention_mem_ratio'))}x |",
        f"| peak memory growth {vid.get('frames_lo')} -> {vid.get('frames_hi')} frames, PoM | "
        f"{fmt(growth.get('pom'), '{:.1f}')} MB |",
        f"| same, attention | {fmt(growth.get('attention'), '{:.1f}')} MB |",
        f"| PoM's growth / attention's | {fmt(vid.get('pom_growth_ratio'), '{:.3f}')} |",
        *(f"| self-check `{k}` | {'passed' if c.get('passed') else 'FAILED'}: {c.get('detail', '')} |"
          for k, c in (vid.get("checks") or {}).items()),
    ]))
