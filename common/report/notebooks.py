"""The figure notebooks' helpers: reading runs and results, drawing the figures and tables.

A notebook (`notebooks/<name>.ipynb`, or a paper's own `papers/<p>/notebooks/<name>.ipynb`) holds a
`parameters` cell and cells of one call each, whose figure or table is the cell's output; everything
else lives here, once. Figures are `matplotlib.figure.Figure` objects (no pyplot state): a cell that
ends with one shows it (as a PNG), `save` writes it to `<out_dir>/figures/<name>` and returns it.

Runs are read from a runs root laid out as `<runs_dir>/<variant>/s<seed>/`: `train.json`,
`samples.npz` + `samples.json`, `eval.json`, `eval_steps.json` (the evaluation of every kept
checkpoint: `{"checkpoints": [{"step": 500, "fid": ..., "class_consistency": ...}, ...]}`) and the
DVCLive logs (`dvclive/plots/metrics/train/loss.tsv`, `.../fid.tsv`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

NONE = "\u2013"
LOSS_TSV = "dvclive/plots/metrics/train/loss.tsv"
VERDICT_COLORS = {"reproduced": "#c8efc8", "not reproduced": "#f6c6c6", "inconclusive": "#f8e7b0"}


# ---- runs ----------------------------------------------------------------------------------------------

def as_list(v) -> list[str]:
    """`variants` may be a list or a comma/space separated string; "" means all."""
    if isinstance(v, str):
        return v.replace(",", " ").split()
    return list(v or [])


def read_json(path) -> dict:
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else {}


def seed_dirs(variant_dir: Path) -> list[Path]:
    """Run dirs `s<seed>` of one variant, sorted by seed; the variant dir itself if it holds the files."""
    dirs = sorted((d for d in variant_dir.glob("s*") if d.is_dir() and d.name[1:].isdigit()),
                  key=lambda d: int(d.name[1:]))
    return dirs or [variant_dir]


def variant_names(runs_dir, variants="") -> list[str]:
    """The variants asked for (in that order), or every variant folder under `runs_dir`."""
    runs = Path(runs_dir)
    if not runs.is_dir():
        raise FileNotFoundError(f"runs_dir '{runs_dir}' does not exist (run the paper's train/sample stages first)")
    names = as_list(variants) or sorted(d.name for d in runs.iterdir() if d.is_dir())
    missing = [v for v in names if not (runs / v).is_dir()]
    if missing:
        raise FileNotFoundError(f"variants {missing} not found under runs_dir '{runs_dir}'")
    return names


def save(fig: Figure | None, out_dir, name: str, dpi: int = 120) -> Figure | None:
    """Write `fig` to `<out_dir>/figures/<name>` and return it (None: nothing to save)."""
    if fig is not None:
        figures = Path(out_dir) / "figures"
        figures.mkdir(parents=True, exist_ok=True)
        fig.savefig(figures / name, dpi=dpi)
    return fig


def _show_figures_as_png() -> None:
    """In a notebook, show a Figure that a cell returns as a PNG (the figures here do not go through
    pyplot, so its inline backend does not register them)."""
    try:
        from IPython import get_ipython
        from IPython.core.pylabtools import print_figure
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None:
        shell.display_formatter.formatters["image/png"].for_type(Figure, lambda fig: print_figure(fig, "png"))


_show_figures_as_png()


def _axes(rows: int, cols: int, w: float, h: float):
    fig = Figure(figsize=(w, h))
    return fig, fig.subplots(rows, cols, squeeze=False)


# ---- samples -------------------------------------------------------------------------------------------

@dataclass
class SampleRun:
    variant: str
    run: Path
    arr: np.ndarray | None  # (N, H, W, C) or video (N, F, H, W, C) uint8; None: only grid.png exists
    meta: dict               # samples.json
    train: dict              # train.json


def load_samples(runs_dir, variants="") -> list[SampleRun]:
    """Each variant's first seed that has samples.npz (or grid.png), with its protocol and train.json."""
    runs = []
    for v in variant_names(runs_dir, variants):
        run = next((d for d in seed_dirs(Path(runs_dir) / v)
                    if (d / "samples.npz").exists() or (d / "grid.png").exists()), None)
        if run is None:
            print(f"skip {v}: no samples.npz or grid.png under {Path(runs_dir) / v}")
            continue
        arr = np.load(run / "samples.npz")["arr_0"] if (run / "samples.npz").exists() else None
        runs.append(SampleRun(v, run, arr, read_json(run / "samples.json"), read_json(run / "train.json")))
    if not runs:
        raise FileNotFoundError(f"no samples.npz / grid.png under any variant of '{runs_dir}'")
    print("variants shown:", [r.variant for r in runs], "| runs:", [str(r.run) for r in runs])
    return runs


