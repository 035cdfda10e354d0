"""common.diffusion and common.sampling: samplers against a Gaussian target with an exact (analytic)
model, the DDPM hybrid loss, classifier-free guidance, and per-sample noise independent of batching.

Target: every pixel x ~ N(MU, S^2). Flow (x_t = (1 - t) x + t eps) has the exact velocity
E[eps - x | x_t] = (t - a S^2) (x_t - a MU) / V - MU with a = 1 - t, V = a^2 S^2 + t^2; its ODE maps
noise z to MU + S z. DDPM (x_t = sqrt(ab) x + sqrt(1 - ab) eps) has the exact
E[eps | x_t] = sqrt(1 - ab) (x_t - sqrt(ab) MU) / V with V = ab S^2 + 1 - ab."""
import math

import numpy as np
import pytest
import torch

from common.config import RunConfig
from common.diffusion import (
    SAMPLERS,
    CFGDenoiser,
    FlowMatching,
    GaussianDiffusion,
    check_sampler,
    create_objective,
    nfe,
    per_sample_noise,
    sample,
    samplers_for,
    times,
)
from common.models import create_model
from common.sampling import generate

MU, S, N = 0.2, 0.25, 2000


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def flow_velocity(x, t, y, **kw):
    """Exact velocity of the Gaussian target; t on the network's 0..1000 scale."""
    t = (t / 1000).reshape(-1, 1, 1, 1)
    a = 1 - t
    v = a**2 * S**2 + t**2
    return (t - a * S**2) * (x - a * MU) / v - MU


def ddpm_oracle(gd: GaussianDiffusion, steps: int, grid: str = "", prediction: str = "eps"):
    """Exact eps (or v) and, in the learned-range half, the exact reverse variance of the respaced chain:
    Var[x_{k-1} | x_k] = beta~_k + coef1_k^2 Var[x0 | x_k] (Gaussian data), so ancestral sampling is exact."""
    sched, tmap = gd.chain(gd.grid(steps, grid))
    ac = torch.tensor(gd.base.alphas_cumprod, dtype=torch.float64)
    coef1_all = torch.tensor(sched.posterior_mean_coef1)
    post_all = torch.tensor(sched.posterior_variance)
    lo_all = torch.tensor(sched.posterior_log_variance_clipped)
    hi_all = torch.tensor(np.log(sched.betas))
    index_of = torch.zeros(gd.num_timesteps, dtype=torch.long)
    index_of[torch.from_numpy(tmap)] = torch.arange(len(tmap))  # original step -> respaced index

    def model(x, t, y, **kw):
        orig = t.round().long()
        ab = ac[orig].reshape(-1, 1, 1, 1)
        var = ab * S**2 + 1 - ab
        eps = (1 - ab).sqrt() * (x.double() - ab.sqrt() * MU) / var
        if prediction == "v":  # v = sqrt(ab) eps - sqrt(1 - ab) x0 with x0 = (x - sqrt(1 - ab) eps) / sqrt(ab)
            eps = ab.sqrt() * eps - (1 - ab).sqrt() * (x.double() - (1 - ab).sqrt() * eps) / ab.sqrt()
        k = index_of[orig]
        var_x0 = S**2 * (1 - ab) / var
        coef1, post, lo, hi = (a[k].reshape(-1, 1, 1, 1) for a in (coef1_all, post_all, lo_all, hi_all))
        log_opt = torch.log(post + coef1**2 * var_x0)
        frac = ((log_opt - lo) / (hi - lo)).nan_to_num(0.0)  # the last step's variance is unused
        v = (2 * frac - 1).expand_as(x)
        return torch.cat([eps, v], 1).float()

    return model


@pytest.fixture(scope="module")
def noise():
    return per_sample_noise((N, 1, 1, 1), range(N))


Y = torch.zeros(N, dtype=torch.long)


@pytest.mark.parametrize("sampler, steps, tol", [("euler", 200, 0.01), ("heun", 30, 0.005)])
def test_flow_ode_samplers_map_noise_to_target(noise, sampler, steps, tol):
    x = sample(FlowMatching(), flow_velocity, noise, Y, sampler=sampler, steps=steps)
    exact = MU + S * noise  # the exact flow between two Gaussians is affine
    assert (x - exact).abs().max() < tol
    assert x.mean().item() == pytest.approx(MU, abs=0.02)
    assert x.std().item() == pytest.approx(S, rel=0.05)


