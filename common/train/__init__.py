"""The training loop shared by every paper: AdamW, EMA, grad clipping, optional bf16 autocast,
DVCLive logging on rank 0, DDP through torchrun, atomic checkpoints and bit-identical auto-resume.

Determinism: every random draw of a training step (which samples form the batch, each sample's
timestep, noise and label drop) is derived from (seed, step, index in the global batch), never from a
global RNG stream. So a run killed at any moment and restarted resumes to bit-identical weights on
the CPU, and a DDP run on W processes sees exactly the samples and noise of the single-process run
with the same global batch (each rank takes a strided slice of it; DDP averages the gradients).

Loss: the objective's per-sample terms (`training_losses` -> {"mse", ["vb",] "loss"}) plus the extra terms
of `cfg.losses` (common.losses: weighted, their parameters optimised and checkpointed with the model).
Each is logged to DVCLive as `train/<name>`; `train/loss` is the total. With no extra term the step is
exactly the objective's loss (checkpoints are bit-identical to runs made before terms existed).

Run directory: `run.json` (the config), `ckpt/latest.pt` (model, EMA, optimizer, loss terms, step, RNG,
config, bookkeeping for train.json), `ckpt/step_<N>.pt` every `train.keep_every` steps (model, EMA, step,
config: for evaluation over training), `dvclive/`, and `train.json` at the end. `train.init_from` starts
step 0 from another run's weights (the keys that did not fit are listed in the log and in train.json).
Re-running a finished run changes nothing; a run is never shortened; `on_mismatch="restart"` removes
another config's checkpoints only after the new config, model, terms and init_from were all checked.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from common.config import RunConfig, deep_merge
from common.diffusion import objective_from_config
from common.errors import UserError
from common.flops import model_flops
from common.io import write_json
from common.losses import LossContext, build_loss_terms
from common.models import count_params, create_model
from common.models.taps import Taps, unwrap

from .checkpoint import CheckpointError, kept_checkpoints, kept_path, load, load_matching, save_atomic

log = logging.getLogger("diffrepro.train")


class TrainingError(UserError, RuntimeError):
    """Training cannot go on (e.g. a NaN/inf loss); the last good checkpoint is kept."""


# ---- helpers -------------------------------------------------------------------------------------
def dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def setup_distributed() -> tuple[int, int]:
    """Initialise torch.distributed when launched by torchrun (RANK in the environment)."""
    if "RANK" in os.environ and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return dist_info()


def build_model(cfg: RunConfig, data_info=None):
    kw = dict(cfg.model.overrides)
    if cfg.model.mixer:
        kw["mixer"] = cfg.model.mixer
    if cfg.model.mixer_kwargs:
        kw["mixer_kwargs"] = dict(cfg.model.mixer_kwargs)
    if data_info is not None:  # the model must fit the dataset, whatever the preset
        kw.setdefault("in_channels", data_info.channels)
        kw.setdefault("input_size", data_info.size)
        kw.setdefault("num_classes", data_info.num_classes)
        if data_info.frames:
            kw.setdefault("frames", cfg.data.frames)
    if cfg.diffusion.objective == "ddpm":
        kw.setdefault("learn_sigma", cfg.diffusion.learn_sigma)
    return create_model(cfg.model.name, **kw)


def _seed_of(*parts: int) -> int:
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) + 0x9E3779B9 + (h << 6) + (h >> 2))) & 0x7FFFFFFFFFFFFFFF
    return h


def batch_indices(seed: int, step: int, n_data: int, batch: int) -> torch.Tensor:
    """Global batch of `step`: consecutive slices of a per-epoch permutation (seeded by seed, epoch)."""
    per_epoch = n_data // batch
    epoch, k = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(_seed_of(seed, epoch, 1))
    perm = torch.randperm(n_data, generator=g)
    return perm[k * batch : (k + 1) * batch]


def per_sample_draws(objective, x: torch.Tensor, seed: int, step: int, idx: torch.Tensor, drop_prob: float,
                     per_frame_t: bool):
    """t, noise and label-drop flags of each sample, from its own generator (seed, step, global index)."""
    ts, noises, drops = [], [], []
    for j in idx.tolist():
        g = torch.Generator().manual_seed(_seed_of(seed, step, j, 2))
        ts.append(objective.sample_t(x[:1], generator=g, per_frame=per_frame_t)[0])
        noises.append(torch.randn(x.shape[1:], generator=g))
        drops.append(torch.rand((), generator=g) < drop_prob)
    return torch.stack(ts), torch.stack(noises), torch.stack(drops).long()


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema = decay * ema + (1 - decay) * model for parameters; buffers are copied."""
    ep = [p for p in ema.parameters()]
    mp = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(ep, mp, 1.0 - decay)
    for eb, mb in zip(ema.buffers(), model.buffers()):
        eb.copy_(mb)


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state()}