def tile(images: np.ndarray, cols: int | None = None) -> np.ndarray:
    """(N, H, W, C) uint8 -> one (rows*H, cols*W, C) mosaic, 1 px gaps."""
    n, h, w, c = images.shape
    cols = cols or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    out = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1, c), 255, np.uint8)
    for i, im in enumerate(images):
        r, k = divmod(i, cols)
        out[r * (h + 1): r * (h + 1) + h, k * (w + 1): k * (w + 1) + w] = im
    return out


def _show(ax, mosaic: np.ndarray, title: str) -> None:
    ax.imshow(mosaic[..., 0] if mosaic.shape[-1] == 1 else mosaic, cmap="gray", vmin=0, vmax=255)
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def protocol(meta: dict) -> str:
    """Sampler, steps, guidance and weights of a samples.json, for a title."""
    ema = {True: "EMA", False: "raw weights"}.get(meta.get("ema"), "EMA ?")
    return f"{meta.get('sampler', '?')}, {meta.get('steps', '?')} steps, cfg {meta.get('cfg_scale', '?')}, {ema}"


def _where(paper: str, runs: list[SampleRun]) -> tuple[str, list[str]]:
    datasets = sorted({r.train.get("dataset", "?") for r in runs})
    return f"{paper} | preset {runs[0].train.get('preset', '?')}", datasets


def samples_figure(runs: list[SampleRun], paper: str, max_images: int = 64) -> Figure:
    """One grid per variant (a video run shows the first frame of each video), protocol in each title."""
    where, datasets = _where(paper, runs)
    fig, axes = _axes(1, len(runs), 3.2 * len(runs), 3.8)
    for ax, r in zip(axes[0], runs):
        if r.arr is None:
            import matplotlib.image as mpimg

            mosaic, shown = mpimg.imread(r.run / "grid.png"), "grid.png"
            mosaic = (mosaic * 255).astype(np.uint8) if mosaic.dtype != np.uint8 else mosaic
            mosaic = mosaic[..., :3] if mosaic.ndim == 3 else mosaic[..., None]
        else:
            frames0 = r.arr[:, 0] if r.arr.ndim == 5 else r.arr  # video: first frame of each video
            mosaic, shown = tile(frames0[:max_images]), f"{min(len(frames0), max_images)} of {len(r.arr)}"
        ds = f" | {r.train.get('dataset', '?')}" if len(datasets) > 1 else ""
        _show(ax, mosaic, f"{r.variant} ({r.run.name}{ds})\n{protocol(r.meta)}\n{shown} samples")
    fig.suptitle(f"Samples: {where}" + (f" | {datasets[0]}" if len(datasets) == 1 else ""), fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.9))  # leave room for the suptitle
    return fig


def video_strips_figure(runs: list[SampleRun], paper: str, n_videos: int = 4, n_frames: int = 8) -> Figure | None:
    """Frame strips of the video runs (a few videos, one per row); None when there is no video run."""
    videos = [r for r in runs if r.arr is not None and r.arr.ndim == 5]
    if not videos:
        print("no video runs: no frame strips")
        return None
    where, _ = _where(paper, runs)
    fig, axes = _axes(len(videos), 1, 1.1 * n_frames + 1, 1.2 * n_videos * len(videos) + 0.6)
    for ax, r in zip(axes[:, 0], videos):
        f = r.arr.shape[1]
        idx = np.linspace(0, f - 1, min(n_frames, f)).round().astype(int)
        strip = r.arr[:n_videos][:, idx]                    # (n, k, H, W, C)
        rows = strip.reshape(-1, *strip.shape[2:])          # (n*k, H, W, C), row-major per video
        _show(ax, tile(rows, cols=len(idx)), f"{r.variant} ({r.run.name} | {r.train.get('dataset', '?')}): "
                                             f"frames {idx.tolist()} of {f} | {protocol(r.meta)}")
    fig.suptitle(f"Video frame strips: {where}", fontsize=10)
    fig.tight_layout()
    return fig


