"""The training loop shared by every paper: AdamW, EMA, grad clipping, optional bf16 autocast,
DVCLive logging on rank 0, DDP through torchrun, atomic checkpoints and bit-identical auto-resume.

Determinism: every random draw of a training step (which samples form the batch, each sample's
timestep, noise and label drop) is derived from (seed, step, index in the global batch), never from a
global RNG stream. So a run killed at any moment and restarted resumes to bit-identical weights on
the CPU, and a DDP run on W processes sees exactly the samples and noise of the single-process run
with the same global batch (each rank takes a strided slice of it; DDP averages the gradients).
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

from common.config import RunConfig
from common.diffusion import create_objective
from common.errors import UserError
from common.flops import model_flops
from common.io import read_json, write_json
from common.models import count_params, create_model

from .checkpoint import CheckpointError, load, save_atomic

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


# ---- the loop ------------------------------------------------------------------------------------
def train(cfg: RunConfig, out_dir: str | Path, dataset=None, data_info=None, log_to_dvclive: bool = True,
          on_mismatch: str = "error") -> dict:
    """Train (or resume) the run described by `cfg` in `out_dir`; returns the summary dict (train.json)."""
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

    ckpt_path = out / "ckpt" / "latest.pt"
    cfg_dict = cfg.to_dict()
    run_json = out / "run.json"
    if run_json.exists():
        prev = read_json(run_json, fix="delete it and re-run the train command (the checkpoint holds the config)")
        if _comparable(prev) != _comparable(cfg_dict):
            if on_mismatch != "restart":
                diff = sorted(_diff_keys(_comparable(prev), _comparable(cfg_dict)))
                raise CheckpointError(
                    f"output directory {out} belongs to another config (differs in: {', '.join(diff[:5])}); "
                    f"choose another --out or delete it")
            if rank == 0 and ckpt_path.exists():
                ckpt_path.unlink()

    torch.manual_seed(tc.seed)
    model = build_model(cfg, data_info)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    objective = create_objective(cfg.diffusion.objective, num_timesteps=cfg.diffusion.num_timesteps,
                                 learn_sigma=cfg.diffusion.learn_sigma)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=tc.lr,
                            betas=tuple(tc.betas), weight_decay=tc.weight_decay)
    step = 0
    if ckpt_path.exists():
        ck = load(ckpt_path)
        if _comparable(ck["config"]) != _comparable(cfg_dict):
            raise CheckpointError(f"checkpoint {ckpt_path} was written by another config; choose another --out")
        try:
            model.load_state_dict(ck["model"])
            ema.load_state_dict(ck["ema"])
            opt.load_state_dict(ck["opt"])
        except (RuntimeError, KeyError, ValueError) as e:
            raise CheckpointError(f"checkpoint {ckpt_path} does not fit the model '{cfg.model.name}': {e}") from e
        torch.set_rng_state(ck["rng"]["torch"])
        step = int(ck["step"])
        if rank == 0:
            print(f"resuming {out} from step {step}", flush=True)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        write_json(run_json, cfg_dict, newline=False)

    ddp_model = DDP(model) if world > 1 else model
    n_params = count_params(model)
    flops = model_flops(model)
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
    progress = _Progress(tc.steps, step, tc.log_every, rank == 0)
    model.train()
    t_start, n_seen, t_first = time.time(), 0, None
    last_loss, interval_loss, interval_n = float("nan"), 0.0, 0
    while step < tc.steps:
        idx = batch_indices(tc.seed, step, n_data, tc.batch_size)[local]
        x, y = images[idx], labels[idx]
        t, noise, drop = per_sample_draws(objective, x, tc.seed, step, idx, drop_prob, per_frame_t)
        lr = tc.lr * min(1.0, (step + 1) / tc.warmup_steps) if tc.warmup_steps else tc.lr
        for g in opt.param_groups:
            g["lr"] = lr
        with amp:
            loss = objective.training_losses(ddp_model, x, y, t=t, noise=noise, force_drop_ids=drop)["loss"].mean()
        loss_val = loss.detach()
        if world > 1:
            dist.all_reduce(loss_val)
            loss_val /= world
        if not math.isfinite(loss_val.item()):
            progress.close()
            raise TrainingError(
                f"loss is {loss_val.item()} at step {step}; stopped. The last good checkpoint "
                f"({ckpt_path if ckpt_path.exists() else 'none yet'}) is kept. Try a lower train.lr or fp32.")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        # EMA warm-up (as TF's ExponentialMovingAverage with num_updates): early on the average must not
        # be dominated by the untrained initial weights, which matters for short CPU runs
        ema_update(ema, model, min(tc.ema_decay, (1 + step) / (10 + step)))
        step += 1
        last_loss = loss_val.item()
        n_seen += tc.batch_size
        if t_first is None:
            t_first, n_seen = time.time(), 0  # exclude the first (warm-up) step from throughput
        ips = n_seen / max(time.time() - t_first, 1e-9)
        progress.update(step, last_loss, ips)
        interval_loss, interval_n = interval_loss + last_loss, interval_n + 1
        if live is not None and (step % tc.log_every == 0 or step == tc.steps):
            live.step = step
            live.log_metric("train/loss", interval_loss / interval_n)  # mean over the logging interval
            live.log_metric("train/lr", lr)
            live.make_summary()
        if step % tc.log_every == 0:
            interval_loss, interval_n = 0.0, 0
        if step % tc.ckpt_every == 0 or step == tc.steps:
            if rank == 0:
                save_atomic({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                             "step": step, "rng": _rng_state(), "config": cfg_dict}, ckpt_path)
            if world > 1:
                dist.barrier()
    progress.close()
    seconds = time.time() - t_start
    summary = {
        "params": n_params, "gflops": flops["gflops"], "gmacs": flops["gmacs"], "train_steps": tc.steps,
        "train_img_per_s": (n_seen / (time.time() - t_first)) if t_first and n_seen else None,
        "train_seconds": seconds, "final_loss": last_loss, "model": cfg.model.name,
        "mixer": model.mixers[0] if len(set(model.mixers)) == 1 else "hybrid",
        "objective": cfg.diffusion.objective, "dataset": cfg.data.name, "preset": cfg.preset,
        "world_size": world, "batch_size": tc.batch_size,
    }
    if rank == 0:
        if live is not None:
            live.end()
        prev = json.loads((out / "train.json").read_text()) if (out / "train.json").exists() else {}
        if prev.get("train_img_per_s") and summary["train_img_per_s"] is None:
            summary["train_img_per_s"] = prev["train_img_per_s"]
        (out / "train.json").write_text(json.dumps(summary, indent=2))
    return summary


def _comparable(cfg: dict) -> dict:
    """Config fields that define a run (sampling settings and logging cadence may change)."""
    c = copy.deepcopy(cfg)
    c.pop("sample", None)
    for k in ("log_every", "ckpt_every", "threads", "steps"):
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


def load_for_sampling(run_dir: str | Path, use_ema: bool = True):
    """(model in eval mode, RunConfig) from a run directory's latest checkpoint."""
    from common import data as data_mod
    from common.config import from_dict

    path = Path(run_dir) / "ckpt" / "latest.pt"
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
