"""Typed run configuration, loaded from a paper's `params.yaml` and validated with errors naming the key.

A paper's params file looks like::

    preset: tiny
    data: {name: mnist5k}
    model: {name: DiT-T/4}
    diffusion: {objective: flow}
    train: {steps: 4000, batch_size: 64, ...}
    sample: {num_samples: 2000, sampler: euler, steps: 50, cfg_scale: 2.0}
    losses: {repa: {weight: 0.5}}  # optional extra loss terms (common.losses), each with its own keys
    variants:                      # each variant overrides the base sections
      sit: {diffusion: {objective: flow}}
      dit: {diffusion: {objective: ddpm}, sample: {sampler: ddim}}
    presets:                       # `preset: paper` applies these overrides first
      paper: {model: {name: DiT-XL/2}, ...}

`resolve(params, variant, sets)` merges base <- preset <- variant <- `--set k=v` overrides and returns a
`RunConfig`. Unknown keys, wrong types and out-of-range values raise `ConfigError` naming the dotted key.
"""
from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from common.errors import UserError


class ConfigError(UserError, ValueError):
    """A bad configuration value; the message names the dotted key."""


@dataclass
class DataConfig:
    name: str = "mnist5k"
    root: str = "data"              # where datasets are cached / downloaded
    frames: int = 16                # video datasets only
    num_workers: int = 0


@dataclass
class ModelConfig:
    name: str = "DiT-T/4"           # a registered preset (common.models.MODELS)
    mixer: str = ""                 # override the preset's token mixer ("" keeps it)
    mixer_kwargs: dict = field(default_factory=dict)
    overrides: dict = field(default_factory=dict)  # any DiT constructor argument


@dataclass
class DiffusionConfig:
    objective: str = "flow"         # flow (SiT, velocity) | ddpm (DiT, epsilon + learned range)
    num_timesteps: int = 1000       # ddpm only
    learn_sigma: bool = True        # ddpm only: hybrid loss with learned-range variance
    per_frame_t: bool = False       # video: an independent timestep per frame (diffusion forcing / FVDM)
    prediction: str = ""            # "" = the objective's own | eps, v (ddpm) | velocity (flow)
    t_sampling: str = "uniform"     # training times: uniform | logit_normal (SD3; ddpm: mapped to a step)
    t_mean: float = 0.0             # logit_normal: t = sigmoid(t_mean + t_std * n), n ~ N(0, 1)
    t_std: float = 1.0

    def __post_init__(self):
        fits = {"flow": ("velocity",), "ddpm": ("eps", "v")}.get(self.objective, ())
        if self.prediction and fits and self.prediction not in fits:
            raise ConfigError(f"params key 'diffusion.prediction' = {self.prediction!r} does not fit objective "
                              f"'{self.objective}' ({self.objective} takes: {', '.join(fits)})")


@dataclass
class TrainConfig:
    steps: int = 4000
    batch_size: int = 64            # global batch; each of W processes gets batch_size / W
    lr: float = 3e-4
    weight_decay: float = 0.0
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 0
    grad_clip: float = 1.0          # 0 disables
    ema_decay: float = 0.999
    precision: str = "fp32"         # fp32 | bf16 (autocast)
    seed: int = 0
    log_every: int = 50
    ckpt_every: int = 500
    threads: int = 0                # torch.set_num_threads; 0 leaves the default
    init_from: str = ""             # a run directory whose weights start this run (fine-tuning); "" = none
    init_weights: str = "ema"       # ema | model: which weights of init_from's ckpt/latest.pt
    keep_every: int = 0             # > 0 also keeps ckpt/step_<N>.pt every N steps (0: only latest.pt)


@dataclass
class SampleConfig:
    num_samples: int = 2000
    batch_size: int = 250
    sampler: str = "euler"          # common.diffusion.SAMPLERS
    steps: int = 50
    time_grid: str = ""             # "" = the objective's own (flow: uniform, ddpm: respaced) | uniform | shifted
    shift: float = 1.0              # time_grid shifted: t' = shift t / (1 + (shift - 1) t), >= 1
    frames: int = 0                 # video: frames to generate (0 = the model's; more extends the positions)
    cfg_scale: float = 2.0
    cfg_channels: int = 0           # 0 = all channels; DiT's official quirk is 3 of 4
    use_ema: bool = True
    seed: int = 0
    grid: int = 100                 # how many samples go into the PNG grid