# ---- training curves -----------------------------------------------------------------------------------

def ema(y: np.ndarray, a: float) -> np.ndarray:
    """Debiased exponential moving average (as TensorBoard's smoothing)."""
    out, acc = np.empty(len(y)), 0.0
    for i, v in enumerate(y):
        acc = a * acc + (1 - a) * v
        out[i] = acc / (1 - a ** (i + 1)) if a > 0 else v
    return out


def read_tsv(path: Path, col: str) -> tuple[np.ndarray, np.ndarray]:
    df = pd.read_csv(path, sep="\t")
    if "step" not in df or col not in df:
        raise ValueError(f"{path}: needs columns 'step' and '{col}', has {list(df.columns)}")
    return df["step"].to_numpy(float), df[col].to_numpy(float)


def recipe(run: Path) -> str:
    """What a run trained, without how long: runs of one recipe at several lengths share this label."""
    t = read_json(run / "train.json")
    return " ".join(str(t.get(k)) for k in ("model", "objective", "mixer") if t.get(k))


@dataclass
class Curves:
    where: str
    losses: dict = field(default_factory=dict)      # variant -> [(run, steps, loss)]
    fids: dict = field(default_factory=dict)        # variant -> [(run, steps, fid)] from the DVCLive logs
    checkpoints: dict = field(default_factory=dict)  # variant -> [(run, [eval of each kept checkpoint])]
    finals: dict = field(default_factory=dict)      # recipe -> {train steps: [eval.json, ...]}


def load_curves(runs_dir, variants="") -> Curves:
    """Loss logs, per-checkpoint evaluations (eval_steps.json), FID logs and final evaluations of every
    seed of every variant under the runs root `runs_dir`."""
    runs = Path(runs_dir)
    names = variant_names(runs, variants)
    c = Curves(where="")
    trains = []
    for v in names:
        for run in seed_dirs(runs / v):
            if (run / LOSS_TSV).exists():
                c.losses.setdefault(v, []).append((run, *read_tsv(run / LOSS_TSV, "loss")))
            for f in sorted((run / "dvclive/plots/metrics").rglob("fid.tsv")):
                c.fids.setdefault(v, []).append((run, *read_tsv(f, "fid")))
            kept = read_json(run / "eval_steps.json").get("checkpoints") or []
            if kept:
                c.checkpoints.setdefault(v, []).append((run, sorted(kept, key=lambda e: e["step"])))
            ev, tr = read_json(run / "eval.json"), read_json(run / "train.json")
            if "fid" in ev and tr.get("train_steps"):
                c.finals.setdefault(recipe(run), {}).setdefault(tr["train_steps"], []).append(ev)
            if tr:
                trains.append(tr)
    if not (c.losses or c.checkpoints):
        raise FileNotFoundError(f"no {LOSS_TSV} or eval_steps.json under '{runs_dir}' ({names})")
    c.finals = {r: s for r, s in c.finals.items() if len(s) > 1}  # only recipes trained to several lengths
    datasets = ", ".join(sorted({t.get("dataset", "?") for t in trains})) or "?"
    c.where = f"{datasets} | preset {trains[0].get('preset', '?') if trains else '?'}"
    seeds = c.losses or c.checkpoints
    print(f"seeds per variant: { {v: len(r) for v, r in seeds.items()} }"
          + (f"; per-checkpoint evaluations: { {v: len(r) for v, r in c.checkpoints.items()} }" if c.checkpoints else ""))
    return c


def _mean_band(ax, series, color, label, marker=""):
    """Thin line per seed, thick mean over seeds on the first seed's steps."""
    for x, y in series:
        ax.plot(x, y, color=color, lw=0.7, alpha=0.35)
    grid = series[0][0]
    ax.plot(grid, np.mean([np.interp(grid, x, y) for x, y in series], axis=0), marker, color=color, lw=2,
            ms=4, label=label)


