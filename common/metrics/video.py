"""Video metrics at toy scale (FVDM on moving_mnist): per-frame FID and temporal consistency.

- Per-frame FID: every frame of every video is one sample (all frames pooled), compared with the
  pooled frames of real videos, in the `mnist-cnn` feature space.
- Temporal consistency: share of consecutive frame pairs (f, f+1) the classifier gives the same digit
  label; a video whose digit morphs into another scores low even when each frame looks fine.
"""
from __future__ import annotations

import numpy as np

from .fid import MetricsError, class_consistency, feature_stats, frechet_distance


def _frames(videos) -> np.ndarray:
    """(N, F, H, W[, C]) -> (N * F, H, W[, C]) uint8 frames."""
    v = np.asarray(videos)
    if v.ndim not in (4, 5):
        raise MetricsError(f"videos must be (N, F, H, W, C) or (N, F, H, W); got shape {v.shape}")
    return v.reshape(-1, *v.shape[2:])


def temporal_consistency(frame_labels) -> float:
    """Share of consecutive frame pairs with the same predicted label; frame_labels is (N, F)."""
    lab = np.asarray(frame_labels)
    if lab.ndim != 2 or lab.shape[1] < 2:
        raise MetricsError(f"frame_labels must be (N, F) with F >= 2; got shape {lab.shape}")
    return float((lab[:, 1:] == lab[:, :-1]).mean())


def frame_fid(net, videos, ref: dict) -> float:
    """FID of all frames pooled against reference stats {"mu", "sigma"} (frames of real videos)."""
    return frechet_distance(ref["mu"], ref["sigma"], *feature_stats(net.extract(_frames(videos))))


def video_metrics(net, videos, labels, ref: dict) -> dict:
    """Per-frame FID, temporal consistency, and frame-level class consistency for (N, F, H, W, C) uint8."""
    v = np.asarray(videos)
    n, f = v.shape[:2]
    frames = _frames(v)                                       # (N * F, H, W, C)
    feats = net.extract(frames)                               # (N * F, d)
    pred = net.classify(frames).reshape(n, f)                 # (N, F)
    cond = np.repeat(np.asarray(labels).reshape(n, 1), f, axis=1)
    return {
        "frame_fid": frechet_distance(ref["mu"], ref["sigma"], *feature_stats(feats)),
        "temporal_consistency": temporal_consistency(pred),
        "frame_class_consistency": class_consistency(pred, cond),
        "frames": int(f),
    }