@dataclass
class RunConfig:
    paper: str = "dit"
    variant: str = ""
    preset: str = "tiny"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    losses: dict = field(default_factory=dict)  # {term name: its Config} (common.losses); {} = none

    def __post_init__(self):
        d, s = self.diffusion, self.sample
        if s.time_grid == "respaced" and d.objective != "ddpm":
            raise ConfigError(f"params key 'sample.time_grid' = 'respaced' is DDPM's step respacing; objective "
                              f"'{d.objective}' takes: uniform, shifted")
        if d.objective == "ddpm" and s.time_grid in ("", "respaced") and s.steps > d.num_timesteps:
            raise ConfigError(f"params key 'sample.steps' = {s.steps} exceeds the {d.num_timesteps} steps of the "
                              "DDPM chain it respaces (diffusion.num_timesteps)")

    def to_dict(self) -> dict:
        return asdict(self)


_RANGES = {
    "train.steps": (1, None), "train.batch_size": (1, None), "train.lr": (0.0, 1.0),
    "train.ema_decay": (0.0, 1.0), "train.grad_clip": (0.0, None), "train.log_every": (1, None),
    "train.ckpt_every": (1, None), "train.warmup_steps": (0, None), "train.threads": (0, None),
    "train.weight_decay": (0.0, None), "train.keep_every": (0, None),
    "sample.num_samples": (1, None), "sample.batch_size": (1, None), "sample.steps": (1, None),
    "sample.cfg_scale": (0.0, None), "sample.grid": (0, None), "sample.cfg_channels": (0, None),
    "diffusion.num_timesteps": (2, None), "data.frames": (1, None),
    "sample.shift": (1.0, None), "sample.frames": (0, None), "diffusion.t_std": (1e-6, None),
}
_CHOICES = {
    "train.precision": ("fp32", "bf16"),
    "train.init_weights": ("ema", "model"),
    "diffusion.objective": ("flow", "ddpm"),
    "diffusion.prediction": ("", "eps", "v", "velocity"),
    "diffusion.t_sampling": ("uniform", "logit_normal"),
    "sample.time_grid": ("", "uniform", "shifted", "respaced"),
    "preset": ("tiny", "paper", "test"),
}