def curves_figure(c: Curves, paper: str, smooth: float = 0.9) -> Figure:
    """Training loss (each seed thin, the seed mean thick, EMA-smoothed) and, beside it, FID and
    class-consistency of every kept checkpoint (eval_steps.json) when the runs have them; otherwise FID
    from the DVCLive logs, or the final samples of one recipe trained to several lengths."""
    by_ckpt = bool(c.checkpoints)
    by_length = bool(c.finals) and not c.fids and not by_ckpt
    ncols = bool(c.losses) + 2 * by_ckpt + (bool(c.fids) and not by_ckpt) + 2 * by_length
    fig, axes = _axes(1, ncols, 5.5 * ncols, 4.2)
    panels = iter(axes[0])
    seeds = lambda n: f"{n} seed{'s' * (n > 1)}"  # noqa: E731
    if c.losses:
        ax = next(panels)
        print(f"loss EMA smoothing {smooth}")
        for i, (v, runs) in enumerate(sorted(c.losses.items())):
            _mean_band(ax, [(x, ema(y, smooth)) for _, x, y in runs], f"C{i % 10}", f"{v} (mean of {seeds(len(runs))})")
        ax.set(xlabel="training step", ylabel=f"loss (EMA {smooth})", title=f"Training loss: {paper} | {c.where}")
        if all((y > 0).all() for s in c.losses.values() for _, _, y in s):
            ax.set_yscale("log")
        ax.legend(fontsize=8)
    if by_ckpt:
        evals = [e for rs in c.checkpoints.values() for _, es in rs for e in es]
        feats = ", ".join(sorted({str(e.get("fid_features", "?")) for e in evals}))
        n = ", ".join(sorted({str(e["fid_samples"]) for e in evals if e.get("fid_samples")}))
        fid_label = f"FID ({feats}" + (f", n={n})" if n else ")")
        for key, label, log in (("fid", fid_label, True), ("class_consistency", "class-consistency", False)):
            ax = next(panels)
            for i, (v, runs) in enumerate(sorted(c.checkpoints.items())):
                series = [(np.array([e["step"] for e in es if e.get(key) is not None], float),
                           np.array([e[key] for e in es if e.get(key) is not None], float)) for _, es in runs]
                series = [(x, y) for x, y in series if len(x)]
                if series:
                    _mean_band(ax, series, f"C{i % 10}", f"{v} (mean of {seeds(len(series))})", marker="o-")
            ax.set(xlabel="training step (kept checkpoints)", ylabel=label,
                   title=f"{label} per checkpoint: {paper} | {c.where}")
            if log and ax.has_data():
                ax.set_yscale("log")
            ax.legend(fontsize=8)
    elif c.fids:
        ax = next(panels)
        for i, (v, runs) in enumerate(sorted(c.fids.items())):
            for j, (_run, x, y) in enumerate(runs):
                ax.plot(x, y, "o-", color=f"C{i % 10}", ms=3, lw=1, label=v if j == 0 else None)
        ax.set(xlabel="training step", ylabel="FID", title=f"FID vs training step: {paper} | {c.where}")
        ax.legend(fontsize=8)
    if by_length:
        print("final samples per recipe and length:", {r: {n: len(e) for n, e in s.items()} for r, s in c.finals.items()})
        feats = sorted({e.get("fid_features", "?") for s in c.finals.values() for es in s.values() for e in es})
        for key, label in (("fid", f"FID ({', '.join(feats)})"), ("class_consistency", "class-consistency")):
            ax = next(panels)
            for i, (r, by_steps) in enumerate(sorted(c.finals.items())):
                xs = sorted(by_steps)
                vals = [[e[key] for e in by_steps[x] if e.get(key) is not None] for x in xs]
                keep = [j for j, vs in enumerate(vals) if vs]
                if keep:
                    ax.errorbar([xs[j] for j in keep], [np.mean(vals[j]) for j in keep],
                                yerr=[np.std(vals[j], ddof=1) if len(vals[j]) > 1 else 0.0 for j in keep], fmt="o-",
                                capsize=3, color=f"C{i % 10}",
                                label=f"{r} (seeds: {'/'.join(str(len(vals[j])) for j in keep)})")
            ax.set(xlabel="training steps", ylabel=label, title=f"Final samples vs training length: {paper}")
            if key == "fid":
                ax.set_yscale("log")
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ---- results (metrics.json) ----------------------------------------------------------------------------

