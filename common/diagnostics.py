"""Diagnostics of the diffusion code and of trained denoisers: why an arm fails, shown by the pipeline.

`faithfulness`: our DDPM (one training loss, the posterior, the model mean / variance, one ancestral and
one DDIM step) against the outputs of the official DiT diffusion code on the same tensors (a golden file,
`tests/data/dit_golden.pt`; how it was made is in `tests/test_dit_faithful.py`). It is the evidence that an
eps-predicting DDPM arm fails by its method, not by a bug of ours: the test asserts it, the `faithful`
stage records the numbers for the results page.

`x0_error`: on noised held-out data at a grid of log-SNR values, the mean squared error of the model's
x0 estimate. It separates what a network predicts from how its objective trains it: an eps-predicting
DDPM network, a v-predicting one and a velocity-predicting flow network are all read as x0 by
`Prediction.x0` (`common.diffusion.parameterization`), exactly as the samplers read them, so their errors
are comparable point by point. Where an arm fails at sampling, the curve says at which noise levels its
x0 estimate is worse (an eps network's x0 = (x_t - sigma eps) / alpha amplifies its eps error by
sigma / alpha at high noise, which is the known weakness that v and velocity avoid).

Protocol, the same for every run so curves overlay: log-SNR lambda = log(alpha^2 / sigma^2) on an
evenly spaced grid (low noise at the high end); x_t = alpha x0 + sigma eps with alpha, sigma of the run's
objective at lambda (flow: t = sigmoid(-lambda / 2), so alpha = 1 - t, sigma = t; DDPM: the step of the
1000-step chain whose log-SNR is nearest, its own lambda reported); the noise of digit i seeded by
(seed, i) alone, so every run sees the same eps; the true labels, guidance off (the conditional branch
alone). The DDPM arms' two processes differ only in alpha^2 + sigma^2 (1 for DDPM), so at equal lambda
the inputs agree up to a scale.
"""
from __future__ import annotations

import math
from unittest import mock

import numpy as np
import torch

from common.diffusion import Denoiser, GaussianDiffusion, Prediction, sample, samplers
from common.diffusion.guidance import per_sample_noise
from common.seeding import derive_seed

X0_NOISE = 6  # the stream tag of the diagnostic's noise (common.seeding's table stops at 5)
LOG_SNR_RANGE = (-8.0, 8.0)  # inside the DDPM chain's range (about -10.1 .. 9.2) and easy for flow


def log_snr_grid(points: int, lo: float = LOG_SNR_RANGE[0], hi: float = LOG_SNR_RANGE[1]) -> np.ndarray:
    """`points` log-SNR values evenly spaced from `lo` (noisy) to `hi` (clean), increasing."""
    if points < 2:
        raise ValueError(f"an x0-error grid needs at least 2 points, got {points}")
    if not hi > lo:
        raise ValueError(f"log-SNR range [{lo}, {hi}] is empty")
    return np.linspace(lo, hi, points)


def ddpm_log_snr(objective) -> np.ndarray:
    """log(alpha-bar / (1 - alpha-bar)) of every step of a DDPM chain (decreasing with the step)."""
    ac = objective.base.alphas_cumprod
    return np.log(ac) - np.log1p(-ac)


def time_at(objective, lam: float):
    """(the objective's time at log-SNR `lam`, the log-SNR actually used): flow's continuous t exactly,
    DDPM's nearest step of its chain."""
    if objective.name == "flow":
        return 1.0 / (1.0 + math.exp(lam / 2)), float(lam)
    lams = ddpm_log_snr(objective)
    k = int(np.abs(lams - lam).argmin())
    return k, float(lams[k])


@torch.no_grad()
def x0_error(model, objective, x0: torch.Tensor, y: torch.Tensor, log_snr, seed: int = 0,
             batch_size: int = 250) -> list[dict]:
    """One point per log-SNR: {"log_snr" (asked), "log_snr_used", "t" (the objective's time), "mse" (mean
    over digits of the per-pixel squared error of x0), "sem" (its standard error)}.

    `model` is called with the true labels `y`, no guidance; its x0 is `Denoiser(...)(x_t, t).x0`, the
    samplers' reading of the network."""
    seeds = [derive_seed(seed, i, X0_NOISE) for i in range(len(x0))]
    out = []
    for lam in log_snr:
        t, used = time_at(objective, float(lam))
        errs = []
        for s in range(0, len(x0), batch_size):
            xb, yb = x0[s:s + batch_size], y[s:s + batch_size]
            eps = per_sample_noise(xb.shape, seeds[s:s + batch_size], xb.device, xb.dtype)
            tb = torch.full((len(xb),), t, dtype=torch.long if objective.name == "ddpm" else xb.dtype)
            level = objective.level(tb, xb)
            x_t = level.alpha * xb + level.sigma * eps
            pred = Denoiser(objective, model, yb)(x_t, tb)
            errs.append((pred.x0 - xb).pow(2).flatten(1).mean(1))
        e = torch.cat(errs).double()
        sem = e.std().item() / math.sqrt(len(e)) if len(e) > 1 else float("nan")
        out.append({"log_snr": float(lam), "log_snr_used": used, "t": float(t), "mse": e.mean().item(), "sem": sem})
    return out


