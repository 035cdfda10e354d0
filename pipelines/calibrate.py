"""Stage: measure the metrics' noise floors and the video quality gate on real data (calibration).

    python -m pipelines.calibrate --featnet data/featnet --out data/featnet/calibration.json

Writes one JSON document (whole or not at all) in the feature space of the given `mnist-cnn` network:
the real-vs-real FID of two disjoint sets of n real mnist5k digits (n = 300, 500, 1000; mean and std
over random pairs), the floor below which no FID margin means anything at that sample size; and for
moving_mnist, what two disjoint sets of 200 held-out real clips of 8 frames score (frame-FID, frame
class-consistency, temporal consistency) with the video gate derived from it. The protocol is
`common.metrics.calibration`'s; `load_calibration` reads the file back.
"""
from __future__ import annotations

from pathlib import Path

from common.io import check_writable, write_json
from common.metrics.calibration import calibrate
from common.metrics.featnet import featnet_digest, load_featnet

from ._cli import StageParser, friendly_errors


@friendly_errors
def main(argv: list[str] | None = None) -> dict:
    ap = StageParser("calibrate", __doc__)
    ap.add_argument("--featnet", required=True, help="directory holding mnist-cnn.pt (or the file itself)")
    ap.add_argument("--out", required=True, help="output JSON (e.g. data/featnet/calibration.json)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    check_writable(out, what="--out file")
    net = load_featnet(args.featnet)
    doc = calibrate(net, featnet_digest(args.featnet))
    write_json(out, doc)
    image, (name, video) = doc["image"], next(iter(doc["video"].items()))
    floors = ", ".join(f"n={n}: {v:.3f}" for n, v in image["fid_real_vs_real"].items())
    print(f"real-vs-real FID ({doc['feature_space']}, {image['dataset']}): {floors}")
    print(f"{name}: frame-FID {video['frame_fid_real_vs_real']:.3f}, class-consistency "
          f"{video['class_consistency']:.3f}, temporal consistency {video['temporal_consistency']:.3f}; "
          f"gate {video['gate']}; real clips pass {video['real_clips_pass']}")
    print(f"wrote {out}")
    return doc


if __name__ == "__main__":
    main()