RESULT_COLUMNS = ["variant", "fid", "fid_std", "fid_features", "fid_samples", "kid", "precision", "recall",
                  "class_consistency", "params", "gflops", "train_steps", "train_img_per_s", "sample_s_per_img",
                  "seeds", "sampler", "sample_steps", "cfg_scale", "ema"]


def load_metrics(path) -> dict:
    """A paper's metrics.json; ValueError when it has no rows."""
    m = json.loads(Path(path).read_text())
    if not m.get("rows") or any("variant" not in r for r in m["rows"]):
        raise ValueError(f"{path}: no rows with a 'variant'")
    return m


def metrics_header(m: dict):
    """The paper, arXiv id, dataset and preset, and the toy-scale warning, as Markdown."""
    from IPython.display import Markdown

    toy = " (toy scale: not comparable to ImageNet FIDs)" if m.get("toy_scale") else ""
    return Markdown(f"**{m.get('title', m.get('paper'))}** (arXiv {m.get('arxiv', '?')}): dataset "
                    f"`{m.get('dataset', '?')}`, preset `{m.get('preset', '?')}`{toy}")


def results_table(m: dict) -> pd.DataFrame:
    """The rows with their protocol columns, one per variant."""
    rows = pd.DataFrame(m["rows"])
    return rows.reindex(columns=[c for c in RESULT_COLUMNS if c in rows]).set_index("variant")


def claims_table(m: dict):
    """Claims with the paper's value, ours, the verdict (coloured) and, beside it, why, the rule and the gates."""
    claims = pd.DataFrame(m.get("claims") or [])
    if claims.empty:
        return claims
    claims["gate"] = [g.get("detail", "") if isinstance(g, dict) else "" for g in claims.get("gate", [None] * len(claims))]
    cols = [c for c in ("claim", "paper", "measured", "verdict", "reason", "rule", "gate") if c in claims]
    claims = claims[cols].rename(columns={"paper": "paper value", "measured": "our value", "reason": "why"})
    return claims.style.map(lambda v: f"background-color: {VERDICT_COLORS.get(str(v).strip().lower(), 'white')}",
                            subset=["verdict"])


def claims_figure(m: dict) -> Figure | None:
    """One panel per seed-compared claim: each arm's per-seed values (dots) and mean (bar), the margin
    around the reference arm's mean, and the verdict with its Welch interval in the title."""
    claims = [c for c in m.get("claims") or [] if c.get("kind") in ("better", "comparable") and c.get("values")]
    if not claims:
        return None
    fig, axes = _axes(1, len(claims), 3.6 * len(claims), 3.6)
    for ax, c in zip(axes[0], claims):
        arms = list(c["values"])
        for i, arm in enumerate(arms):
            v = np.asarray(c["values"][arm], float)
            passed = ((c.get("gate") or {}).get("arms") or {}).get(arm, {}).get("passed")
            color = {True: "tab:green", False: "tab:red"}.get(passed, "tab:gray")
            if len(v):
                ax.scatter(np.full(len(v), i) + np.linspace(-0.08, 0.08, len(v)), v, color=color, zorder=3)
                ax.hlines(v.mean(), i - 0.25, i + 0.25, color=color, lw=2)
        if len(arms) == 2 and c["values"].get(arms[1]):
            ref, margin = float(np.mean(c["values"][arms[1]])), float(c.get("margin") or 0)
            ax.axhspan(ref - margin, ref + margin, color="tab:blue", alpha=0.08, label=f"reference ± margin {margin:g}")
        ax.set_xticks(range(len(arms)), arms)
        ax.set_xlim(-0.6, len(arms) - 0.4)
        ax.set_ylabel(f"{c.get('metric', '')} ({c.get('direction', '')} is better)")
        est = c.get("estimate") or {}
        ci = est.get("ci90")
        sub = f"gain {est['diff']:.2f}, 90% CI [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else (c.get("reason") or "")[:40]
        ax.set_title(f"{c.get('key', '')}: {c['verdict']}\n{sub}", fontsize=9,
                     color={"reproduced": "darkgreen", "not reproduced": "darkred"}.get(c["verdict"], "black"))
    fig.suptitle("claims: per-seed values (green: arm passes its gate, red: fails)", fontsize=10)
    fig.tight_layout()
    return fig


