"""common.diffusion samplers over time grids: held frames (FVDM), per-frame times, shifted grids, the eps /
v / velocity parameterizations, frames beyond the trained count, logit-normal training times, the seed
function, one registry for parallel and sequential video, and each bad input's one clear message.

(The analytic-Gaussian accuracy of every sampler is in test_diffusion.py.)"""
import pytest
import torch

import common.diffusion.samplers as samplers_mod
from common.config import ConfigError, resolve
from common.diffusion import (
    SAMPLERS,
    CFGDenoiser,
    Denoiser,
    FlowMatching,
    GaussianDiffusion,
    create_objective,
    get_prediction,
    objective_from_config,
    per_sample_noise,
    sample,
    times,
)
from common.diffusion.parameterization import PREDICTIONS
from common.diffusion.video import sample_sequential
from common.mixers import MIXERS
from common.models import create_model
from common.nn import sincos_3d
from common.seeding import derive_seed

MIXER_PARAMS = [
    "attention",
    pytest.param("pom", marks=pytest.mark.skipif("pom" not in MIXERS, reason="pom mixer not registered")),
]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _video_model(frames: int, mask: str = "none", mixer: str = "attention"):
    """A small random video DiT (DiT-M/8, 2 blocks, 16 tokens per frame) whose every layer computes."""
    torch.manual_seed(0)
    model = create_model("DiT-M/8", depth=2, frames=frames, mask=mask, mixer=mixer).eval()
    for p in model.parameters():  # undo adaLN-Zero / zero init, else every block is the identity
        if p.requires_grad:
            p.data.add_(torch.randn_like(p) * 0.05)
    return model


def _video(B=2, F=3, seeds=(1, 2)):
    return per_sample_noise((B, F, 1, 32, 32), list(seeds)[:B]), torch.tensor([3, 7])[:B]


# ---- held frames and per-frame times -------------------------------------------------------------
class Spy:
    """Records the times the network sees."""

    def __init__(self, model):
        self.model, self.in_channels, self.seen = model, model.in_channels, []

    def __call__(self, x, t, y, **kw):
        self.seen.append(t.clone())
        return self.model(x, t, y, **kw)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_held_frame_is_returned_bit_exactly_and_nothing_held_is_the_plain_sampler(name):
    model = _video_model(frames=3)
    obj = create_objective(SAMPLERS[name].objective)
    noise, y = _video()
    kw = dict(sampler=name, steps=3, seeds=[1, 2])
    plain = sample(obj, CFGDenoiser(model, 1.5), noise, y, **kw)
    assert torch.equal(sample(obj, CFGDenoiser(model, 1.5), noise, y, held=[], **kw), plain)
    assert torch.equal(sample(obj, CFGDenoiser(model, 1.5), noise, y, held=torch.zeros(2, 3, dtype=torch.bool), **kw),
                       plain)

    given = torch.rand(2, 1, 32, 32) * 2 - 1
    x = noise.clone()
    x[:, 0] = given
    spy = Spy(model)
    out = sample(obj, spy, x, y, held=[0], **kw)
    assert torch.equal(out[:, 0], given)
    assert not torch.allclose(out[:, 1:], plain[:, 1:], atol=1e-3)  # the other frames saw the given one
    assert len(spy.seen) == 3 * SAMPLERS[name].calls_per_step
    for t in spy.seen:  # (B, F) times: 0 for the held frame at every step, the step's time for the others
        assert t.shape == (2, 3) and (t[:, 0] == 0).all() and (t[:, 1] == t[:, 2]).all()
    assert (spy.seen[0][:, 1:] > 0).all()

    # a per-row mask: row 0 holds frame 0, row 1 holds nothing and is the plain sampler's row
    x = noise.clone()
    x[0, 0] = given[0]
    mask = torch.tensor([[True, False, False], [False, False, False]])
    out = sample(obj, CFGDenoiser(model, 1.5), x, y, held=mask, **kw)
    assert torch.equal(out[0, 0], given[0])
    torch.testing.assert_close(out[1], plain[1], atol=1e-5, rtol=1e-5)