def test_euler_is_first_order_and_heun_second_order(noise):
    exact = MU + S * noise
    err = {}
    for sampler in ("euler", "heun"):
        for steps in (10, 20):
            x = sample(FlowMatching(), flow_velocity, noise, Y, sampler=sampler, steps=steps)
            err[sampler, steps] = (x - exact).abs().max().item()
    assert 1.6 < err["euler", 10] / err["euler", 20] < 2.5
    assert err["heun", 10] / err["heun", 20] > 3.0
    assert err["heun", 20] < err["euler", 20]


def test_flow_sde_sampler_matches_target(noise):
    x = sample(FlowMatching(), flow_velocity, noise, Y, sampler="euler_maruyama", steps=50, seeds=range(N))
    assert x.mean().item() == pytest.approx(MU, abs=0.025)
    assert x.std().item() == pytest.approx(S, rel=0.06)
    # stochastic: not the deterministic ODE map of the same noise
    assert (x - (MU + S * noise)).abs().mean() > 0.05


def test_ddpm_ancestral_with_exact_variance_matches_target(noise):
    gd = GaussianDiffusion(learn_sigma=True)
    x = sample(gd, ddpm_oracle(gd, 25), noise, Y, sampler="ddpm", steps=25, seeds=range(N))
    assert x.mean().item() == pytest.approx(MU, abs=0.025)
    assert x.std().item() == pytest.approx(S, rel=0.06)


def test_ddim_matches_target(noise):
    gd = GaussianDiffusion(learn_sigma=True)
    x = sample(gd, ddpm_oracle(gd, 500), noise, Y, sampler="ddim", steps=500)
    assert (x - (MU + S * noise)).abs().max() < 0.02  # DDIM (eta = 0) is the probability-flow ODE
    assert x.mean().item() == pytest.approx(MU, abs=0.02)
    assert x.std().item() == pytest.approx(S, rel=0.05)


def test_flow_sampler_on_a_shifted_grid_maps_noise_to_target(noise):
    x = sample(FlowMatching(), flow_velocity, noise, Y, sampler="heun", steps=30, grid="shifted", shift=3.0)
    assert (x - (MU + S * noise)).abs().max() < 0.005


@pytest.mark.parametrize("sampler, steps", [("ddpm", 25), ("ddim", 500)])
def test_v_prediction_ddpm_matches_target(noise, sampler, steps):
    gd = GaussianDiffusion(learn_sigma=True, prediction="v")
    x = sample(gd, ddpm_oracle(gd, steps, prediction="v"), noise, Y, sampler=sampler, steps=steps, seeds=range(N))
    assert x.mean().item() == pytest.approx(MU, abs=0.025)
    assert x.std().item() == pytest.approx(S, rel=0.06)
    if sampler == "ddim":
        assert (x - (MU + S * noise)).abs().max() < 0.02


def test_ddim_on_a_uniform_grid_matches_target(noise):
    gd = GaussianDiffusion(learn_sigma=True)
    x = sample(gd, ddpm_oracle(gd, 500, grid="uniform"), noise, Y, sampler="ddim", steps=500, grid="uniform")
    assert (x - (MU + S * noise)).abs().max() < 0.02


def test_respacing():
    gd = GaussianDiffusion()
    sched, tmap = gd.chain(times.respaced(10, 1000))
    assert len(tmap) == 10 and tmap[0] == 0 and tmap[-1] == 999
    assert np.allclose(sched.alphas_cumprod, gd.base.alphas_cumprod[tmap])
    full, ident = gd.chain(times.respaced(1000, 1000))
    assert np.array_equal(ident, np.arange(1000)) and np.allclose(full.betas, gd.base.betas)
    with pytest.raises(ValueError, match="cannot respace 1000 steps to 1001"):
        times.respaced(1001, 1000)