def _first(rows: pd.DataFrame, key: str) -> str:
    vals = rows[key].dropna().unique().tolist() if key in rows else []
    vals = [int(v) if isinstance(v, float) and v.is_integer() else v for v in vals]
    return ", ".join(map(str, vals)) or "?"


def fid_figure(m: dict, paper: str) -> Figure:
    """FID per variant, error bars = std over seeds, the protocol in the title."""
    rows = pd.DataFrame(m["rows"])
    fig, axes = _axes(1, 1, max(5, 1.1 * len(rows) + 2), 4.2)
    ax = axes[0, 0]
    if "fid" in rows and rows["fid"].notna().any():
        fid = rows["fid"].astype(float)
        std = rows["fid_std"].astype(float).fillna(0) if "fid_std" in rows else pd.Series(np.zeros(len(rows)))
        ax.bar(rows["variant"], fid, yerr=std, capsize=4, color=[f"C{i % 10}" for i in range(len(rows))])
        for x, (f, s) in enumerate(zip(fid, std)):
            if np.isfinite(f):
                ax.annotate(f"{f:.2f}" + (f"±{s:.2f}" if s else ""), (x, f + s), ha="center", va="bottom", fontsize=8)
        ax.set_ylabel(f"FID ({_first(rows, 'fid_features')} features) ↓")
    else:
        ax.text(0.5, 0.5, "no FID values in metrics.json", ha="center", va="center", transform=ax.transAxes)
    toy = "\ntoy scale: not comparable to ImageNet FIDs" if m.get("toy_scale") else ""
    ax.set_title(f"{paper}: FID per variant (error bars: std over seeds)\n"
                 f"{m.get('dataset', '?')}, preset {m.get('preset', '?')}, n = {_first(rows, 'fid_samples')} samples, "
                 f"{_first(rows, 'fid_features')} features\n{_first(rows, 'sampler')} {_first(rows, 'sample_steps')} "
                 f"steps, cfg {_first(rows, 'cfg_scale')}, EMA {_first(rows, 'ema')}{toy}", fontsize=9)
    ax.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    return fig


def _pick(df: pd.DataFrame, *cands, contains=None):
    for c in cands:
        if c in df:
            return c
    hits = [c for c in df.columns if contains and contains in c.lower()]
    return hits[0] if hits else None


def bench_figure(bench_json, paper: str) -> Figure | None:
    """Time and memory against N on log-log axes from a benchmark JSON (a list of records, or one under
    "rows" / "results" / "records"); None when `bench_json` is "" or does not exist."""
    if not bench_json or not Path(bench_json).exists():
        print(f"no scaling figure (bench_json={bench_json!r})")
        return None
    raw = json.loads(Path(bench_json).read_text())
    recs = raw if isinstance(raw, list) else next((raw[k] for k in ("rows", "results", "records") if k in raw), None)
    if not isinstance(recs, list):
        raise ValueError(f"{bench_json}: expected a list of records or a 'rows' list")
    bench = pd.DataFrame(recs)
    nkey = _pick(bench, "n", "N", "tokens", "seq_len", "num_tokens")
    name = _pick(bench, "mixer", "variant", "name", "model")
    tkey = _pick(bench, "ms_fwd_bwd", "ms", "time_ms", "seconds", "time_s", contains="time")
    mkey = _pick(bench, "peak_mb", "mem_mb", "memory_mb", "peak_mem_mb", "mem_bytes", contains="mem")
    if nkey is None or tkey is None:
        raise ValueError(f"{bench_json}: needs an N column and a time column, has {list(bench.columns)}")
    meta = (raw.get("meta") or raw.get("protocol") or {}) if isinstance(raw, dict) else {}
    proto = ", ".join(f"{k} {v}" for k, v in meta.items()) if isinstance(meta, dict) else str(meta)
    keys = [k for k in (tkey, mkey) if k]
    fig, axes = _axes(1, len(keys), 5.5 * len(keys), 4.2)
    for ax, key in zip(axes[0], keys):
        for label, g in (bench.groupby(name) if name else [("all", bench)]):
            g = g.dropna(subset=[key]).sort_values(nkey)  # skipped points carry null
            ax.loglog(g[nkey], g[key], "o-", label=str(label))
        ax.set(xlabel=f"N ({nkey})", ylabel=key, title=f"{key} vs N")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{paper}: scaling ({Path(bench_json).name}{'; ' + proto if proto else ''})", fontsize=9)
    fig.tight_layout()
    print(f"scaling figure from {bench_json}: {len(bench)} records, x={nkey}, y={keys}")
    return fig


