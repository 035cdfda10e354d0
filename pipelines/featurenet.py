"""Stage: train the `mnist-cnn` feature network and write the reference statistics FID is measured against.

    python -m pipelines.featurenet --out data/featnet [--params params.yaml] [--threads 2]

Writes `<out>/mnist-cnn.pt` (state_dict + config, weights_only loadable), `<out>/ref_stats.npz`
(mu, sigma float64 and the raw features of the real mnist5k train split) and `<out>/metrics.json`
(held-out accuracy, training time, and the FID/KID/P-R of the real held-out split against the
reference: the floor a perfect generator would reach with 500 samples).
Recipe defaults live in `common.metrics.featnet.FeatNetConfig`; a `featnet:` section of the params
file overrides them.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import yaml

from common.data import mnist5k_split
from common.metrics.featnet import (
    CKPT_NAME,
    FeatNetConfig,
    save_featnet,
    train_featnet,
    write_reference,
)
from common.metrics.fid import fid_from_stats, kid, precision_recall


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output directory (e.g. data/featnet)")
    ap.add_argument("--params", help="YAML file whose optional `featnet:` section overrides the recipe")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 keeps the default)")
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    section = {}
    if args.params:
        section = (yaml.safe_load(Path(args.params).read_text()) or {}).get("featnet") or {}
    cfg = FeatNetConfig.from_dict(section)

    fnet, metrics = train_featnet(cfg)
    out = Path(args.out)
    save_featnet(fnet, out / CKPT_NAME)
    ref = write_reference(fnet, out, split="train")

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
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics, indent=2))
    return metrics


if __name__ == "__main__":
    main()