# ---- faithfulness to the official DiT diffusion code ----------------------------------------------------

# float64: both sides take float32 per-step coefficients and compute the rest in float64, so only float64
# rounding separates them (~1e-15); planted changes of formula move them by 2e-5 and more. float32: the
# same formulas may differ by a few ulps on values up to ~10 (the loss) when grouped differently.
FAITHFUL_ATOL = {"float64": 1e-6, "float32": 1e-5}
FAITHFUL_STEPS = 250  # DiT's default number of sampling steps, the chain the golden file's steps run on
FAITHFUL_GROUPS = ("respacing", "training loss", "posterior", "p_mean_variance", "ancestral step", "DDIM step")


def compare(group: str, quantity: str, dtype: str, ours: torch.Tensor, ref: torch.Tensor, atol: float,
            same_dtype: bool = True) -> dict:
    """One row of the comparison: the max |ours - official| and whether it passes (same shape, the same
    dtype unless `same_dtype` is False, and within `atol` everywhere)."""
    ours, ref = torch.as_tensor(ours), torch.as_tensor(ref)
    match = ours.shape == ref.shape and (ours.dtype == ref.dtype or not same_dtype)
    diff = (ours.double() - ref.double()).abs().max().item() if ours.shape == ref.shape else float("inf")
    return {"group": group, "quantity": quantity, "dtype": dtype, "max_abs_diff": diff, "atol": atol,
            "shape": list(ref.shape), "ours_dtype": str(ours.dtype).removeprefix("torch."),
            "official_dtype": str(ref.dtype).removeprefix("torch."), "passed": bool(match and diff <= atol)}


class _Stub:
    """The network: always the golden output (an eps half and a learned-range variance half); records the
    (x, t) of each call and stops a sampler at call `stop_at`, so that a sampler runs exactly one step."""

    class Stop(Exception):
        pass

    def __init__(self, out, stop_at: int = 0):
        self.out, self.stop_at, self.calls = out, stop_at, []

    def __call__(self, x, t, y, **kw):
        self.calls.append((x.clone(), t.clone()))
        if len(self.calls) == self.stop_at:
            raise _Stub.Stop
        return self.out


def _labels(x):
    return torch.zeros(x.shape[0], dtype=torch.long)


def _one_step(sampler: str, inp: dict, k: int, clip: bool):
    """Our sampler's first step from x_step at respaced step k: (x after the step, the network's time).
    A grid starting at respaced step k runs exactly the 250-step chain from k (the respaced betas depend
    only on neighbouring kept steps; the test checks it); the stub stops the run at its second call, and
    the x it is given there is the first step's result."""
    gd = GaussianDiffusion()
    model = _Stub(inp["model_out"], stop_at=2)
    x = inp["x_step"]
    try:
        x_next = sample(gd, model, x, _labels(x), sampler=sampler,
                        grid=gd.grid(FAITHFUL_STEPS)[FAITHFUL_STEPS - 1 - k:], clip=clip)
    except _Stub.Stop:
        x_next = model.calls[1][0]
    return x_next, model.calls[0][1]


