"""The DDPM arm is faithful to the official DiT diffusion code: one training loss, one posterior, one
model mean / variance and one sampler step each equal the official outputs on the same tensors.

The network is not under test (the diffusion math is): a stub stands in for it and returns one fixed
output tensor, (B, 2C, H, W) = (4, 8, 4, 4), an eps half and a learned-range variance half.

How `tests/data/dit_golden.pt` was made (by a script kept outside this repository, since it imports
the official code, which is not copied here):
- code: github.com/facebookresearch/DiT at commit ed81ce2229091fd4ecc9a223645f95cf379d582b, its
  `diffusion/` package (gaussian_diffusion.py, respace.py, diffusion_utils.py, __init__.py);
- inputs ("inputs"): from `torch.Generator().manual_seed(20240601)`, float64, each (4, 4, 4, 4), drawn in
  this order: x0 = 2 U[0, 1) - 1 (then x0[:, 0, 0, 0] = -1 and x0[:, 0, 0, 1] = 1, the decoder
  likelihood's edge bins), noise = N(0, 1), the output's eps half = N(0, 1), its variance half =
  2 U[0, 1) - 1, x_step = N(0, 1) (the sampler's current x), z = N(0, 1) (the step noise); training
  steps t_train = [0, 1, 500, 999] (0 takes the decoder-NLL branch of L_vb), respaced steps
  t_respaced = [249, 137, 1, 0], sampler steps k_steps = [249, 137, 0];
- "train", "posterior": `create_diffusion(timestep_respacing="")` (as DiT's train.py):
  `training_losses(stub, x0, t_train, noise=noise)` (mse, vb, loss; the stub records the time it
  is given, "net_t"), `q_sample(x0, t_train, noise)` ("x_t") and
  `q_posterior_mean_variance(x0, x_t, t_train)` (mean, variance, log_variance);
- "p_mean_variance_{clip,noclip}": `create_diffusion("250")` (as DiT's sample.py with 250 steps):
  `p_mean_variance(stub, x_step, t_respaced, clip_denoised=True / False)` (mean, log_variance,
  pred_xstart); DiT's sample.py samples with clip_denoised=False, our sampler's default clips;
- "steps_{clip,noclip}"/k: for every k in k_steps, t = k for every row: `p_sample(stub, x_step, t,
  clip_denoised=...)["sample"]` with `torch.randn_like` patched to return z ("ddpm"; the time the
  stub saw, mapped to the original chain, is "net_t"), and `ddim_sample(stub, x_step, t,
  clip_denoised=..., eta=0.0)["sample"]` ("ddim");
- "respaced": the 250-step SpacedDiffusion's `timestep_map` and `betas`;
- every output under "float64" comes from the inputs as float64, under "float32" from the same
  inputs cast to float32 (outputs that are only extracted coefficients, the posterior variance and
  log-variance, are float32 in both: the official code casts them).

The comparison itself is `common.diagnostics.faithfulness` (the `faithful` stage records the same rows for
the results page, so what the page shows is what these tests assert). Tolerances
(`common.diagnostics.FAITHFUL_ATOL`): float64 atol 1e-6. Both implementations take their per-step coefficients as float32 (the
official `_extract_into_tensor` casts them, our `_extract` too) and compute the rest in the inputs'
dtype, so in float64 only float64 rounding separates them (~1e-15); 1e-6 leaves room for a harmless
regrouping of an expression, while the small changes of formula planted to check that these tests
fail (decoder bins, variance interpolation, unclipped log-variance, DDIM's eps) moved them by 2e-5
and more. float32 atol 1e-5: the
same formulas in float32, on values up to ~10 (the loss), may differ by a few ulps (a few 1e-6) when an
expression is grouped differently.

Our single steps are taken through the public samplers: a grid that starts at respaced step k
(`grid(250)[249 - k:]`) runs exactly the 250-step chain from step k (the respaced betas depend only on
neighbouring kept steps, which the test checks), the stub stops the run at its second call and the x
it is given there is the first step's result; the ancestral step noise is set to z by patching
`samplers._step_noise` for the duration of the comparison (our samplers seed their own per-row noise).
"""
import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from common.diagnostics import FAITHFUL_ATOL, FAITHFUL_GROUPS, FAITHFUL_STEPS, faithfulness
from common.diffusion import GaussianDiffusion

