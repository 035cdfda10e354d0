"""Calibration on real data: the noise floor of FID and the quality gate of video models.

Why: a claim's margin must never be below the metric's own noise, and two sets of *real* digits do not
score FID 0: finite samples give a positive bias and a spread that shrink as the sample grows. The
real-vs-real FID between two disjoint sets of n real digits is therefore the smallest FID difference
that can mean anything at n samples. Video models need a gate too (images have class-consistency 0.8),
and fixed numbers mean little on frames unlike the digits the feature net was trained on (two small
moving digits per frame): the gate's frame-FID and temporal thresholds are set from what real held-out
clips score, and `real_clips_pass` records which conditions the real clips themselves meet. The image
gate's fixed class-consistency of 0.8 is out of reach on these frames even for real clips (two 16-px
digits a frame, labelled by the first; the classifier was trained on single 28-px digits), so the video
gate's class-consistency is relative too: at least 0.9x the real clips'.

Protocol (all in one feature space, `mnist-cnn`, features extracted once per set):
- image: `pairs` random pairs of disjoint sets of n digits drawn from all 5,000 mnist5k digits (a fixed
  seed), for each n in `sizes`; mean and sample std of the FID over the pairs.
- video: the `heldout` moving_mnist clips (made only from held-out digits; the video models train on
  `train`), `pairs` random pairs of disjoint sets of `clips` clips of `frames` frames. Per pair: frame-FID
  between the two sets' pooled frames, and the frame class-consistency (w.r.t. the clip label) and
  temporal consistency of each set, averaged over the two sets; then everything averaged over the pairs.
- gate: frame-FID <= 2 x real-vs-real, class- and temporal consistency >= 0.9 x the real clips'.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.errors import short_reason

from .fid import MetricsError, class_consistency, fid_from_features
from .video import temporal_consistency

GATE_FID_FACTOR = 2.0        # frame-FID may be at most this many times the real-vs-real value
GATE_CLASS_FACTOR = 0.9      # class-consistency at least this share of the real clips' (0.8 is out of reach)
GATE_TEMPORAL_FACTOR = 0.9   # temporal consistency at least this share of the real clips'
RUN_FIX = "run `dvc repro dvc.yaml:calibrate` (or `python -m pipelines.calibrate --featnet data/featnet --out {path}`)"


@dataclass(frozen=True)
class CalibrationConfig:
    """What is measured; the defaults are the protocol of `data/featnet/calibration.json`."""

    sizes: tuple = (300, 500, 1000)   # image sample counts (the sizes the papers' evaluations use)
    pairs: int = 20                   # random disjoint pairs per size and for video: FID noise is heavy-tailed
    seed: int = 0
    image_split: str = "all"          # 5,000 digits: room for two disjoint sets of 1,000
    video_split: str = "heldout"      # never trained on: the video models use `train`
    clips: int = 200                  # what the video variants sample (sample.num_samples)
    frames: int = 8                   # their data.frames


def _disjoint_pairs(n_total: int, n: int, pairs: int, seed: int):
    """`pairs` index pairs (a, b) of two disjoint random subsets of size n of range(n_total), seeded."""
    if 2 * n > n_total:
        raise MetricsError(f"two disjoint sets of {n} need {2 * n} samples; only {n_total} are available")
    rng = np.random.default_rng(seed)
    for _ in range(pairs):
        perm = rng.permutation(n_total)
        yield perm[:n], perm[n:2 * n]


def real_vs_real_fid(features, sizes, pairs: int, seed: int = 0) -> dict[int, list[float]]:
    """{n: [FID of pair k]} between disjoint random sets of n rows of `features` (N, d), k < pairs.

    Each size draws its own pairs from the same seed, so adding a size does not move the others."""
    f = np.asarray(features, dtype=np.float64)
    return {int(n): [fid_from_features(f[a], f[b]) for a, b in _disjoint_pairs(len(f), int(n), pairs, seed)]
            for n in sizes}


def video_gate(frame_fid: float, temporal: float, class_cons: float) -> dict:
    """The video quality gate from the real clips' frame-FID (real vs real), temporal and class-consistency."""
    return {"frame_fid_max": GATE_FID_FACTOR * frame_fid, "class_consistency_min": GATE_CLASS_FACTOR * class_cons,
            "temporal_consistency_min": GATE_TEMPORAL_FACTOR * temporal}


def check_video_gate(gate: dict, frame_fid: float, class_cons: float, temporal: float) -> dict[str, bool]:
    """Which of the gate's three conditions a video model (or the real clips) meets."""
    return {"frame_fid": frame_fid <= gate["frame_fid_max"],
            "class_consistency": class_cons >= gate["class_consistency_min"],
            "temporal_consistency": temporal >= gate["temporal_consistency_min"]}