def _faithful_dtype(golden: dict, dtype: str) -> list[dict]:
    """Every comparison of one dtype: the golden inputs cast to it, our outputs against the official ones."""
    cast = getattr(torch, dtype)
    inp = {k: v.to(cast) if v.is_floating_point() else v for k, v in golden["inputs"].items()}
    ref, atol, rows = golden[dtype], FAITHFUL_ATOL[dtype], []
    gd = GaussianDiffusion()

    # one training step: the hybrid loss (mse of eps + L_vb in bits/dim), per sample, and what the net saw
    model = _Stub(inp["model_out"])
    terms = gd.training_losses(model, inp["x0"], _labels(inp["x0"]), t=inp["t_train"], noise=inp["noise"])
    rows += [compare("training loss", key, dtype, terms[key], ref["train"][key], atol) for key in ("mse", "vb", "loss")]
    x_t, net_t = model.calls[0]
    rows.append(compare("training loss", "q_sample x_t", dtype, x_t, ref["train"]["x_t"], atol))
    rows.append(compare("training loss", "network time", dtype, net_t, ref["train"]["net_t"], 0.0, same_dtype=False))

    # q(x_{t-1} | x_t, x0) on the 1000-step chain
    t, x_t = inp["t_train"], ref["train"]["x_t"]
    mean, log_var = gd.q_posterior(inp["x0"], x_t, t, gd.base)
    var = torch.as_tensor(gd.base.posterior_variance)[t].float().reshape(-1, 1, 1, 1).expand_as(x_t)
    rows += [compare("posterior", "mean", dtype, mean, ref["posterior"]["mean"], atol),
             compare("posterior", "variance", dtype, var, ref["posterior"]["variance"], atol),
             compare("posterior", "log_variance", dtype, log_var.expand_as(x_t), ref["posterior"]["log_variance"], atol)]

    s, _ = gd.chain(gd.grid(FAITHFUL_STEPS))
    for clip in (True, False):
        tag = "clip" if clip else "noclip"
        # p(x_{t-1} | x_t) of the 250-step chain at a different step per row (learned-range variance)
        x, t = inp["x_step"], inp["t_respaced"]
        eps, v = gd.split(inp["model_out"], x)
        x0 = Prediction(eps, v, x, gd.level(t, x, s), gd.prediction).x0
        x0 = x0.clamp(-1, 1) if clip else x0
        mean, log_var = gd.p_mean_variance(x0, v, x, t, s)
        r = ref["p_mean_variance_" + tag]
        rows += [compare("p_mean_variance", f"pred_xstart ({tag})", dtype, x0, r["pred_xstart"], atol),
                 compare("p_mean_variance", f"mean ({tag})", dtype, mean, r["mean"], atol),
                 compare("p_mean_variance", f"log_variance ({tag})", dtype, log_var, r["log_variance"], atol)]
        # one ancestral step (official p_sample with step noise z) and one DDIM step (eta 0) at step k
        with mock.patch.object(samplers, "_step_noise", lambda x, seeds, i: inp["z"]):
            for k in inp["k_steps"].tolist():
                r = ref["steps_" + tag][str(k)]
                for name, group in (("ddpm", "ancestral step"), ("ddim", "DDIM step")):
                    x_next, net_t = _one_step(name, inp, k, clip)
                    rows.append(compare(group, f"x after step {k} ({tag})", dtype, x_next, r[name], atol))
                    rows.append(compare(group, f"network time at step {k} ({tag})", dtype, net_t, r["net_t"], 0.0,
                                        same_dtype=False))
    return rows


def faithfulness(golden: dict) -> dict:
    """Our DDPM against the official DiT diffusion code's outputs in `golden` (the dict of
    `tests/data/dit_golden.pt`): {"official": its repository and commit, "rows": one per quantity and dtype
    (`compare`), "passed": all rows pass}. The network is a stub returning the golden output: the
    diffusion math is what is compared, not a model."""
    gd = GaussianDiffusion()
    s, use = gd.chain(gd.grid(FAITHFUL_STEPS))
    official = golden["respaced"]
    rows = [compare("respacing", "timestep_map", "int64", torch.as_tensor(use), official["timestep_map"], 0.0,
                    same_dtype=False),
            compare("respacing", "betas", "float64", torch.from_numpy(s.betas), official["betas"], 1e-15)]
    for dtype in FAITHFUL_ATOL:
        rows += _faithful_dtype(golden, dtype)
    meta = golden.get("meta") or {}
    return {"official": {k: meta.get(k) for k in ("repository", "commit")}, "sampling_steps": FAITHFUL_STEPS,
            "atol": dict(FAITHFUL_ATOL), "rows": rows, "passed": all(r["passed"] for r in rows)}


__all__ = ["x0_error", "log_snr_grid", "ddpm_log_snr", "time_at", "LOG_SNR_RANGE", "X0_NOISE", "faithfulness",
           "compare", "FAITHFUL_ATOL", "FAITHFUL_GROUPS", "FAITHFUL_STEPS"]