pytestmark = pytest.mark.usefixtures("one_thread")

GOLDEN = Path(__file__).parent / "data" / "dit_golden.pt"
DTYPES = tuple(FAITHFUL_ATOL)
# what each group compares, per dtype: a quantity the comparison stops making fails here, not silently
EXPECTED = {
    "training loss": {"mse", "vb", "loss", "q_sample x_t", "network time"},
    "posterior": {"mean", "variance", "log_variance"},
    "p_mean_variance": {f"{q} ({c})" for q in ("pred_xstart", "mean", "log_variance") for c in ("clip", "noclip")},
    **{g: {f"{q} {k} ({c})" for q in ("x after step", "network time at step") for k in (249, 137, 0)
           for c in ("clip", "noclip")} for g in ("ancestral step", "DDIM step")},
}


@pytest.fixture(scope="module")
def golden():
    return torch.load(GOLDEN, weights_only=True)


@pytest.fixture(scope="module")
def report(golden):
    return faithfulness(golden)


def failures(rows) -> list[str]:
    return [f"{r['group']} / {r['quantity']} ({r['dtype']}): max |ours - official| = {r['max_abs_diff']:.3g} "
            f"> {r['atol']} or {r['ours_dtype']} vs {r['official_dtype']}" for r in rows if not r["passed"]]


def test_respacing_matches_official(report):
    """DiT's 250-step respacing: the same original steps and the same betas (both in float64 numpy); and a
    grid starting at step k runs the same chain from k (what the one-step comparisons rely on)."""
    rows = [r for r in report["rows"] if r["group"] == "respacing"]
    assert {r["quantity"] for r in rows} == {"timestep_map", "betas"} and failures(rows) == []
    gd = GaussianDiffusion()
    s, use = gd.chain(gd.grid(FAITHFUL_STEPS))
    for k in (249, 137, 0):
        s_k, use_k = gd.chain(gd.grid(FAITHFUL_STEPS)[FAITHFUL_STEPS - 1 - k:])
        assert np.array_equal(use_k, use[:k + 1]) and np.array_equal(s_k.betas, s.betas[:k + 1]), f"chain from {k}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group", [g for g in FAITHFUL_GROUPS if g != "respacing"])
def test_matches_official(report, group, dtype):
    """One training loss, the posterior, p_mean_variance (clip and no clip), one ancestral and one DDIM step
    at the chain's first, a middle and its last step: each equals the official output."""
    rows = [r for r in report["rows"] if r["group"] == group and r["dtype"] == dtype]
    assert {r["quantity"] for r in rows} == EXPECTED[group]
    assert failures(rows) == []


def test_report_names_the_official_code(report):
    assert report["passed"] and report["official"]["repository"] == "facebookresearch/DiT"
    assert len(report["official"]["commit"]) == 40 and report["atol"] == FAITHFUL_ATOL


def test_a_planted_difference_is_caught(golden):
    """The comparison is not blind: a change of 2e-5 in one official output (the smallest the planted
    changes of formula made) fails that row alone; an official output of another dtype fails its row."""
    planted = copy.deepcopy(golden)
    planted["float64"]["steps_clip"]["137"]["ddim"][0, 0, 0, 0] += 2e-5
    planted["float32"]["posterior"]["mean"] = planted["float32"]["posterior"]["mean"].double()
    rep = faithfulness(planted)
    bad = {(r["group"], r["quantity"], r["dtype"]) for r in rep["rows"] if not r["passed"]}
    assert bad == {("DDIM step", "x after step 137 (clip)", "float64"), ("posterior", "mean", "float32")}
    assert not rep["passed"]
