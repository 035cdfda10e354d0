"""Stage: train the `mnist-cnn` feature network and write the reference statistics FID is measured against.

    python -m pipelines.featurenet --out data/featnet [--params params.yaml] [--threads 2]

Writes `<out>/mnist-cnn.pt` (state_dict + config, weights_only loadable), `<out>/ref_stats.npz`
(mu, sigma float64 and the raw features of the real mnist5k train split) and `<out>/metrics.json`
(held-out accuracy, training time, and the FID/KID/P-R of the real held-out split against the
reference: the floor a perfect generator would reach with 500 samples).
Recipe defaults live in `common.metrics.featnet.FeatNetConfig`; a `featnet:` section of the params
file overrides them. The params and the output paths are checked before training; the three files
are written once everything is computed, each whole or not at all.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from common.config import load_params
from common.data import mnist5k_split
from common.io import check_writable, write_json
from common.metrics.featnet import (
    CKPT_NAME,
    REF_NAME,
    FeatNetConfig,
    reference_stats,
    save_featnet,
    save_reference,
    train_featnet,
)
from common.metrics.fid import fid_from_stats, kid, precision_recall

from ._cli import StageParser, friendly_errors


@friendly_errors
def main(argv: list[str] | None = None) -> dict:
    ap = StageParser("featurenet", __doc__)
    ap.add_argument("--out", required=True, help="output directory (e.g. data/featnet)")
    ap.add_argument("--params", help="YAML file whose optional `featnet:` section overrides the recipe")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 keeps the default)")
    args = ap.parse_args(argv)
    section = load_params(args.params).get("featnet") if args.params else None
    cfg = FeatNetConfig.from_dict({} if section is None else section)
    out = Path(args.out)
    check_writable(out / CKPT_NAME, out / REF_NAME, out / "metrics.json", what="--out file")
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    fnet, metrics = train_featnet(cfg)
    ref = reference_stats(fnet, split="train")
    Xh, _ = mnist5k_split("heldout")
    fh = fnet.extract(Xh)
    prec, rec = precision_recall(ref["features"], fh)
    metrics.update({
        "reference": "mnist5k/train",
        "reference_samples": int(len(ref["features"])),
        "heldout_fid": fid_from_stats(ref, fh),
        "heldout_kid": kid(ref["features"], fh)[0],
        "heldout_precision": prec,
        "heldout_recall": rec,
        "heldout_samples": int(len(fh)),
    })
    save_featnet(fnet, out / CKPT_NAME)
    save_reference(ref, out)
    write_json(out / "metrics.json", metrics)
    print(json.dumps(metrics, indent=2))
    return metrics


if __name__ == "__main__":
    main()