def calibrate_video(net, videos, labels, clips: int, pairs: int, seed: int = 0) -> dict:
    """Frame-FID, frame class-consistency and temporal consistency of real uint8 clips (N, F, H, W[, C])
    with clip labels (N,), over `pairs` random pairs of disjoint sets of `clips` clips; plus the gate.
    `real_clips_pass` says which gate conditions the real clips meet (a gate they fail is unreachable)."""
    v, lab = np.asarray(videos), np.asarray(labels)
    n, f = v.shape[:2]
    frames = v.reshape(n * f, *v.shape[2:])                       # (N * F, H, W[, C])
    feats = net.extract(frames).reshape(n, f, -1)                 # (N, F, d)
    pred = net.classify(frames).reshape(n, f)                     # (N, F)
    cond = np.repeat(lab.reshape(n, 1), f, axis=1)                # (N, F)
    fid, cls, tc = [], [], []
    for a, b in _disjoint_pairs(n, clips, pairs, seed):
        fid.append(fid_from_features(feats[a].reshape(-1, feats.shape[-1]), feats[b].reshape(-1, feats.shape[-1])))
        cls.append(np.mean([class_consistency(pred[s], cond[s]) for s in (a, b)]))
        tc.append(np.mean([temporal_consistency(pred[s]) for s in (a, b)]))
    out = {"frames": int(f), "clips": int(clips), "pairs": int(pairs),
           "frame_fid_real_vs_real": float(np.mean(fid)), "frame_fid_real_vs_real_std": _std(fid),
           "class_consistency": float(np.mean(cls)), "temporal_consistency": float(np.mean(tc))}
    out["gate"] = video_gate(out["frame_fid_real_vs_real"], out["temporal_consistency"], out["class_consistency"])
    out["real_clips_pass"] = check_video_gate(out["gate"], out["frame_fid_real_vs_real"],
                                              out["class_consistency"], out["temporal_consistency"])
    return out


def _std(values) -> float:
    """Sample standard deviation (ddof 1): the spread one more draw would show."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def calibrate(net, featnet: str, cfg: CalibrationConfig = CalibrationConfig(), log=print) -> dict:
    """The calibration document (see the module docstring) for feature net `net`, whose checkpoint
    digest is `featnet`; validated before it is returned."""
    from common.data import mnist5k_split
    from common.data.video import moving_mnist_uint8

    from .featnet import FEATURE_SPACE

    X, _ = mnist5k_split(cfg.image_split)                         # uint8 (5000, 32, 32)
    if log:
        log(f"calibrate: {len(X)} mnist5k digits, sizes {list(cfg.sizes)}, {cfg.pairs} pairs")
    fids = real_vs_real_fid(net.extract(X), cfg.sizes, cfg.pairs, cfg.seed)
    image = {"dataset": "mnist5k", "split": cfg.image_split, "pairs": cfg.pairs,
             "fid_real_vs_real": {str(n): float(np.mean(v)) for n, v in fids.items()},
             "fid_real_vs_real_std": {str(n): _std(v) for n, v in fids.items()}}
    videos, labels = moving_mnist_uint8(cfg.video_split, frames=cfg.frames)  # (N, F, 32, 32), (N,)
    if log:
        log(f"calibrate: {len(videos)} moving_mnist/{cfg.video_split} clips, {cfg.clips} x {cfg.frames} frames per set")
    video = {"split": cfg.video_split, **calibrate_video(net, videos, labels, cfg.clips, cfg.pairs, cfg.seed)}
    doc = {"feature_space": FEATURE_SPACE, "featnet": featnet, "seed": cfg.seed, "image": image,
           "video": {"moving_mnist": video}}
    return validate_calibration(doc)


def _check(value, key: str, upper: float | None = None) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
    if not ok or (upper is not None and value > upper):
        bound = f"in [0, {upper:g}]" if upper is not None else "finite and >= 0"
        raise MetricsError(f"calibration value '{key}' = {value!r} is not {bound}")


def validate_calibration(doc: dict, source: str = "calibration") -> dict:
    """`doc` itself if every number is where it must be (FIDs finite and >= 0, consistencies and their
    thresholds in [0, 1]); else MetricsError naming the key. Used before writing and after reading."""
    try:
        image, videos = doc["image"], doc["video"]
        fid, std = image["fid_real_vs_real"], image["fid_real_vs_real_std"]
        if not fid or set(fid) != set(std):
            raise MetricsError(f"{source}: 'image.fid_real_vs_real' and its _std must name the same, non-empty sizes")
        for n in fid:
            _check(fid[n], f"image.fid_real_vs_real.{n}")
            _check(std[n], f"image.fid_real_vs_real_std.{n}")
        for name, v in videos.items():
            _check(v["frame_fid_real_vs_real"], f"video.{name}.frame_fid_real_vs_real")
            for k in ("class_consistency", "temporal_consistency"):
                _check(v[k], f"video.{name}.{k}", upper=1.0)
            _check(v["gate"]["frame_fid_max"], f"video.{name}.gate.frame_fid_max")
            for k in ("class_consistency_min", "temporal_consistency_min"):
                _check(v["gate"][k], f"video.{name}.gate.{k}", upper=1.0)
    except KeyError as e:
        raise MetricsError(f"{source} lacks key {e}") from None
    except (TypeError, AttributeError) as e:
        raise MetricsError(f"{source} is misshapen ({short_reason(e)})") from None
    for k in ("feature_space", "featnet"):
        if not isinstance(doc.get(k), str):
            raise MetricsError(f"{source}: '{k}' must be a string, got {doc.get(k)!r}")
    return doc


def load_calibration(path: str | Path, featnet: str | None = None) -> dict:
    """The calibration document at `path`, validated; `featnet` (a checkpoint digest, `featnet_digest`)
    refuses one measured with another feature network, whose noise floors would not apply."""
    from common.io import read_json

    path = Path(path)
    fix = RUN_FIX.format(path=path)
    if not path.is_file():
        raise MetricsError(f"calibration '{path}' not found. Fix: {fix}")
    doc = validate_calibration(read_json(path, fix=fix), source=f"calibration '{path}'")
    if featnet is not None and doc["featnet"] != featnet:
        raise MetricsError(f"calibration '{path}' was measured with feature net {doc['featnet']}, not {featnet}. "
                           f"Fix: {fix}")
    return doc
