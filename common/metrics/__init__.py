"""Metrics: FID, KID, precision/recall and class consistency on a chosen feature space, video metrics,
the `mnist-cnn` feature network, the metrics.json schema and claim verdicts, and the calibration
(calibration.py: real-vs-real noise floors of FID and the video quality gate).

Feature spaces: `mnist-cnn` (featnet.py; toy scale, trained here in seconds) and `inception`
(`InceptionNet`, needs torch-fidelity's weights file); each dataset names its own
(`common.data.DatasetInfo.features`). FID here agrees with torchmetrics and clean-fid
on the same features to 1e-4 (tests/test_metrics.py).
"""
from .calibration import (
    CalibrationConfig,
    calibrate,
    check_video_gate,
    load_calibration,
    validate_calibration,
)
from .featnet import (
    FEATURE_SPACE,
    FeatNet,
    FeatNetConfig,
    FeatNetError,
    MnistCNN,
    classify,
    featnet_digest,
    load_featnet,
    load_ref_stats,
    save_featnet,
    train_featnet,
    write_reference,
)
from .fid import (
    INCEPTION_SPACE,
    InceptionNet,
    MetricsError,
    bench_fid,
    class_consistency,
    feature_stats,
    fid_cleanfid,
    fid_from_features,
    fid_from_stats,
    fid_torchmetrics,
    find_inception_weights,
    frechet_distance,
    inception_features,
    kid,
    load_reference,
    precision_recall,
)
from .schema import RULE_TEXT, VERDICTS, ClaimSpec, claim_specs, judge, judge_all, mean_std, validate_metrics
from .video import frame_fid, temporal_consistency, video_metrics

__all__ = [
    "CalibrationConfig", "calibrate", "check_video_gate", "load_calibration", "validate_calibration",
    "FEATURE_SPACE", "FeatNet", "FeatNetConfig", "FeatNetError", "MnistCNN", "classify", "featnet_digest", "load_featnet",
    "load_ref_stats", "save_featnet", "train_featnet", "write_reference",
    "INCEPTION_SPACE", "InceptionNet", "MetricsError", "bench_fid", "class_consistency", "feature_stats",
    "fid_cleanfid", "fid_from_features", "fid_from_stats", "fid_torchmetrics", "find_inception_weights",
    "frechet_distance", "inception_features", "kid", "load_reference", "precision_recall",
    "RULE_TEXT", "VERDICTS", "ClaimSpec", "claim_specs", "judge", "judge_all", "mean_std", "validate_metrics",
    "frame_fid", "temporal_consistency", "video_metrics",
]