# ---- x0-error diagnostic -------------------------------------------------------------------------------

def x0_error_runs(results) -> list[dict]:
    """The run entries of `pipelines.x0_error` outputs (a dict or JSON path, or a list of them; an output
    holds its runs under "runs"; a bare run entry, with "points", counts as itself). Missing files give none."""
    items = results if isinstance(results, (list, tuple)) else [results]
    runs = []
    for r in items:
        d = read_json(r) if isinstance(r, (str, Path)) else (r or {})
        runs += [e for e in ((d.get("runs") or []) if "runs" in d else [d]) if e and e.get("points")]
    return runs


def x0_error_figure(results) -> Figure | None:
    """The x0 error vs log-SNR, one line per run (`pipelines.x0_error` outputs, see `x0_error_runs`), log
    scale, band = standard error over digits; lines of one variant share a colour (each seed its own dashes). Noise grows to the left:
    where an arm's line rises above the others is where its x0 estimate (read as the sampler reads it)
    is worse. None when there is nothing to draw."""
    docs = x0_error_runs(results)
    if not docs:
        print("no x0-error results to draw")
        return None
    fig, axes = _axes(1, 1, 6.5, 4.4)
    ax = axes[0, 0]
    colours, seen = {}, []
    for d in docs:
        pts = sorted(d["points"], key=lambda p: p.get("log_snr_used", p["log_snr"]))
        lam = np.array([p.get("log_snr_used", p["log_snr"]) for p in pts], dtype=float)
        mse = np.array([p["mse"] for p in pts], dtype=float)
        sem = np.array([p.get("sem") if p.get("sem") is not None else np.nan for p in pts], dtype=float)
        variant = d.get("variant", "?")
        colour = colours.setdefault(variant, f"C{len(colours) % 10}")
        style = ("-", "--", ":", "-.")[seen.count(variant) % 4]  # seeds of one variant: one colour, own dashes
        seen.append(variant)
        label = f"{variant}/s{d.get('seed', '?')} ({d.get('objective', '?')}, {d.get('prediction', '?')})"
        ax.plot(lam, mse, marker="o", ls=style, ms=3, color=colour, label=label)
        if np.isfinite(sem).any():
            ax.fill_between(lam, np.clip(mse - sem, 1e-12, None), mse + sem, color=colour, alpha=0.2)
    ax.set_yscale("log")
    ax.set(xlabel="log-SNR  log(alpha^2 / sigma^2)   (noisier to the left)", ylabel="x0 MSE (per pixel) ↓")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    p = docs[0].get("protocol", {})
    weights = {True: "EMA", False: "raw"}.get(p.get("ema"), "?")
    ax.set_title(f"x0 error of the model's estimate vs noise level\n{p.get('dataset', '?')} {p.get('split', '?')}, "
                 f"n = {p.get('num', '?')} digits, {weights} weights, guidance {p.get('guidance', '?')},\n"
                 f"the same noise for every run", fontsize=9)
    fig.tight_layout()
    return fig


# ---- why an arm fails: faithfulness to the official code, x0 error, gates -------------------------------

def _doc(d) -> dict:
    return read_json(d) if isinstance(d, (str, Path)) else (d or {})


