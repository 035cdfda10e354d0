"""Video path: Moving-MNIST data, the block-causal DiT against its frame-by-frame `step_frame`, causality,
per-frame timesteps, and sequential sampling (checked against a parallel-forward reference)."""
import pytest
import torch

from common.data.video import _split_digits, moving_mnist
from common.diffusion import CFGDenoiser, FlowMatching, GaussianDiffusion
from common.diffusion.video import sample_sequential, sample_sequential_with_states, state_bytes
from common.mixers import MIXERS
from common.models import create_model

FRAMES = 4
MIXER_PARAMS = [
    "attention",
    pytest.param("pom", marks=pytest.mark.skipif("pom" not in MIXERS, reason="pom mixer not registered yet")),
]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# ---- data --------------------------------------------------------------------------------------

def test_moving_mnist_shape_range_labels():
    videos, labels = moving_mnist("heldout", frames=FRAMES).tensors
    _, digit_labels = _split_digits("heldout")  # cached `mnist5k_split`
    assert videos.shape == (500, FRAMES, 1, 32, 32) and videos.dtype == torch.float32
    assert videos.min() == -1.0 and videos.max() <= 1.0 and videos.max() > 0.9
    assert labels.dtype == torch.int64 and torch.equal(labels, torch.from_numpy(digit_labels))
    lit = (videos > 0).flatten(2).float().mean(2)  # (N, F) fraction of bright pixels
    assert (lit > 0.005).all(), "every frame shows digits"
    assert (videos[:, 1:] != videos[:, :-1]).flatten(1).any(1).float().mean() > 0.95, "digits move"


def test_moving_mnist_deterministic():
    a = moving_mnist("heldout", frames=FRAMES)
    moving_mnist.cache_clear()
    b = moving_mnist("heldout", frames=FRAMES)
    assert a is not b and torch.equal(a.tensors[0], b.tensors[0])
    c = moving_mnist("heldout", frames=FRAMES, seed=1)
    assert not torch.equal(a.tensors[0], c.tensors[0]), "the seed must matter"
    short = moving_mnist("heldout", frames=2)
    assert torch.equal(short.tensors[0], a.tensors[0][:, :2]), "a shorter video is a prefix of a longer one"
    one = moving_mnist("heldout", frames=1, digits=1)
    assert (one.tensors[0] > 0).float().mean() < (a.tensors[0][:, :1] > 0).float().mean(), "two digits > one"


# ---- model: block-causal parallel forward vs frame-by-frame ------------------------------------

def _video_model(mixer: str, frames: int = FRAMES):
    torch.manual_seed(0)
    model = create_model("DiT-M/4", frames=frames, mask="block", mixer=mixer).eval()
    for p in model.parameters():  # undo adaLN-Zero / zero init, else every block is the identity
        if p.requires_grad:
            p.data.add_(torch.randn_like(p) * 0.05)
    return model


def _inputs(B: int = 2, frames: int = FRAMES):
    x = torch.randn(B, frames, 1, 32, 32)  # (B, F, C, H, W)
    t = torch.rand(B, frames) * 1000  # (B, F) per-frame timesteps
    y = torch.tensor([3, 7])[:B]
    return x, t, y