class _Progress:
    """tqdm on a terminal, periodic log lines otherwise (dvc repro, CI)."""

    def __init__(self, total: int, initial: int, every: int, enabled: bool):
        self.enabled, self.every, self.total = enabled, every, total
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="train", dynamic_ncols=True)

    def update(self, step: int, loss: float, ips: float):
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{ips:.0f}")
        elif step % self.every == 0 or step == self.total:
            print(f"step {step}/{self.total}  loss {loss:.4f}  {ips:.0f} img/s", flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _trim_dvclive(live_dir: Path, step: int) -> None:
    """Make a killed run's logs resumable: drop log rows past `step` (written after the last checkpoint)
    and rows or files cut short by the kill (a partial last line, an empty or truncated summary)."""
    for tsv in (live_dir / "plots" / "metrics").rglob("*.tsv"):
        lines = tsv.read_text().splitlines()
        if not lines:
            continue
        head = lines[0].split("\t")
        col = head.index("step") if "step" in head else 0
        keep = [lines[0]] + [ln for ln in lines[1:]
                             if len(f := ln.split("\t")) == len(head) and f[col].isdigit() and int(f[col]) <= step]
        tsv.write_text("\n".join(keep) + "\n")
    summary = live_dir / "metrics.json"
    if summary.exists():
        try:
            json.loads(summary.read_text())
        except ValueError:  # cut short by the kill: DVCLive rewrites it at the next logged step
            summary.unlink()


# ---- loss terms and fine-tuning ------------------------------------------------------------------
def compute_losses(objective, net, terms: torch.nn.ModuleDict, x, y, t, noise, drop, step: int = 0):
    """One step's loss: (scalar total, {name: (B,) per-sample values}) with the objective's terms (e.g.
    "mse", "vb"), each extra term unweighted under its own name, and "loss" = the objective's total +
    sum of weight * term. Without extra terms this is exactly `objective.training_losses(...)["loss"].mean()`."""
    if not len(terms):
        out = objective.training_losses(net, x, y, t=t, noise=noise, force_drop_ids=drop)
        return out["loss"].mean(), out
    blocks = sorted({i for term in terms.values() for i in term.tap_blocks})
    with Taps(net, blocks=blocks, attn_logits=any(term.tap_attn for term in terms.values())) as taps:
        out = objective.training_losses(net, x, y, t=t, noise=noise, force_drop_ids=drop)
    ctx = LossContext(model=unwrap(net), x=x, y=y, t=t, noise=noise, drop=drop, x_t=taps.input, out=taps.output,
                      terms=out, step=step, features=taps.features, attn_logits=taps.attn_logits)
    logs, total = dict(out), out["loss"]
    for name, term in terms.items():
        value = term(ctx)
        if not isinstance(value, torch.Tensor) or value.shape != total.shape:
            raise TrainingError(f"loss term '{name}' must return a per-sample tensor of shape "
                                f"{tuple(total.shape)}, got {getattr(value, 'shape', type(value).__name__)}")
        logs[name] = value
        total = total + term.cfg.weight * value  # (B,)
    logs["loss"] = total
    return total.mean(), logs


def init_from_run(run_dir: str, which: str, model: torch.nn.Module, terms: torch.nn.ModuleDict) -> dict:
    """Load `which` ("ema" | "model") weights of another run's ckpt/latest.pt into `model` (and its loss
    terms' parameters from the source's "losses", when it had them). Keys that do not fit are reported,
    not raised: the report goes to the log and to train.json."""
    src = Path(run_dir)
    path = src / "ckpt" / "latest.pt"
    if not src.is_dir():
        raise CheckpointError(f"train.init_from: run directory '{src}' not found")
    if not path.is_file():
        raise CheckpointError(f"train.init_from: no checkpoint at {path}; train that run first")
    try:
        ck = load(path)
        state = ck[which]
    except (CheckpointError, KeyError) as e:
        raise CheckpointError(f"train.init_from: {e}") from e
    report = {"from": src.as_posix(), "weights": which, "step": int(ck["step"])}
    loaded = {}
    for prefix, module, sd in (("", model, state), ("losses.", terms, ck.get("losses") or {})):
        r = load_matching(module, sd)
        loaded[prefix] = r.pop("loaded")
        for k, keys in r.items():
            report.setdefault(k, []).extend(prefix + key for key in keys)
    if loaded[""] == 0:
        raise CheckpointError(f"train.init_from: no tensor of {path} fits the model '{model.__class__.__name__}' "
                              f"({len(report['shape_mismatch'])} shape mismatches, {len(report['dropped_keys'])} "
                              f"unknown keys)")
    report["loaded"] = sum(loaded.values())
    return report


def _init_line(r: dict) -> str:
    def few(keys):
        return ", ".join(keys[:8]) + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "") if keys else "none"

    return (f"initialised from {r['from']} ({r['weights']} weights, step {r['step']}): {r['loaded']} tensors "
            f"loaded; new (kept at initialisation): {few(r['new_keys'])}; dropped: {few(r['dropped_keys'])}; "
            f"shape mismatch: {few(r['shape_mismatch'])}")