@pytest.mark.parametrize("T", [1000, 100, 50])
def test_respaced_grid_runs_exactly_dits_steps(T):
    """DDPM's default grid lands on IDDPM's respaced steps round(linspace(0, T - 1, n)) for every n."""
    gd = GaussianDiffusion(num_timesteps=T)
    for n in range(1, T + 1):
        old = np.unique(np.round(np.linspace(0, T - 1, n)).astype(np.int64))
        assert np.array_equal(gd.chain(gd.grid(n))[1], old), n


def test_sampler_registry_and_errors():
    assert {n: s.objective for n, s in SAMPLERS.items()} == {
        "euler": "flow", "heun": "flow", "euler_maruyama": "flow", "ddpm": "ddpm", "ddim": "ddpm"}
    assert samplers_for("flow")[0] == "euler" and samplers_for("ddpm")[0] == "ddpm"  # the defaults
    check_sampler("flow", "heun")
    with pytest.raises(KeyError, match="sampler 'ddim' does not fit objective 'flow' \\(flow takes: euler, heun"):
        check_sampler("flow", "ddim")
    with pytest.raises(KeyError, match="unknown sampler 'dpm' \\(known: flow: euler/heun/euler_maruyama, ddpm"):
        check_sampler("ddpm", "dpm")
    with pytest.raises(KeyError, match="unknown objective 'score'"):
        create_objective("score")


