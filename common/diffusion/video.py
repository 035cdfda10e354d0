"""Frame-by-frame (sequential) video generation through the DiT's `step_frame`.

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
    check_sequential_model(model)
    return get_sampler(name, sampler)


def check_sequential_model(model) -> None:
    """ValueError unless `model` can generate frame by frame: a video model, block-causal, every mixer
    with a recurrent `step`."""
    if not getattr(model, "frames", 0):
        raise ValueError("sequential sampling needs a video model (built with frames > 0)")
    if getattr(model, "mask", None) != "block":
        raise ValueError(f"sequential sampling needs a model built with mask='block' (got mask={model.mask!r}): "
                         "frame-by-frame generation is exact only for a block-causal model")
    missing = [m for m, b in zip(model.mixers, model.blocks) if not hasattr(b.attn, "step")]
    if missing:
        raise ValueError(f"mixers {sorted(set(missing))} have no recurrent `step`; sequential sampling needs one")


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


__all__ = ["sample_sequential", "sample_sequential_with_states", "check_sequential_model", "state_bytes"]