def _read_json(path: Path, rank: int, fix: str) -> dict | None:
    """A run's own JSON file, or None when it is missing or unreadable (then a warning says what happens)."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            return data
    except (OSError, ValueError):
        pass
    if rank == 0:
        print(f"warning: {path} is not a valid JSON object; {fix}", file=sys.stderr, flush=True)
    return None


def _summary(cfg: RunConfig, model, n_params: int, flops: dict, stats: dict, world: int, init: dict | None) -> dict:
    """train.json from the run's config, its model and the bookkeeping the checkpoint carries."""
    timed = stats.get("timed_seconds", 0.0)
    summary = {
        "params": n_params, "gflops": flops["gflops"], "gmacs": flops["gmacs"], "train_steps": cfg.train.steps,
        "train_img_per_s": stats["timed_images"] / timed if timed > 0 else None,
        "train_seconds": stats.get("train_seconds"), "final_loss": stats.get("loss"), "model": cfg.model.name,
        "mixer": model.mixers[0] if len(set(model.mixers)) == 1 else "hybrid",
        "objective": cfg.diffusion.objective, "dataset": cfg.data.name, "preset": cfg.preset,
        "world_size": world, "batch_size": cfg.train.batch_size,
    }
    if cfg.losses:
        summary["losses"] = {name: c.weight for name, c in cfg.losses.items()}
    if init:
        summary["init"] = init
    return summary