def faithful_table(faithful) -> pd.DataFrame:
    """A `pipelines.faithful` output (dict or path), one row per compared group and dtype: the quantities
    compared, the worst max |ours - official| among them, the tolerance, and whether every one is within it.
    Empty when there is no output."""
    rows = _doc(faithful).get("rows") or []
    out = []
    for (group, dtype), g in pd.DataFrame(rows).groupby(["group", "dtype"], sort=False) if rows else []:
        out.append({"compared": group, "dtype": dtype, "quantities": len(g),
                    "max abs diff (ours vs official)": float(g["max_abs_diff"].max()), "tolerance": float(g["atol"].max()),
                    "within": "all" if g["passed"].all() else f"{int(g['passed'].sum())} of {len(g)}"})
    return pd.DataFrame(out)


def _run_label(e: dict) -> str:
    return f"{e.get('variant', '?')} ({e.get('objective', '?')}, {e.get('prediction', '?')})"


def x0_error_table(results) -> pd.DataFrame:
    """x0 MSE (mean over each variant's seeds) per asked log-SNR (rows, noisiest first) and variant
    (columns "<variant> (<objective>, <prediction>)", in the order of the runs); the seeds behind each
    column are in `.attrs["seeds"]`. DDPM runs are measured at their chain's nearest step (`log_snr_used`)."""
    runs = x0_error_runs(results)
    if not runs:
        return pd.DataFrame()
    cols: dict[str, list] = {}
    for e in runs:
        cols.setdefault(_run_label(e), []).append(e)
    table = pd.DataFrame({label: pd.DataFrame([{p["log_snr"]: p["mse"] for p in e["points"]} for e in es]).mean()
                          for label, es in cols.items()}).sort_index()
    table.index.name = "log-SNR"
    table.attrs["seeds"] = {label: [e.get("seed") for e in es] for label, es in cols.items()}
    return table


def arm_gate(row: dict) -> dict:
    """An arm's quality gate by the one rule (`common.metrics.schema.gate_arm`) from its metrics.json row:
    the image gate, or the video gate for a row with frame-FID (its calibration is not read here)."""
    from common.metrics.schema import gate_arm

    return gate_arm(row, "video" if row.get("frame_fid") is not None else "image", None)


def claim_gate_table(metrics, key: str) -> pd.DataFrame:
    """Each arm of the claim `key` of a metrics.json (dict or path): its class-consistency (mean over seeds
    and per seed, from its row) and its gate, as the claim judged it or, when the claim did not get that far
    (an arm missing), by the rule from the arm's row; the claim's text, verdict and reason in `.attrs`.
    Empty when there is no such claim."""
    m = _doc(metrics)
    claim = next((c for c in m.get("claims") or [] if c.get("key") == key), None)
    if claim is None:
        return pd.DataFrame()
    rows = {r["variant"]: r for r in m.get("rows") or []}
    gates = (claim.get("gate") or {}).get("arms") or {}
    out = []
    for arm in claim.get("compares") or []:
        r = rows.get(arm)
        g = gates.get(arm) or (arm_gate(r) if r else None)
        per_seed = (r or {}).get("class_consistency_per_seed")
        why = (g or {}).get("detail", "") if r else "did not run"
        if r and arm not in gates:
            why += " (the arm's own gate: the claim was not judged)"
        out.append({"arm": arm, "seeds": ", ".join(map(str, (r or {}).get("seeds") or [])) or NONE,
                    "class-consistency": (r or {}).get("class_consistency"),
                    "per seed": ", ".join(f"{v:.2f}" for v in per_seed) if per_seed else NONE,
                    "gate": NONE if g is None or g.get("passed") is None else ("pass" if g["passed"] else "fail"),
                    "why": why})
    table = pd.DataFrame(out)
    table.attrs.update(verdict=claim.get("verdict"), reason=claim.get("reason", ""), claim=claim.get("claim", ""))
    return table


def markdown_table(table: pd.DataFrame, index: bool = False, digits: int = 3) -> str:
    """A DataFrame as a GitHub Markdown table; floats with `digits` significant digits, None as a dash."""
    def cell(v):
        if v is None or (isinstance(v, float) and not np.isfinite(v)):
            return NONE
        if isinstance(v, float):
            return f"{v:.{digits}g}"
        return str(v).replace("|", "\\|")

    frame = table.reset_index() if index else table
    lines = ["| " + " | ".join(cell(c) for c in frame.columns) + " |", "|---" * len(frame.columns) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)
