"""Print parameter count and GFLOPs of a registered model config as JSON.

    python -m pipelines.describe DiT-XL/2 [--set mixer=pom ...]

Every paper is imported first (`papers.load_all`), so models a paper registers resolve too.
"""
from __future__ import annotations

import json

import torch

import papers
from common.config import parse_set
from common.flops import model_flops
from common.models import count_params, create_model

from ._cli import StageParser, check_types, explain_build_errors, friendly_errors


@friendly_errors
def main(argv=None):
    ap = StageParser("describe", __doc__)
    ap.add_argument("model")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="constructor overrides, e.g. depth=2")
    args = ap.parse_args(argv)
    papers.load_all()
    overrides = parse_set(args.sets)
    check_types(overrides, "--set")
    with explain_build_errors(overrides, "--set"), torch.device("meta"):  # shapes only: no memory or init time
        model = create_model(args.model, **overrides)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    fl = model_flops(model)
    print(json.dumps({"model": args.model, "params": count_params(model), "trainable_params": trainable,
                      "gflops": round(fl["gflops"], 4), "gmacs": round(fl["gmacs"], 4),
                      "tokens": model.pos_embed.shape[1], "mixers": sorted(set(model.mixers))}, indent=2))


if __name__ == "__main__":
    main()