# ---- the loop ------------------------------------------------------------------------------------
def train(cfg: RunConfig, out_dir: str | Path, dataset=None, data_info=None, log_to_dvclive: bool = True,
          on_mismatch: str = "error") -> dict:
    """Train (or resume) the run described by `cfg` in `out_dir`; returns the summary dict (train.json).

    Everything that can fail (the directory's config, its checkpoint, the model, the loss terms,
    `train.init_from`) is checked before anything is written; with `on_mismatch="restart"` another
    config's checkpoints are removed only then. A finished run is left as it is."""
    from common import data as data_mod

    out = Path(out_dir)
    rank, world = setup_distributed()
    tc = cfg.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    if tc.batch_size % world:
        raise TrainingError(f"train.batch_size {tc.batch_size} is not divisible by the {world} processes")
    data_info = data_info or data_mod.info(cfg.data.name)
    if dataset is None:
        dataset = data_mod.load(cfg.data.name, "train", root=cfg.data.root, frames=cfg.data.frames)
    images, labels = dataset.tensors
    n_data = len(images)
    if n_data < tc.batch_size:
        raise TrainingError(f"dataset '{cfg.data.name}' has {n_data} samples, fewer than train.batch_size {tc.batch_size}")

    # ---- what the directory holds: another config, or a checkpoint to resume
    ckpt_dir = out / "ckpt"
    ckpt_path = ckpt_dir / "latest.pt"
    cfg_dict = cfg.to_dict()
    run_json = out / "run.json"
    prev = _read_json(run_json, rank, "it is rewritten from this run's config")
    restart = False
    if prev is not None and _comparable(prev) != _comparable(cfg_dict):
        if on_mismatch != "restart":
            diff = sorted(_diff_keys(_comparable(prev), _comparable(cfg_dict)))
            raise CheckpointError(
                f"output directory {out} belongs to another config (differs in: {', '.join(diff[:5])}); "
                f"choose another --out or delete it")
        restart = True
    ck = None
    if ckpt_path.exists() and not restart:
        ck = load(ckpt_path)
        if _comparable(ck["config"]) != _comparable(cfg_dict):
            if on_mismatch != "restart":
                raise CheckpointError(f"checkpoint {ckpt_path} was written by another config; choose another --out")
            restart, ck = True, None
        elif int(ck["step"]) > tc.steps:
            raise TrainingError(f"checkpoint {ckpt_path} holds {int(ck['step'])} steps, more than train.steps "
                                f"{tc.steps}; a run cannot be shortened (set train.steps >= {int(ck['step'])} "
                                f"or choose another --out)")

    # ---- build everything (a failure here leaves the directory as it was)
    torch.manual_seed(tc.seed)
    model = build_model(cfg, data_info)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    objective = objective_from_config(cfg.diffusion)
    terms = build_loss_terms(cfg.losses, model)  # built after the model: its initialisation is unchanged
    opt = torch.optim.AdamW([p for p in (*model.parameters(), *terms.parameters()) if p.requires_grad], lr=tc.lr,
                            betas=tuple(tc.betas), weight_decay=tc.weight_decay)
    step, init_report = 0, None
    stats = {"train_seconds": 0.0, "timed_images": 0, "timed_seconds": 0.0, "loss": None}
    if ck is not None:
        try:
            model.load_state_dict(ck["model"])
            ema.load_state_dict(ck["ema"])
            opt.load_state_dict(ck["opt"])
            if len(terms):
                terms.load_state_dict(ck["losses"])
        except (RuntimeError, KeyError, ValueError) as e:
            raise CheckpointError(f"checkpoint {ckpt_path} does not fit the model '{cfg.model.name}': {e}") from e
        torch.set_rng_state(ck["rng"]["torch"])
        step, init_report = int(ck["step"]), ck.get("init")
        stats.update(ck.get("stats") or {})
    elif tc.init_from:
        init_report = init_from_run(tc.init_from, tc.init_weights, model, terms)
        ema.load_state_dict(model.state_dict())
    n_params = count_params(model)
    flops = model_flops(model)

    # ---- a finished run: nothing to do (train.json is rebuilt only when it is missing or corrupt)
    if step == tc.steps:
        summary = _read_json(out / "train.json", rank, "it is rebuilt from the checkpoint")
        if summary is None:
            summary = _summary(cfg, model, n_params, flops, stats, world, init_report)
            if rank == 0:
                write_json(out / "train.json", summary)
        if rank == 0:
            if prev is None:
                write_json(run_json, cfg_dict, newline=False)
            print(f"{out} is already trained to {step} steps: nothing to do", flush=True)
        return summary

    # ---- commit: only now is another config's run removed
    if rank == 0:
        if restart:  # the other config's checkpoints and summary (its DVCLive logs go below, at step 0)
            for p in [ckpt_path, *(p for _, p in kept_checkpoints(ckpt_dir)), out / "train.json"]:
                p.unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        write_json(run_json, cfg_dict, newline=False)
        if step:
            print(f"resuming {out} from step {step}", flush=True)
        elif init_report:
            print(_init_line(init_report), flush=True)

    ddp_model = DDP(model) if world > 1 else model
    live = None
    if rank == 0 and log_to_dvclive:
        from dvclive import Live

        if step == 0 and (out / "dvclive").exists():
            import shutil

            shutil.rmtree(out / "dvclive")
        if step:
            _trim_dvclive(out / "dvclive", step)
        live = Live(dir=str(out / "dvclive"), resume=step > 0, dvcyaml=False, save_dvc_exp=False, report=None)
        if step == 0:
            live.log_params({"paper": cfg.paper, "variant": cfg.variant, "model": cfg.model.name,
                             "params": n_params, "objective": cfg.diffusion.objective})

    video = images.dim() == 5
    per_frame_t = video and cfg.diffusion.per_frame_t
    drop_prob = model.y_embedder.dropout_prob
    local = slice(rank, None, world)
    amp = torch.autocast("cuda" if torch.cuda.is_available() else "cpu", dtype=torch.bfloat16,
                         enabled=tc.precision == "bf16")
    clip_params = [*model.parameters(), *terms.parameters()]
    progress = _Progress(tc.steps, step, tc.log_every, rank == 0)
    model.train()
    t_start, n_seen, t_first = time.time(), 0, None
    stats0 = dict(stats)
    interval: dict[str, float] = {}
    interval_n = 0
    while step < tc.steps:
        idx = batch_indices(tc.seed, step, n_data, tc.batch_size)[local]
        x, y = images[idx], labels[idx]
        t, noise, drop = per_sample_draws(objective, x, tc.seed, step, idx, drop_prob, per_frame_t)
        lr = tc.lr * min(1.0, (step + 1) / tc.warmup_steps) if tc.warmup_steps else tc.lr
        for g in opt.param_groups:
            g["lr"] = lr
        with amp:
            loss, logs = compute_losses(objective, ddp_model, terms, x, y, t, noise, drop, step)
        names = ["loss", *(k for k in logs if k != "loss")]
        values = torch.stack([loss.detach().float(), *(logs[k].detach().float().mean() for k in names[1:])])
        if world > 1:
            dist.all_reduce(values)
            values /= world
        loss_val = values[0].item()
        if not math.isfinite(loss_val):
            progress.close()
            raise TrainingError(
                f"loss is {loss_val} at step {step}; stopped. The last good checkpoint "
                f"({ckpt_path if ckpt_path.exists() else 'none yet'}) is kept. Try a lower train.lr or fp32.")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if world > 1 and len(terms):  # DDP averages the model's gradients; the terms' are averaged here
            for p in terms.parameters():
                if p.requires_grad:
                    p.grad = torch.zeros_like(p) if p.grad is None else p.grad
                    dist.all_reduce(p.grad)
                    p.grad /= world
        if tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(clip_params, tc.grad_clip)
        opt.step()
        # EMA warm-up (as TF's ExponentialMovingAverage with num_updates): early on the average must not
        # be dominated by the untrained initial weights, which matters for short CPU runs
        ema_update(ema, model, min(tc.ema_decay, (1 + step) / (10 + step)))
        step += 1
        n_seen += tc.batch_size
        if t_first is None:
            t_first, n_seen = time.time(), 0  # exclude the first (warm-up) step from throughput
        now = time.time()
        stats.update(train_seconds=stats0["train_seconds"] + now - t_start, loss=loss_val,
                     timed_images=stats0["timed_images"] + n_seen,
                     timed_seconds=stats0["timed_seconds"] + now - t_first)
        progress.update(step, loss_val, n_seen / max(now - t_first, 1e-9))
        for k, v in zip(names, values.tolist()):
            interval[k] = interval.get(k, 0.0) + v
        interval_n += 1
        if live is not None and (step % tc.log_every == 0 or step == tc.steps):
            live.step = step
            for k in names:  # train/loss (the total), then the objective's and the extra terms
                live.log_metric(f"train/{k}", interval[k] / interval_n)  # mean over the logging interval
            live.log_metric("train/lr", lr)
            live.make_summary()
        if step % tc.log_every == 0:
            interval, interval_n = {}, 0
        if rank == 0 and tc.keep_every and step % tc.keep_every == 0:
            save_atomic({"model": model.state_dict(), "ema": ema.state_dict(), "step": step, "config": cfg_dict},
                        kept_path(ckpt_dir, step))
        if step % tc.ckpt_every == 0 or step == tc.steps:
            if rank == 0:
                state = {"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                         "step": step, "rng": _rng_state(), "config": cfg_dict, "stats": dict(stats)}
                if len(terms):
                    state["losses"] = terms.state_dict()
                if init_report:
                    state["init"] = init_report
                save_atomic(state, ckpt_path)
            if world > 1:
                dist.barrier()
    progress.close()
    summary = _summary(cfg, model, n_params, flops, stats, world, init_report)
    if rank == 0:
        if live is not None:
            live.end()
        prev_train = _read_json(out / "train.json", rank, "it is rewritten") or {}
        if prev_train.get("train_img_per_s") and summary["train_img_per_s"] is None:
            summary["train_img_per_s"] = prev_train["train_img_per_s"]
        write_json(out / "train.json", summary)
    return summary


def _comparable(cfg: dict) -> dict:
    """Config fields that define a run (sampling settings, logging and checkpoint cadence may change).
    Keys added to RunConfig after a run was written compare at their defaults, so old runs still resume."""
    c = deep_merge(RunConfig().to_dict(), cfg)
    c.pop("sample", None)
    for k in ("log_every", "ckpt_every", "keep_every", "threads", "steps"):
        c.get("train", {}).pop(k, None)
    c.get("data", {}).pop("num_workers", None)
    c.get("data", {}).pop("root", None)
    return c


def _diff_keys(a: dict, b: dict, prefix: str = ""):
    for k in set(a) | set(b):
        if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
            yield from _diff_keys(a[k], b[k], prefix + k + ".")
        elif a.get(k) != b.get(k):
            yield prefix + k


def load_for_sampling(run_dir: str | Path, use_ema: bool = True, checkpoint: str | Path | None = None):
    """(model in eval mode, RunConfig, step) from a run directory's latest checkpoint, or from `checkpoint`
    (e.g. a kept ckpt/step_<N>.pt)."""
    from common import data as data_mod
    from common.config import from_dict

    path = Path(checkpoint) if checkpoint is not None else Path(run_dir) / "ckpt" / "latest.pt"
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}: train the run first")
    ck = load(path)
    cfg = from_dict({k: v for k, v in ck["config"].items()})
    model = build_model(cfg, data_mod.info(cfg.data.name))
    try:
        model.load_state_dict(ck["ema" if use_ema else "model"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not fit the model '{cfg.model.name}': {e}") from e
    return model.eval(), cfg, int(ck["step"])
