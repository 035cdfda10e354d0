"""DiT / SiT: the reference row of every comparison.

- DiT: Peebles & Xie, "Scalable Diffusion Models with Transformers", https://arxiv.org/abs/2212.09748
- SiT: Ma et al., "SiT: Exploring Flow and Diffusion-based Generative Models with Scalable Interpolant
  Transformers", https://arxiv.org/abs/2401.08740

Changes to the base DiT: none -- this *is* the base (`common.models`). Variants: `sit` (linear flow
matching, velocity target, Euler ODE), `dit` (DDPM, epsilon + learned-range variance, hybrid loss,
respaced ancestral sampling), `sit-p8` (patch 8 instead of 4: a quarter of the tokens and GFLOPs, the same
parameters).
Claims (declared in params.yaml `claims:`, judged by the one rule in common/metrics/schema.py): SiT
Table 1/2 (the flow objective beats DDPM at equal steps, same backbone) and DiT Table 4 / Fig. 6 (smaller
patches, i.e. more GFLOPs, give lower FID). Why the DDPM arm fails the quality gate is a section of the results
page (`why_ddpm.py`: faithfulness to the official code, x0 error against log-SNR, the gates of eps vs v). Every arm trains with the shared reference recipe (chosen by
the sweep in sweep/), 3 seeds each; `sit` is the shared attention reference other papers compare with.
"""
from __future__ import annotations

TITLE = "DiT / SiT: Scalable Diffusion (and Interpolant) Transformers"
ARXIV = "2212.09748"
EXTRA_ARXIV = {"SiT": "2401.08740"}


def readme_sections(metrics: dict, out_dir) -> list[str]:
    """Sections the `results` stage appends to results/README.md (imported here lazily: every stage imports
    the paper, only `results` needs the report helpers)."""
    from . import why_ddpm

    return [why_ddpm.section(metrics, out_dir)]