def test_per_frame_grid_equals_the_shared_grid_and_times_may_differ_per_frame():
    model = _video_model(frames=3)
    noise, y = _video()
    g = times.uniform(4)  # (5,)
    per_frame = g[:, None, None].expand(5, 2, 3).contiguous()  # (n + 1, B, F)
    for name in ("euler", "heun", "euler_maruyama"):
        a = sample(FlowMatching(), model, noise, y, sampler=name, grid=g)
        b = sample(FlowMatching(), model, noise, y, sampler=name, grid=per_frame)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    staggered = per_frame.clone()
    staggered[:, :, 2] = times.shifted(4, 3.0)[:, None]  # frame 2 on its own (shifted) schedule
    c = sample(FlowMatching(), model, noise, y, grid=staggered)
    assert torch.isfinite(c).all() and not torch.allclose(c, sample(FlowMatching(), model, noise, y, grid=g))


# ---- grids ---------------------------------------------------------------------------------------
def test_shifted_grid():
    assert torch.equal(times.shifted(10, 1.0), times.uniform(10))
    g = times.shifted(10, 3.0)
    assert g[0] == 1 and g[-1] == 0 and (g[1:] < g[:-1]).all()
    assert (g[1:-1] > times.uniform(10)[1:-1]).all()  # more of the steps at high noise
    assert g[5].item() == pytest.approx(0.75)  # 3 * 0.5 / (1 + 2 * 0.5)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_samples_on_a_shifted_grid_with_shift_1_equal_the_uniform_grid(name):
    model = _video_model(frames=2)
    noise, y = _video(F=2)
    obj = create_objective(SAMPLERS[name].objective)
    kw = dict(sampler=name, steps=3, seeds=[1, 2])
    uniform = sample(obj, model, noise, y, grid="uniform", **kw)
    assert torch.equal(sample(obj, model, noise, y, grid="shifted", shift=1.0, **kw), uniform)
    assert not torch.equal(sample(obj, model, noise, y, grid="shifted", shift=3.0, **kw), uniform)


def test_ddpm_reads_a_grid_as_steps():
    gd = GaussianDiffusion()
    assert gd.chain(times.uniform(4))[1].tolist() == [249, 499, 749, 999]  # step k at t = (k + 1) / T
    assert gd.chain(times.respaced(4, 1000))[1].tolist() == [0, 333, 666, 999]  # DiT's respacing, the default
    assert gd.chain(times.uniform(2000))[1].tolist() == list(range(1000))  # a finer grid: one call per step
    with pytest.raises(ValueError, match="a DDPM grid ends at t = 0"):
        gd.chain(torch.tensor([1.0, 0.5]))


# ---- parameterizations ---------------------------------------------------------------------------
def _noisy(gd, B=6):
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand(B, 1, 4, 4, generator=g) * 2 - 1
    noise = torch.randn(x0.shape, generator=g)
    t = torch.tensor([0, 10, 250, 500, 900, 999])[:B]
    return x0, noise, t, gd.q_sample(x0, t, noise)


