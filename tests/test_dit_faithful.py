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

Tolerances: float64 atol 1e-6. Both implementations take their per-step coefficients as float32 (the
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
`samplers._step_noise` (our samplers seed their own per-row noise).
"""
from pathlib import Path

import numpy as np
import pytest
import torch

from common.diffusion import GaussianDiffusion, Prediction, sample, samplers

pytestmark = pytest.mark.usefixtures("one_thread")

GOLDEN = Path(__file__).parent / "data" / "dit_golden.pt"
ATOL = {"float64": 1e-6, "float32": 1e-5}
DTYPES = ("float64", "float32")
STEPS = 250  # DiT's default number of sampling steps


@pytest.fixture(scope="module")
def golden():
    return torch.load(GOLDEN, weights_only=True)


def inputs(golden, dtype: str) -> dict:
    return {k: v.to(getattr(torch, dtype)) if v.is_floating_point() else v for k, v in golden["inputs"].items()}


def check(ours: torch.Tensor, ref: torch.Tensor, atol: float, what: str) -> None:
    """Same shape and dtype as the official output, and within atol of it everywhere."""
    assert ours.shape == ref.shape and ours.dtype == ref.dtype, f"{what}: {ours.shape} {ours.dtype} vs {ref.shape} {ref.dtype}"
    diff = (ours.double() - ref.double()).abs().max().item()
    assert diff <= atol, f"{what}: max |ours - official| = {diff:.3g} > {atol}"


class Stub:
    """The network: always the fixed output; records the (x, t) of each call and stops a sampler at
    call `stop_at` (so that a sampler runs exactly one step)."""

    class Stop(Exception):
        pass

    def __init__(self, out, stop_at: int = 0):
        self.out, self.stop_at, self.calls = out, stop_at, []

    def __call__(self, x, t, y, **kw):
        self.calls.append((x.clone(), t.clone()))
        if len(self.calls) == self.stop_at:
            raise Stub.Stop
        return self.out


def labels(x):
    return torch.zeros(x.shape[0], dtype=torch.long)


def test_respacing_matches_official(golden):
    """DiT's 250-step respacing: the same original steps and the same betas (both in float64 numpy)."""
    gd = GaussianDiffusion()
    s, use = gd.chain(gd.grid(STEPS))
    official = golden["respaced"]["timestep_map"].numpy()
    assert use.tolist() == official.tolist()  # pytest names the first step that differs
    check(torch.from_numpy(s.betas), golden["respaced"]["betas"], 1e-15, "respaced betas")
    for k in golden["inputs"]["k_steps"].tolist():  # a grid starting at step k runs the same chain from k
        s_k, use_k = gd.chain(gd.grid(STEPS)[STEPS - 1 - k:])
        assert np.array_equal(use_k, use[:k + 1]) and np.array_equal(s_k.betas, s.betas[:k + 1]), f"chain from {k}"


@pytest.mark.parametrize("dtype", DTYPES)
def test_training_losses_match_official(golden, dtype):
    """The hybrid loss of DiT's training step (mse of eps + L_vb in bits/dim), per sample."""
    inp, ref, atol = inputs(golden, dtype), golden[dtype]["train"], ATOL[dtype]
    model = Stub(inp["model_out"])
    terms = GaussianDiffusion().training_losses(model, inp["x0"], labels(inp["x0"]), t=inp["t_train"],
                                                noise=inp["noise"])
    for key in ("mse", "vb", "loss"):
        check(terms[key], ref[key], atol, f"training {key}")
    x_t, net_t = model.calls[0]
    check(x_t, ref["x_t"], atol, "q_sample x_t")
    assert torch.equal(net_t, ref["net_t"].to(net_t.dtype)), "the network's training times"


@pytest.mark.parametrize("dtype", DTYPES)
def test_posterior_matches_official(golden, dtype):
    """q(x_{t-1} | x_t, x0) on the 1000-step chain: mean, variance and clipped log-variance."""
    inp, ref, atol = inputs(golden, dtype), golden[dtype]["posterior"], ATOL[dtype]
    gd = GaussianDiffusion()
    t = inp["t_train"]
    x_t = golden[dtype]["train"]["x_t"]
    mean, log_var = gd.q_posterior(inp["x0"], x_t, t, gd.base)
    check(mean, ref["mean"], atol, "posterior mean")
    check(log_var.expand_as(x_t), ref["log_variance"], atol, "posterior log-variance")
    var = torch.as_tensor(gd.base.posterior_variance)[t].float().reshape(-1, 1, 1, 1).expand_as(x_t)
    check(var, ref["variance"], atol, "posterior variance")


@pytest.mark.parametrize("clip", [True, False], ids=["clip", "noclip"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_model_mean_variance_match_official(golden, dtype, clip):
    """p(x_{t-1} | x_t) of the 250-step chain at a different step per row (learned-range variance)."""
    inp, atol = inputs(golden, dtype), ATOL[dtype]
    ref = golden[dtype]["p_mean_variance_" + ("clip" if clip else "noclip")]
    gd = GaussianDiffusion()
    s, _ = gd.chain(gd.grid(STEPS))
    x, t = inp["x_step"], inp["t_respaced"]
    eps, var = gd.split(inp["model_out"], x)
    x0 = Prediction(eps, var, x, gd.level(t, x, s), gd.prediction).x0
    x0 = x0.clamp(-1, 1) if clip else x0
    mean, log_var = gd.p_mean_variance(x0, var, x, t, s)
    check(x0, ref["pred_xstart"], atol, "predicted x0")
    check(mean, ref["mean"], atol, "model mean")
    check(log_var, ref["log_variance"], atol, "model log-variance")


def one_step(sampler: str, inp, k: int, clip: bool):
    """Our sampler's first step from x_step at respaced step k: (x after the step, the network's time)."""
    gd = GaussianDiffusion()
    model = Stub(inp["model_out"], stop_at=2)
    x = inp["x_step"]
    try:
        x_next = sample(gd, model, x, labels(x), sampler=sampler, grid=gd.grid(STEPS)[STEPS - 1 - k:], clip=clip)
    except Stub.Stop:
        x_next = model.calls[1][0]
    return x_next, model.calls[0][1]


@pytest.mark.parametrize("clip", [True, False], ids=["clip", "noclip"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_sampler_steps_match_official(golden, dtype, clip, monkeypatch):
    """One ancestral step (official `p_sample`, noise z) and one DDIM step (eta = 0) of the 250-step chain,
    at its first step, a middle one and its last (which returns the mean)."""
    inp, atol = inputs(golden, dtype), ATOL[dtype]
    refs = golden[dtype]["steps_" + ("clip" if clip else "noclip")]
    monkeypatch.setattr(samplers, "_step_noise", lambda x, seeds, i: inp["z"])
    for k in inp["k_steps"].tolist():
        ref = refs[str(k)]
        for name in ("ddpm", "ddim"):
            x_next, net_t = one_step(name, inp, k, clip)
            check(x_next, ref[name], atol, f"{name} step at respaced step {k}")
            assert torch.equal(net_t, ref["net_t"].to(net_t.dtype)), f"{name}: the network's time at step {k}"
