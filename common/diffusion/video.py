"""Frame-by-frame (sequential) video generation through the DiT's `step_frame`, and its benchmark.

A video DiT trained with a block-causal mask (`mask="block"`) and per-frame timesteps
(`diffusion.per_frame_t: true`) can generate a video one frame at a time: frame f is denoised from
t = 1 to t = 0 while the frames before it are clean (t = 0) context. Each block's mixer keeps a
recurrent state of the committed frames (`Mixer.step`): a key/value cache that grows with every frame
for attention, a fixed-size polynomial mean for PoM, so PoM's memory per generated frame is constant.

For every frame f:
1. integrate frame f alone with a registered sampler (`common.diffusion.samplers`, the same functions
   as parallel sampling; default: the objective's, flow euler / ddpm ancestral) on the time grid, every
   network call being `model.step_frame(x_f, t, y, states, f)`; the states that these calls return
   are discarded (they hold a noisy frame). A held frame (given clean) is not denoised: it is taken
   as given (in the rows that hold it);
2. commit: run `step_frame` once more on the clean frame at t = 0 and keep the returned states.

Any number of frames can be generated, also beyond the count the model was built (trained) for: the
space-time position table extends (`DiT.embed`) and the mixers' states are built frame by frame.

Classifier-free guidance runs the conditional and unconditional halves as one batch of 2B rows
(`force_drop_ids`), so the states carry 2B rows; both halves are conditioned on the same (guided)
committed frames. This costs steps + 1 network calls per frame (2B rows each with guidance).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import torch

from common.seeding import FRAME, derive_seed

from .guidance import CFGDenoiser
from .samplers import Denoiser, get_sampler, held_mask


class _FrameModel:
    """`(x (B', C, H, W), t (B',), y (B',), force_drop_ids) -> out` for frame `index` with fixed states."""

    def __init__(self, model, states, index: int):
        self.model, self.states, self.index = model, states, index
        self.in_channels = model.in_channels

    def __call__(self, x, t, y, force_drop_ids=None):
        out, _ = self.model.step_frame(x, t, y, self.states, self.index, force_drop_ids=force_drop_ids)
        return out


def _check(objective, model, noise, sampler):
    name = getattr(objective, "name", type(objective).__name__)
    if name not in ("flow", "ddpm"):
        raise KeyError(f"sequential video sampling supports the objectives ['ddpm', 'flow'], got '{name}'")
    if noise.dim() != 5:
        raise ValueError(f"sequential sampling needs video noise (B, F, C, H, W), got shape {tuple(noise.shape)}")
    if not getattr(model, "frames", 0):
        raise ValueError("sequential sampling needs a video model (built with frames > 0)")
    if getattr(model, "mask", None) != "block":
        raise ValueError(f"sequential sampling needs a model built with mask='block' (got mask={model.mask!r}): "
                         "frame-by-frame generation is exact only for a block-causal model")
    missing = [m for m, b in zip(model.mixers, model.blocks) if not hasattr(b.attn, "step")]
    if missing:
        raise ValueError(f"mixers {sorted(set(missing))} have no recurrent `step`; sequential sampling needs one")
    return get_sampler(name, sampler)


@torch.no_grad()
def sample_sequential_with_states(objective, model, noise, y, steps: int, cfg_scale: float = 1.0,
                                  cfg_channels: int = 0, sampler: str | None = None, seeds=None, grid="",
                                  shift: float = 1.0, held=None):
    """`sample_sequential` that also returns the per-block mixer states after the last frame."""
    spec = _check(objective, model, noise, sampler)
    ts = grid if torch.is_tensor(grid) else objective.grid(steps, grid, shift)
    mask = held_mask(held, noise)  # (B, F) or None
    B, F = noise.shape[:2]
    seeds = list(range(B)) if seeds is None else list(seeds)
    guided = cfg_scale != 1.0
    rows = 2 * B if guided else B
    drop = torch.cat([torch.zeros(B), torch.ones(B)]).long().to(noise.device) if guided else None
    y_rows = torch.cat([y, y]) if guided else y  # (rows,)
    t0 = torch.zeros(rows, device=noise.device)
    out = torch.empty_like(noise)  # (B, F, C, H, W)
    states = None
    for f in range(F):
        given = noise[:, f]  # (B, C, H, W): noise, or the clean frame where held
        if mask is not None and mask[:, f].all():
            x = given
        else:
            frame_model = _FrameModel(model, states, f)
            den = Denoiser(objective, CFGDenoiser(frame_model, cfg_scale, cfg_channels, in_channels=model.in_channels), y)
            frame_seeds = [derive_seed(s, f, FRAME) for s in seeds]  # fresh SDE/ancestral noise per frame
            x = spec.fn(den, given, ts, seeds=frame_seeds)  # (B, C, H, W)
            if mask is not None:
                x = torch.where(mask[:, f, None, None, None], given, x)
        out[:, f] = x
        x_rows = torch.cat([x, x]) if guided else x
        _, states = model.step_frame(x_rows, t0, y_rows, states, f, force_drop_ids=drop)  # commit clean frame
    return out, states


def sample_sequential(objective, model, noise, y, steps: int, cfg_scale: float = 1.0, cfg_channels: int = 0,
                      sampler: str | None = None, seeds=None, grid="", shift: float = 1.0,
                      held=None) -> torch.Tensor:
    """Generate a video frame by frame: noise (B, F, C, H, W), labels y (B,) -> video (B, F, C, H, W).

    Any F (beyond the model's `frames` too). `sampler` defaults to the objective's (flow: euler, ddpm:
    ddpm); `grid` / `shift` choose the time grid (`common.diffusion.times`; "" = the objective's);
    `seeds` (one per row) seed the stochastic samplers' per-step noise; `held` frames (a (B, F) mask
    or frame indices) are given clean in `noise` and kept as they are."""
    return sample_sequential_with_states(objective, model, noise, y, steps, cfg_scale, cfg_channels,
                                         sampler, seeds, grid, shift, held)[0]


def state_bytes(states) -> int:
    """Total bytes of all tensors in a (nested) state structure."""
    if isinstance(states, torch.Tensor):
        return states.numel() * states.element_size()
    if isinstance(states, (list, tuple)):
        return sum(state_bytes(s) for s in states)
    return 0


# ---- benchmark -------------------------------------------------------------------------------------

def _maxrss_mb() -> float:
    import resource

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux (bytes on macOS)
    return kb / 1024 / (1024 if sys.platform == "darwin" else 1)


def measure_video_point(mixer: str, frames: int, model: str = "DiT-M/4", batch: int = 8, steps: int = 4,
                        cfg_scale: float = 2.0, threads: int = 1, seed: int = 0) -> dict:
    """Sequential generation of `frames` frames in THIS process (run in a fresh process for honest memory)."""
    from common.diffusion import FlowMatching
    from common.models import create_model

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    net = create_model(model, frames=frames, mask="block", mixer=mixer).eval()
    for p in net.parameters():  # untrained but not identity: undo adaLN-Zero so every layer computes
        if p.requires_grad and p.dim() > 0 and not p.abs().sum():
            p.data.normal_(0, 0.02)
    noise = torch.randn(batch, frames, net.in_channels, net.input_size, net.input_size)
    y = torch.arange(batch) % net.num_classes
    fm = FlowMatching()
    # warm-up on ONE row, one frame, one step: loads libraries and lazy buffers, but keeps the full
    # batch's working memory out of the baseline below
    sample_sequential(fm, net, noise[:1, :1], y[:1], 1, cfg_scale)
    base = _maxrss_mb()
    t0 = time.perf_counter()
    video, states = sample_sequential_with_states(fm, net, noise, y, steps, cfg_scale)
    seconds = time.perf_counter() - t0
    peak = _maxrss_mb()
    return {"mixer": mixer, "frames": frames, "model": model, "batch": batch, "steps": steps,
            "cfg_scale": cfg_scale, "threads": threads, "peak_mb": peak - base, "rss_mb": peak,
            "s_per_frame": seconds / frames, "state_mb": state_bytes(states) / 2**20,
            "video_mb": video.numel() * video.element_size() / 2**20}


def _run_subprocess(kwargs: dict, timeout: float, mmap_all: bool) -> dict:
    code = ("import json, sys; from common.diffusion.video import measure_video_point; "
            "print(json.dumps(measure_video_point(**json.loads(sys.argv[1]))))")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if mmap_all:
        # glibc: serve every block >= 64 KiB by mmap and return it on free (no adaptive threshold), so
        # the peak RSS follows the live tensors instead of the allocator's heap history
        env["MALLOC_MMAP_THRESHOLD_"] = str(64 * 1024)
    out = subprocess.run([sys.executable, "-c", code, json.dumps(kwargs)], capture_output=True, text=True,
                         timeout=timeout, cwd=root, env=env)
    if out.returncode:
        raise RuntimeError(f"video benchmark point {kwargs} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_video(mixers=("pom", "attention"), frames=(4, 8, 16, 32), model: str = "DiT-M/4", batch: int = 8,
                steps: int = 4, cfg_scale: float = 2.0, threads: int = 1, timeout: float = 1800,
                subprocess_per_point: bool = True, log=print) -> list[dict]:
    """Memory and time of sequential generation with an untrained video DiT (mask='block').

    One row per (mixer, frames): {mixer, frames, peak_mb, s_per_frame, work_mb, rss_mb, state_mb,
    video_mb, ...}. With `subprocess_per_point` every point runs in two FRESH Python processes (so an
    earlier, larger point cannot hide a peak): one for memory, one for time.

    - peak_mb: growth of the process's maximum resident set size (`ru_maxrss`) during generation,
      above the level reached after building the model and a one-row, one-frame, one-step warm-up.
      The memory process runs with glibc's `MALLOC_MMAP_THRESHOLD_=65536`, so freed tensors go back
      to the OS at once and the peak RSS tracks live memory (with the default adaptive threshold the
      heap keeps freed blocks and the same point varied by +-5 MB between runs). It includes
      everything generation needs: mixer states, activations, temporaries and the output video.
    - work_mb = peak_mb - video_mb: memory beyond the output video (`video_mb`, B*F*C*H*W fp32, which
      every method must hold and which grows with frames for every mixer).
    - rss_mb: the memory process's absolute peak RSS (libraries, model and all).
    - state_mb: exact bytes of the per-block mixer states after the last frame (KV cache vs PoM state).
    - s_per_frame: wall time / frames in the timing process (default allocator; the mmap setting
      slows small-model runs ~2x), including steps + 1 network calls per frame, 2B rows with CFG.
    """
    rows = []
    for name in mixers:
        for F in sorted(frames):
            kw = dict(mixer=name, frames=F, model=model, batch=batch, steps=steps, cfg_scale=cfg_scale,
                      threads=threads)
            if subprocess_per_point:
                row = _run_subprocess(kw, timeout, mmap_all=True)  # memory
                row["s_per_frame"] = _run_subprocess(kw, timeout, mmap_all=False)["s_per_frame"]  # time
            else:
                row = measure_video_point(**kw)
            row["work_mb"] = row["peak_mb"] - row["video_mb"]
            rows.append(row)
            log(f"{name:>10} F={F:>3} peak {row['peak_mb']:8.1f} MB (rss {row['rss_mb']:7.1f} MB, state "
                f"{row['state_mb']:7.2f} MB, video {row['video_mb']:6.2f} MB, work {row['work_mb']:6.1f} MB) "
                f"{row['s_per_frame']:7.3f} s/frame")
    return rows


__all__ = ["sample_sequential", "sample_sequential_with_states", "bench_video", "measure_video_point", "state_bytes"]