def test_eps_and_v_predictions_give_the_same_x0_and_eps():
    gd = GaussianDiffusion()
    x0, noise, t, x_t = _noisy(gd)
    level = gd.level(t, x_t)
    eps_out = noise + 0.3 * torch.randn_like(noise)  # an imperfect model
    eps, v = PREDICTIONS["eps"], PREDICTIONS["v"]
    x0_hat = eps.x0(eps_out, x_t, level)
    v_out = level.alpha * eps_out - level.sigma * x0_hat  # the same prediction, as v
    torch.testing.assert_close(v.x0(v_out, x_t, level), x0_hat, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(v.eps(v_out, x_t, level), eps_out, atol=1e-4, rtol=1e-4)
    # exact targets recover the data and the noise
    torch.testing.assert_close(v.x0(v.target(x0, noise, level), x_t, level), x0, atol=1e-5, rtol=0)
    torch.testing.assert_close(eps.x0(noise, x_t, level), x0, atol=2e-3, rtol=0)  # 1 / alpha amplifies at t = 999


def test_velocity_gives_x0_and_eps():
    fm = FlowMatching()
    x0, noise, _, _ = _noisy(GaussianDiffusion())
    t = torch.rand(len(x0))
    x_t = fm.q_sample(x0, t, noise)
    level, vel = fm.level(t, x_t), PREDICTIONS["velocity"]
    out = vel.target(x0, noise, level)
    torch.testing.assert_close(vel.x0(out, x_t, level), x0, atol=1e-5, rtol=0)
    torch.testing.assert_close(vel.eps(out, x_t, level), noise, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["ddpm", "ddim"])
def test_eps_and_v_models_take_the_same_sampler_steps(name):
    """A network predicting eps and one predicting the same thing as v sample the same."""
    gd_eps, gd_v = GaussianDiffusion(learn_sigma=False), GaussianDiffusion(learn_sigma=False, prediction="v")
    ab = torch.tensor(gd_eps.base.alphas_cumprod, dtype=torch.float32)

    def eps_model(x, t, y, **kw):  # some smooth function of (x, t)
        return torch.tanh(0.7 * x + (t / 1000).reshape(-1, 1, 1, 1))

    def v_model(x, t, y, **kw):
        a = ab[t.long()].reshape(-1, 1, 1, 1)
        e = eps_model(x, t, y)
        x0 = (x - (1 - a).sqrt() * e) / a.sqrt()
        return a.sqrt() * e - (1 - a).sqrt() * x0

    noise = per_sample_noise((4, 1, 8, 8), range(4))
    y = torch.zeros(4, dtype=torch.long)
    for steps in (1, 5):
        a = sample(gd_eps, eps_model, noise, y, sampler=name, steps=steps)
        b = sample(gd_v, v_model, noise, y, sampler=name, steps=steps)
        torch.testing.assert_close(a, b, atol=2e-4, rtol=2e-4)


def test_v_prediction_loss_at_an_oracle_is_zero_and_keeps_vb():
    gd = GaussianDiffusion(prediction="v", learn_sigma=True)
    x0, noise, t, _ = _noisy(gd)
    t = t.clamp(min=1)  # t = 0 is the decoder NLL, not a KL
    y = torch.zeros(len(x0), dtype=torch.long)

    def oracle(x_t, tt, yy, **kw):  # exact v; variance half -1 selects the true posterior variance
        return torch.cat([gd.prediction.target(x0, noise, gd.level(t, x0)), -torch.ones_like(x0)], 1)

    terms = gd.training_losses(oracle, x0, y, t=t, noise=noise)
    assert set(terms) == {"mse", "vb", "loss"} and terms["loss"].abs().max() < 1e-5

    def off(x_t, tt, yy, **kw):  # a wrong mean: the VB term sees it
        out = oracle(x_t, tt, yy)
        return torch.cat([out[:, :1] + 0.5, out[:, 1:]], 1)

    assert gd.training_losses(off, x0, y, t=t, noise=noise)["vb"].sum() > 0.1


def test_v_prediction_trains_a_tiny_dit():
    model = create_model("DiT-M/8")
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    loss = GaussianDiffusion(prediction="v").training_losses(model, x, torch.arange(4))["loss"].mean()
    assert torch.isfinite(loss)
    loss.backward()
    assert model.final_layer.linear.weight.grad.abs().sum() > 0


def test_prediction_key_reaches_the_objective():
    cfg = resolve({"variants": {"a": {}}}, "p", "a", {"diffusion": {"objective": "ddpm", "prediction": "v"}})
    assert objective_from_config(cfg.diffusion).prediction.name == "v"
    cfg = resolve({"variants": {"a": {}}}, "p", "a", {"diffusion": {"objective": "ddpm"}})
    assert objective_from_config(cfg.diffusion).prediction.name == "eps"
    assert objective_from_config(resolve({"variants": {"a": {}}}, "p", "a").diffusion).prediction.name == "velocity"


# ---- training times ------------------------------------------------------------------------------
def test_logit_normal_training_times():
    x = torch.zeros(20_000, 1, 2, 2)
    t = FlowMatching(t_sampling="logit_normal", t_mean=0.5, t_std=0.8).sample_t(x, torch.Generator().manual_seed(0))
    assert 0 < t.min() and t.max() < 1
    assert torch.logit(t.double()).mean().item() == pytest.approx(0.5, abs=0.03)
    assert torch.logit(t.double()).std().item() == pytest.approx(0.8, rel=0.03)
    k = GaussianDiffusion(t_sampling="logit_normal").sample_t(x, torch.Generator().manual_seed(0))
    assert k.dtype == torch.long and 0 <= k.min() and k.max() <= 999
    assert k.float().median().item() == pytest.approx(500, abs=25)  # sigmoid(N(0, 1)) has median 1/2
    assert times.continuous_to_step(torch.tensor([0.0, 1e-9, 0.0009, 0.0011, 0.4999, 1.0]), 1000).tolist() == [
        0, 0, 0, 1, 499, 999]
    video = torch.zeros(3, 4, 1, 2, 2)
    assert GaussianDiffusion(t_sampling="logit_normal").sample_t(video, per_frame=True).shape == (3, 4)


def test_uniform_training_times_are_the_old_draws():
    x = torch.zeros(5, 1, 2, 2)
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    assert torch.equal(FlowMatching().sample_t(x, g1), torch.rand(5, generator=g2))
    assert torch.equal(GaussianDiffusion().sample_t(x, g1), torch.randint(0, 1000, (5,), generator=g2))


def test_derive_seed_values_are_the_training_ones():
    """Moved verbatim from the training loop: these values seed the recorded training draws."""
    assert derive_seed(0, 0, 1) == 1763239406941373976
    assert derive_seed(7, 123, 45, 2) == 4343725526852686993


# ---- video: one registry, frames beyond the trained count -----------------------------------------
def test_parallel_and_sequential_run_the_same_registered_functions(monkeypatch):
    calls = []

    def counting(den, x, grid, *, seeds=None, held=None):
        calls.append(x.dim())
        return samplers_mod.euler(den, x, grid, seeds=seeds, held=held)

    monkeypatch.setitem(SAMPLERS, "counting", samplers_mod.Sampler(counting, "flow"))
    model = _video_model(frames=3, mask="block")
    noise, y = _video()
    par = sample(FlowMatching(), model, noise, y, sampler="counting", steps=2)
    seq = sample_sequential(FlowMatching(), model, noise, y, steps=2, sampler="counting")
    assert calls == [5, 4, 4, 4]  # once on the video, then once per frame
    assert torch.equal(par, sample(FlowMatching(), model, noise, y, sampler="euler", steps=2))
    assert torch.equal(seq, sample_sequential(FlowMatching(), model, noise, y, steps=2))


def test_sequential_held_frame_is_kept():
    model = _video_model(frames=3, mask="block")
    noise, y = _video()
    plain = sample_sequential(FlowMatching(), model, noise, y, steps=2)
    x = noise.clone()
    x[:, 0] = torch.rand(2, 1, 32, 32)
    out = sample_sequential(FlowMatching(), model, x, y, steps=2, held=[0])
    assert torch.equal(out[:, 0], x[:, 0]) and not torch.allclose(out[:, 1:], plain[:, 1:], atol=1e-3)
    mask = torch.tensor([[True, False, False], [False, False, False]])
    out = sample_sequential(FlowMatching(), model, x, y, steps=2, held=mask)
    assert torch.equal(out[0, 0], x[0, 0]) and not torch.equal(out[1, 0], x[1, 0])


def test_position_table_extends_beyond_the_built_frames():
    model = create_model("DiT-M/8", depth=1, frames=8)
    d, n = model.pos_embed.shape[-1], model.tokens_per_frame
    table = torch.from_numpy(sincos_3d(d, 32, model.grid)).float()  # frame f -> temporal position f
    with torch.no_grad():  # a zero input embeds to the position code (the patch conv's bias is 0)
        assert torch.equal(model.embed(torch.zeros(1, 32, 1, 32, 32))[0], table)
        assert torch.equal(model.embed(torch.zeros(1, 1, 1, 32, 32), frame_offset=20)[0], table[20 * n : 21 * n])
        assert torch.equal(model.embed(torch.zeros(1, 1, 32, 32))[0], model.pos_embed[0, :n])  # images: unchanged


@pytest.mark.parametrize("mixer", MIXER_PARAMS)
def test_32_frames_from_a_model_built_for_8(mixer):
    model = _video_model(frames=8, mask="block", mixer=mixer)
    noise, y = _video(F=32)
    with torch.no_grad():
        # the block-causal parallel forward (extended table) equals step_frame (extended at each offset)
        t = torch.rand(2, 32) * 1000
        par = model(noise, t, y)
        states, seq = None, []
        for f in range(32):
            out, states = model.step_frame(noise[:, f], t[:, f], y, states, f)
            seq.append(out)
        torch.testing.assert_close(torch.stack(seq, 1), par, atol=1e-5, rtol=1e-5)
    video = sample_sequential(FlowMatching(), model, noise, y, steps=2, cfg_scale=1.5)
    assert video.shape == noise.shape and torch.isfinite(video).all()
    first = sample_sequential(FlowMatching(), model, noise[:, :8], y, steps=2, cfg_scale=1.5)
    assert torch.equal(video[:, :8], first)  # causal: later frames do not change earlier ones
    assert (video[:, 8:] - noise[:, 8:]).abs().mean() > 1e-2


def test_generate_more_frames_than_built():
    from common.config import RunConfig
    from common.sampling import generate

    model = _video_model(frames=3, mask="block")
    cfg = RunConfig()
    cfg.sample.steps, cfg.sample.frames, cfg.sample.cfg_scale = 2, 5, 1.0
    for mode in ("parallel", "sequential"):
        imgs, _, _ = generate(model, cfg, num_samples=2, progress=False, video_mode=mode)
        assert imgs.shape == (2, 5, 1, 32, 32) and torch.isfinite(imgs).all()


# ---- bad input: one line naming the culprit -------------------------------------------------------
def test_bad_held_frames_and_times():
    model = _video_model(frames=3)
    noise, y = _video()
    with pytest.raises(ValueError, match=r"held frame index 3 is out of range for 3 frames \(0..2\)"):
        sample(FlowMatching(), model, noise, y, steps=1, held=[0, 3])
    with pytest.raises(ValueError, match=r"held mask of shape \(2, 2\) does not fit \(B, F\) = \(2, 3\)"):
        sample(FlowMatching(), model, noise, y, steps=1, held=torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="held frames need a video x"):
        sample(FlowMatching(), model, noise[:, 0], y, steps=1, held=[0])
    with pytest.raises(ValueError, match=r"times of shape \(3,\) do not fit x of shape \(2, 3, 1, 32, 32\)"):
        Denoiser(FlowMatching(), model, y)(noise, torch.ones(3))
    with pytest.raises(ValueError, match=r"times of shape \(2, 4\)"):
        sample(FlowMatching(), model, noise, y, grid=torch.ones(3, 2, 4).cumsum(0).flip(0) / 3)
    with pytest.raises(ValueError, match="3 seeds for 2 rows"):
        sample(FlowMatching(), model, noise, y, sampler="euler_maruyama", steps=2, seeds=[1, 2, 3])


def test_bad_grid_parameterization_sampler():
    with pytest.raises(ValueError, match="grid shift 0.5 must be >= 1"):
        times.shifted(10, 0.5)
    with pytest.raises(ValueError, match="grid shift 0.5 must be >= 1"):
        FlowMatching().grid(10, "shifted", 0.5)
    with pytest.raises(KeyError, match="unknown time grid 'cosine'"):
        FlowMatching().grid(10, "cosine")
    with pytest.raises(ValueError, match="'respaced' is DDPM's step respacing"):
        FlowMatching().grid(10, "respaced")
    with pytest.raises(KeyError, match=r"unknown parameterization 'x0' \(known: eps, v, velocity\)"):
        get_prediction("x0", "ddpm")
    with pytest.raises(KeyError, match="unknown parameterization 'x0'"):
        create_objective("ddpm", prediction="x0")
    with pytest.raises(ValueError, match=r"parameterization 'eps' does not fit objective 'flow' \(flow takes: velocity\)"):
        create_objective("flow", prediction="eps")
    with pytest.raises(ValueError, match=r"'velocity' does not fit objective 'ddpm' \(ddpm takes: eps, v\)"):
        GaussianDiffusion(prediction="velocity")
    with pytest.raises(KeyError, match="sampler 'euler' does not fit objective 'ddpm'"):
        sample(GaussianDiffusion(), lambda *a, **k: None, torch.zeros(1, 1, 2, 2), torch.zeros(1), sampler="euler")
    with pytest.raises(KeyError, match="unknown training time distribution 'beta'"):
        FlowMatching(t_sampling="beta")


@pytest.mark.parametrize("sets, match", [
    (["sample.shift=0.5"], r"params key 'sample.shift' = 0.5 is out of range \[1.0, inf\]"),
    (["diffusion.prediction=x0"], r"params key 'diffusion.prediction' = 'x0' must be one of"),
    (["diffusion.prediction=v"], r"params key 'diffusion.prediction' = 'v' does not fit objective 'flow'"),
    (["sample.time_grid=cosine"], r"params key 'sample.time_grid' = 'cosine' must be one of"),
    (["sample.time_grid=respaced"], r"params key 'sample.time_grid' = 'respaced' is DDPM's step respacing"),
    (["diffusion.t_sampling=beta"], r"params key 'diffusion.t_sampling' = 'beta' must be one of"),
    (["sample.sampler=ddim"], r"sampler 'ddim' does not fit objective 'flow'"),
    (["diffusion.objective=ddpm", "sample.sampler=ddpm", "sample.steps=1001"],
     r"params key 'sample.steps' = 1001 exceeds the 1000 steps"),
])
def test_cli_prints_one_line_naming_the_key(tmp_path, capsys, sets, match):
    import re

    from pipelines.train import main

    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        main(["dit", "sit", "--out", str(out)] + [a for s in sets for a in ("--set", s)])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and re.search(match, err[0]), err
    assert not out.exists()


def test_config_rejects_a_misfit_prediction_directly():
    with pytest.raises(ConfigError, match="'diffusion.prediction' = 'eps' does not fit objective 'flow'"):
        resolve({"variants": {"a": {}}}, "p", "a", {"diffusion": {"prediction": "eps"}})


def test_training_with_v_prediction_runs_and_samples(tmp_path):
    """The train loop builds its objective from the whole diffusion section: v trains another model than eps."""
    from common.sampling import generate
    from common.train import load_for_sampling
    from pipelines.train import main

    sets = ["model.name=DiT-M/8", "model.overrides.depth=2", "model.overrides.hidden_size=32", "train.batch_size=8",
            "train.steps=2", "train.threads=1", "train.lr=1e-2"]
    weights = {}
    for prediction in ("eps", "v"):
        out = tmp_path / prediction
        main(["dit", "dit", "--out", str(out), *[a for s in [*sets, f"diffusion.prediction={prediction}"]
                                                 for a in ("--set", s)]])
        model, cfg, _ = load_for_sampling(out)
        assert objective_from_config(cfg.diffusion).prediction.name == prediction
        weights[prediction] = model.final_layer.linear.weight
        cfg.sample.sampler, cfg.sample.steps, cfg.sample.cfg_scale = "ddim", 2, 1.0
        imgs, _, _ = generate(model, cfg, num_samples=2, progress=False)
        assert torch.isfinite(imgs).all()
    assert not torch.equal(weights["eps"], weights["v"])


class _ZeroVideo:
    """A stand-in block-causal video model whose every prediction is 0 (velocity 0: noise is kept)."""

    frames, mask, in_channels, mixers, blocks = 2, "block", 1, [], []

    def step_frame(self, x, t, y, states, f, force_drop_ids=None):
        return torch.zeros_like(x), None


def test_every_sampling_draw_comes_from_derive_seed():
    """With velocity 0 on a 2-step grid, Euler-Maruyama returns 0.5 x + z0: z0 is step 0's noise."""
    from common.config import RunConfig
    from common.sampling import generate
    from common.seeding import FRAME, SAMPLE_NOISE, STEP_NOISE

    def zero(x, t, y, **kw):
        return torch.zeros_like(x)

    def noise_of(seeds, shape=(1, 4, 4)):
        return per_sample_noise((len(seeds),) + shape, seeds)

    x = noise_of([11, 12])
    out = sample(FlowMatching(), zero, x, torch.zeros(2), sampler="euler_maruyama", steps=2, seeds=[11, 12])
    torch.testing.assert_close(out - 0.5 * x, noise_of([derive_seed(s, 0, STEP_NOISE) for s in (11, 12)]))

    video = per_sample_noise((2, 2, 1, 4, 4), [11, 12])
    out = sample_sequential(FlowMatching(), _ZeroVideo(), video, torch.zeros(2), 2, sampler="euler_maruyama",
                            seeds=[11, 12])
    for f in range(2):
        z = noise_of([derive_seed(derive_seed(s, f, FRAME), 0, STEP_NOISE) for s in (11, 12)])
        torch.testing.assert_close(out[:, f] - 0.5 * video[:, f], z)

    model = create_model("DiT-M/8", depth=1)  # zero-initialised final layer: velocity 0, Euler keeps the noise
    cfg = RunConfig()
    cfg.sample.seed, cfg.sample.steps = 3, 2
    imgs, _, _ = generate(model, cfg, indices=[4, 5], progress=False)
    want = per_sample_noise((2, 1, 32, 32), [derive_seed(3, i, SAMPLE_NOISE) for i in (4, 5)]).clamp(-1, 1)
    assert torch.equal(imgs, want)