def _check_type(key: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # yaml reads 3e-4 as a string
        try:
            return float(value)
        except ValueError:
            pass
    if origin is list and typing.get_args(tp):  # list[int]: every element checked, named by its index
        if not isinstance(value, list):
            raise ConfigError(f"params key '{key}' must be a list, got {type(value).__name__} ({value!r})")
        return [_check_type(f"{key}[{i}]", v, typing.get_args(tp)[0]) for i, v in enumerate(value)]
    if origin in (list, dict):
        tp = origin
    if isinstance(tp, type) and (not isinstance(value, tp) or (tp is int and isinstance(value, bool))):
        raise ConfigError(f"params key '{key}' must be {tp.__name__}, got {type(value).__name__} ({value!r})")
    return value


def _build_losses(data: Any, key: str) -> dict:
    """`losses: {name: {weight: w, ...}}` -> {name: the term's validated Config} (terms: common.losses)."""
    from common.losses import LOSSES  # imported here: the registry module needs torch

    if not isinstance(data, dict):
        raise ConfigError(f"params key '{key}' must be a mapping of loss term names to their keys, got {data!r}")
    out = {}
    for name, section in data.items():
        if name not in LOSSES:
            raise ConfigError(f"unknown loss term '{key}.{name}' (known: {', '.join(sorted(LOSSES)) or 'none registered'})")
        out[name] = _build(LOSSES[name].Config, {} if section is None else section, f"{key}.{name}.")
    return out
def _is_real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _build(cls, data: dict, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(f"params key '{prefix.rstrip('.')}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    ranges = getattr(cls, "ranges", {})  # sections outside the run config declare their own (loss terms, bench)
    kwargs = {}
    for k, v in data.items():
        key = prefix + k
        if k not in names:
            raise ConfigError(f"unknown params key '{key}' (known: {', '.join(sorted(names))})")
        tp = hints[k]
        if dataclasses.is_dataclass(tp):
            kwargs[k] = _build(tp, v, key + ".")
        elif key == "losses":
            kwargs[k] = _build_losses(v, key)
        else:
            if isinstance(tp, types.UnionType):
                tp = typing.get_args(tp)[0]
            v = _check_type(key, v, tp)
            if key in _RANGES or k in ranges:
                lo, hi = _RANGES.get(key) or ranges[k]
                if (lo is not None and v < lo) or (hi is not None and v > hi):
                    raise ConfigError(f"params key '{key}' = {v!r} is out of range [{lo}, {hi if hi is not None else 'inf'}]")
            if key in _CHOICES and v not in _CHOICES[key]:
                raise ConfigError(f"params key '{key}' = {v!r} must be one of {_CHOICES[key]}")
            if key == "train.betas" and not (
                    len(v) == 2 and all(_is_real(b) and 0.0 <= b < 1.0 for b in v)):
                raise ConfigError(f"params key 'train.betas' = {v!r} must be two numbers in [0, 1), e.g. [0.9, 0.999]")
            kwargs[k] = v
    return cls(**kwargs)


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in ("mixer_kwargs",):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_set(assignments: list[str]) -> dict:
    """`["train.steps=200", "model.name=DiT-S/2"]` -> nested dict (values parsed as YAML)."""
    out: dict = {}
    for a in assignments or []:
        key, sep, val = a.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ConfigError(f"--set expects key=value with a dotted key, got {a!r}")
        try:
            value = yaml.safe_load(val)
        except yaml.YAMLError as e:
            problem = getattr(e, "problem", None) or type(e).__name__
            raise ConfigError(f"--set {key.strip()}: value {val!r} is not valid YAML ({problem})") from e
        node = out
        for i, p in enumerate(parts[:-1]):
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key.strip()} conflicts with --set {'.'.join(parts[:i + 1])}={node!r}")
        if isinstance(node.get(parts[-1]), dict) and not isinstance(value, dict):
            raise ConfigError(f"--set {key.strip()}={val} conflicts with an earlier --set {key.strip()}.<key>")
        node[parts[-1]] = value
    return out


def load_params(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"params file {path} is not a text (YAML) file") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise ConfigError(f"params file {path} is not valid YAML{at} ({getattr(e, 'problem', None) or e})") from e
    except OSError as e:
        raise ConfigError(f"params file {path} is unreadable ({e.strerror})") from e
    if data is None:
        raise ConfigError(f"params file {path} is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"params file {path} must hold a mapping, got {type(data).__name__}")
    return data


RUN_SECTIONS = ("data", "model", "diffusion", "train", "sample", "losses")


def _mapping(value, key: str) -> dict:
    """A params section that must be a mapping (None, an empty YAML section, counts as empty)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"params key '{key}' must be a mapping, got {type(value).__name__} ({value!r:.60})")
    return value


def resolve(params: dict, paper: str, variant: str, sets: dict | None = None) -> RunConfig:
    """Merge base <- preset <- variant <- sets and validate into a RunConfig."""
    params = deep_merge(params, {k: v for k, v in (sets or {}).items() if k == "preset"})
    preset = params.get("preset", "tiny")
    if "variants" not in params:
        raise ConfigError(f"the params of paper '{paper}' have no 'variants' section")
    variants = _mapping(params["variants"], "variants")
    if variant not in variants:
        raise ConfigError(f"unknown variant '{variant}' for paper '{paper}' (known: {', '.join(variants) or 'none'})")
    base = {k: _mapping(params[k], k) for k in RUN_SECTIONS if k in params}
    presets = _mapping(params.get("presets"), "presets")
    if preset != "tiny":
        if preset not in presets:
            raise ConfigError(f"params key 'preset' = {preset!r}: no such preset (known: tiny, {', '.join(presets)})")
        base = deep_merge(base, _mapping(presets[preset], f"presets.{preset}"))
    v = _mapping(variants[variant], f"variants.{variant}")
    extra = set(v) - set(RUN_SECTIONS) - {"seeds", "preset_overrides"}
    if extra:
        raise ConfigError(f"unknown params key 'variants.{variant}.{sorted(extra)[0]}'")
    merged = deep_merge(base, {k: _mapping(v[k], f"variants.{variant}.{k}") for k in RUN_SECTIONS if k in v})
    overrides = _mapping(v.get("preset_overrides"), f"variants.{variant}.preset_overrides")
    if preset in overrides:
        merged = deep_merge(merged, _mapping(overrides[preset], f"variants.{variant}.preset_overrides.{preset}"))
    merged = deep_merge(merged, {k: val for k, val in (sets or {}).items() if k != "preset"})
    merged.update(paper=paper, variant=variant, preset=preset)
    return _build(RunConfig, merged, "")


def from_dict(d: dict) -> RunConfig:
    return _build(RunConfig, d, "")


def build_section(cls, data: dict, key: str):
    """A params section outside the run config (e.g. a paper's `bench:`) validated into dataclass `cls`;
    ConfigError names the dotted key (`bench.tokens`)."""
    return _build(cls, data, key + ".")