# ---- training losses --------------------------------------------------------------------------------
class Split(torch.nn.Module):
    """Output = [a * x_t (the eps half), b (the variance half)] with separate parameters a, b."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(0.5))
        self.b = torch.nn.Parameter(torch.tensor(0.1))

    def forward(self, x, t, y, **kw):
        return torch.cat([self.a * x, self.b * torch.ones_like(x)], 1)


def _fixed_draws(b=16):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(b, 1, 4, 4, generator=g) * 2 - 1
    t = torch.randint(0, 1000, (b,), generator=g)
    t[0] = 0  # the decoder NLL term
    return x, t, torch.randn(x.shape, generator=g)


def test_ddpm_hybrid_loss_vb_trains_only_variance():
    x, t, noise = _fixed_draws()
    y = torch.zeros(len(x), dtype=torch.long)
    hybrid, mse_only = Split(), Split()
    lh = GaussianDiffusion(learn_sigma=True).training_losses(hybrid, x, y, t=t, noise=noise)["loss"]
    lm = GaussianDiffusion(learn_sigma=False).training_losses(mse_only, x, y, t=t, noise=noise)["loss"]
    assert lh.shape == (16,) and torch.isfinite(lh).all()
    assert (lh > lm).all()  # the VB term is added
    lh.mean().backward()
    lm.mean().backward()
    assert torch.allclose(hybrid.a.grad, mse_only.a.grad, rtol=1e-6, atol=0)  # VB adds nothing to the mean
    assert mse_only.b.grad is None or mse_only.b.grad == 0
    assert hybrid.b.grad.abs() > 0  # ... and trains the variance


def test_ddpm_vb_zero_for_exact_eps_and_posterior_variance():
    x, t, noise = _fixed_draws()
    t = t.clamp(min=1)  # t = 0 is the decoder NLL, not a KL
    y = torch.zeros(len(x), dtype=torch.long)

    def oracle(x_t, tt, yy, **kw):  # exact noise; v = -1 selects log beta~ (the true posterior variance)
        return torch.cat([noise, -torch.ones_like(noise)], 1)

    loss = GaussianDiffusion(learn_sigma=True).training_losses(oracle, x, y, t=t, noise=noise)["loss"]
    assert loss.abs().max() < 1e-5


def test_flow_loss_zero_for_exact_velocity_and_ignores_sigma_half():
    x, _, noise = _fixed_draws()
    t = torch.rand(len(x))
    y = torch.zeros(len(x), dtype=torch.long)

    def oracle(x_t, tt, yy, **kw):
        assert torch.allclose(tt, t * 1000)  # the network sees t on the 0..1000 scale
        return torch.cat([noise - x, torch.full_like(x, 7.0)], 1)

    assert FlowMatching().training_losses(oracle, x, y, t=t, noise=noise)["loss"].abs().max() < 1e-10


def test_tiny_dit_losses_finite_and_backprop():
    model = create_model("DiT-M/8")
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    y = torch.arange(4)
    for objective in (GaussianDiffusion(), FlowMatching()):
        loss = objective.training_losses(model, x, y)["loss"].mean()
        assert torch.isfinite(loss)
        model.zero_grad()
        loss.backward()
        assert model.final_layer.linear.weight.grad.abs().sum() > 0


# ---- guidance and per-sample noise ------------------------------------------------------------------
def _random_dit(**kw):
    model = create_model("DiT-M/8", in_channels=4, **kw).eval()
    torch.nn.init.normal_(model.final_layer.linear.weight, std=0.05)
    for block in model.blocks:
        torch.nn.init.normal_(block.adaLN_modulation[-1].weight, std=0.05)
    torch.nn.init.normal_(model.y_embedder.embedding_table.weight, std=1.0)
    return model


@torch.no_grad()
def test_cfg():
    model = _random_dit()
    x, t, y = torch.randn(3, 4, 32, 32), torch.tensor([10.0, 500.0, 990.0]), torch.tensor([1, 2, 3])
    cond = model(x, t, y)
    uncond = model(x, t, y, force_drop_ids=torch.ones(3, dtype=torch.long))
    assert not torch.allclose(cond, uncond)
    assert torch.equal(CFGDenoiser(model, 1.0)(x, t, y), cond)
    out = CFGDenoiser(model, 3.0)(x, t, y)
    assert torch.allclose(out[:, :4], uncond[:, :4] + 3.0 * (cond[:, :4] - uncond[:, :4]), atol=1e-5, rtol=1e-5)
    assert torch.allclose(out[:, 4:], cond[:, 4:], atol=1e-6)  # learned variance from the cond pass
    quirk = CFGDenoiser(model, 3.0, channels=3)(x, t, y)  # the official DiT guides 3 of 4 channels
    assert torch.allclose(quirk[:, :3], out[:, :3], atol=1e-6)
    assert torch.allclose(quirk[:, 3:], cond[:, 3:], atol=1e-6)


def test_per_sample_noise_rows_depend_only_on_their_seed():
    a = per_sample_noise((3, 2, 5), [7, 8, 9])
    b = per_sample_noise((2, 2, 5), [9, 7])
    assert torch.equal(a[2], b[0]) and torch.equal(a[0], b[1])
    assert not torch.equal(a[0], a[1])


@pytest.mark.parametrize("objective, sampler", [("flow", "euler_maruyama"), ("ddpm", "ddpm"), ("flow", "heun")])
def test_generate_independent_of_batch_split(objective, sampler):
    model = _random_dit(learn_sigma=True)
    cfg = RunConfig()
    cfg.diffusion.objective = objective
    cfg.sample.sampler, cfg.sample.steps, cfg.sample.cfg_scale, cfg.sample.seed = sampler, 3, 2.0, 5
    outs = []
    for bs in (3, 7):
        cfg.sample.batch_size = bs
        imgs, labels, _ = generate(model, cfg, num_samples=10, progress=False)
        outs.append((imgs, labels))
    (a, la), (b, lb) = outs
    assert a.shape == (10, 4, 32, 32)
    assert torch.equal(la, lb) and torch.equal(la, torch.arange(10) % model.num_classes)
    # equal up to float rounding: a batch of another size may take another GEMM path (not bit-identical)
    assert torch.allclose(a, b, atol=1e-4, rtol=0)
    # a subset of indices (another process's share) reproduces the same samples
    sub, _, _ = generate(model, cfg, indices=[4, 9], progress=False)
    assert torch.allclose(sub, a[[4, 9]], atol=1e-4, rtol=0)
    # a different seed gives different samples
    cfg.sample.seed = 6
    other, _, _ = generate(model, cfg, num_samples=10, progress=False)
    assert not torch.allclose(other, a, atol=1e-3)


def test_generate_rejects_unknown_sampler():
    cfg = RunConfig()
    cfg.sample.sampler = "ddim"  # a ddpm sampler for a flow run
    with pytest.raises(KeyError, match="sampler 'ddim' does not fit objective 'flow'"):
        generate(_random_dit(), cfg, num_samples=2, progress=False)


def test_time_convention_documented():
    import common.diffusion as d

    assert "t = 0 data, t = 1 noise" in d.__doc__
    assert math.isclose(nfe("heun", 10), 20) and nfe("ddim", 10) == 10 and nfe("euler", 10) == 10