@pytest.mark.parametrize("mixer", MIXER_PARAMS)
def test_block_causal_forward_equals_step_frame(mixer):
    model = _video_model(mixer)
    x, t, y = _inputs()
    with torch.no_grad():
        par = model(x, t, y)  # (B, F, 2C, H, W)
        states, seq = None, []
        for f in range(FRAMES):
            out, states = model.step_frame(x[:, f], t[:, f], y, states, f)
            seq.append(out)
    seq = torch.stack(seq, 1)
    assert par.shape == seq.shape == (2, FRAMES, 2, 32, 32)
    assert par.abs().mean() > 1e-2, "outputs must not be trivially zero"
    torch.testing.assert_close(seq, par, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mixer", MIXER_PARAMS)
def test_block_causal_and_per_frame_t(mixer):
    model = _video_model(mixer)
    x, t, y = _inputs()
    with torch.no_grad():
        base = model(x, t, y)
        x2 = x.clone()
        x2[:, 3] += torch.randn_like(x2[:, 3])
        moved = model(x2, t, y)  # frame 3's input changed
        t2 = t.clone()
        t2[:, 1] = 1000 - t2[:, 1]
        retimed = model(x, t2, y)  # frame 1's timestep changed

    def per_frame(a):
        return (a - base).abs().flatten(2).amax(2)  # (B, F) largest change per frame

    d = per_frame(moved)
    assert (d[:, :3] == 0).all() and (d[:, 3] > 1e-3).all(), d
    d = per_frame(retimed)
    assert (d[:, :1] == 0).all() and (d[:, 1] > 1e-3).all() and (d[:, 2:] > 0).all(), d  # 1 and frames seeing it


# ---- sequential sampling ---------------------------------------------------------------------

def _reference_flow_sequential(model, noise, y, steps, cfg_scale):
    """Frame-by-frame Euler through the PARALLEL forward on the prefix (committed frames at t = 0)."""
    denoiser = CFGDenoiser(model, cfg_scale)
    B, F = noise.shape[:2]
    ts = torch.linspace(1.0, 0.0, steps + 1)
    done = []
    for f in range(F):
        x = noise[:, f]
        for i in range(steps):
            prefix = torch.stack(done + [x], 1)  # (B, f+1, C, H, W)
            t = torch.zeros(B, f + 1)
            t[:, f] = ts[i] * 1000
            v = denoiser(prefix, t, y)[:, f, : x.shape[1]]
            x = x - (ts[i] - ts[i + 1]) * v
        done.append(x)
    return torch.stack(done, 1)


@pytest.mark.parametrize("mixer", MIXER_PARAMS)
@pytest.mark.parametrize("cfg_scale", [1.0, 2.5])
def test_sample_sequential_matches_parallel_reference(mixer, cfg_scale):
    model = _video_model(mixer, frames=3)
    noise = torch.randn(2, 3, 1, 32, 32)
    y = torch.tensor([1, 4])
    with torch.no_grad():
        got = sample_sequential(FlowMatching(), model, noise, y, steps=2, cfg_scale=cfg_scale)
        ref = _reference_flow_sequential(model, noise, y, steps=2, cfg_scale=cfg_scale)
    assert got.shape == noise.shape and torch.isfinite(got).all()
    assert (got - noise).abs().mean() > 1e-2
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


def test_sample_sequential_ddpm_and_errors():
    model = _video_model("attention", frames=2)
    noise = torch.randn(2, 2, 1, 32, 32)
    y = torch.tensor([0, 9])
    out = sample_sequential(GaussianDiffusion(), model, noise, y, steps=3, cfg_scale=1.5)
    assert out.shape == noise.shape and torch.isfinite(out).all()
    with pytest.raises(KeyError, match="supports the objectives"):
        sample_sequential(object(), model, noise, y, steps=2)
    full = create_model("DiT-M/4", frames=2, mask="none")
    with pytest.raises(ValueError, match="mask='block'"):
        sample_sequential(FlowMatching(), full, noise, y, steps=2)


@pytest.mark.parametrize("mixer", MIXER_PARAMS)
def test_state_size_per_frame(mixer):
    """PoM's recurrent state has a fixed size; attention's KV cache grows linearly with frames."""
    model = _video_model(mixer, frames=4)
    y = torch.tensor([2])
    sizes = []
    for F in (2, 4):
        _, states = sample_sequential_with_states(FlowMatching(), model, torch.randn(1, F, 1, 32, 32), y, steps=1)
        sizes.append(state_bytes(states))
    if mixer == "pom":
        assert sizes[0] == sizes[1] > 0
    else:
        assert sizes[1] == 2 * sizes[0] > 0
