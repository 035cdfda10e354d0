"""The DiT's extension points: the conditioning object every block receives (raw t, t_emb, y_emb, c, per
frame and per token), the block factory (a class or a function of the block index), per-block mixer
kwargs and their errors, and FLOPs counted at a chosen timestep."""
import pytest
import torch
from torch import nn

from common.diffusion import FlowMatching
from common.flops import model_flops
from common.models import MODELS, Cond, DiT, DiTBlock, create_model, register_family
from common.nn import Mlp, modulate

TINY = dict(depth=2, hidden_size=32, num_heads=2)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class RawTimeBlock(nn.Module):
    """x + (t / 1000) * mlp(LN(x)): the residual branch is scaled by the raw time input of each token's
    frame, so the block is the identity at t = 0 and adds the whole MLP at t = 1000."""

    def __init__(self, hidden_size, num_heads, mlp_ratio, mixer, mixer_kwargs):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))

    def branch(self, x):
        return self.mlp(self.norm(x))

    def forward(self, x, cond: Cond, ctx):
        return x + cond.per_token("t").unsqueeze(-1) / 1000 * self.branch(x)  # (B, N, 1) * (B, N, D)

    def step(self, x, cond: Cond, state):
        return self(x, cond, None), state  # no token mixing: no state to carry


class SkipMlpLateBlock(DiTBlock):
    """A toy dynamic block: the MLP branch is skipped when every sample's t > 500 (DyDiT-like)."""

    def forward(self, x, cond: Cond, ctx):
        sh1, sc1, g1, sh2, sc2, g2 = self._mods(cond)
        x = x + g1 * self.attn(modulate(self.norm1(x), sh1, sc1), ctx)
        if not (cond.t > 500).all():
            x = x + g2 * self.mlp(modulate(self.norm2(x), sh2, sc2))
        return x


def _block_io(model, x, t, y):
    """(input, output) token tensors of every block, taken with forward hooks."""
    seen = []
    hooks = [b.register_forward_hook(lambda m, args, out: seen.append((args[0], out))) for b in model.blocks]
    try:
        model(x, t, y)
    finally:
        for h in hooks:
            h.remove()
    return seen


# ---- conditioning object -----------------------------------------------------------------------------
def test_custom_block_reads_raw_t_and_trains():
    torch.manual_seed(0)
    model = create_model("DiT-M/8", block=RawTimeBlock, **TINY)
    assert all(type(b) is RawTimeBlock for b in model.blocks)
    x, y = torch.randn(2, 1, 32, 32), torch.tensor([1, 2])
    (h0_in, h0_out), _ = _block_io(model, x, torch.zeros(2), y)
    assert torch.equal(h0_out, h0_in)  # t = 0: identity
    (h1_in, h1_out), _ = _block_io(model, x, torch.full((2,), 1000.0), y)
    assert torch.allclose(h1_out, h1_in + model.blocks[0].branch(h1_in), atol=1e-6)  # t = 1000: whole branch
    (h2_in, h2_out), _ = _block_io(model, x, torch.tensor([250.0, 1000.0]), y)  # per sample
    assert torch.allclose(h2_out[0], h2_in[0] + 0.25 * model.blocks[0].branch(h2_in[0]), atol=1e-6)

    # it trains: a few optimizer steps on one batch lower the loss and move the blocks' weights
    data, labels = torch.randn(8, 1, 32, 32), torch.arange(8) % 10
    t, noise = torch.rand(8), torch.randn(8, 1, 32, 32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    w0 = model.blocks[1].mlp.fc2.weight.detach().clone()
    losses = []
    for _ in range(6):
        loss = FlowMatching().training_losses(model, data, labels, t=t, noise=noise)["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert not torch.equal(model.blocks[1].mlp.fc2.weight, w0)


def test_per_frame_times_give_per_frame_conditioning():
    model = create_model("DiT-M/8", frames=3, **TINY).eval()
    n = model.tokens_per_frame
    t, y = torch.tensor([[0.0, 400.0, 900.0], [10.0, 10.0, 10.0]]), torch.tensor([1, 2])
    cond = model.condition(t, y, num_tokens=3 * n)
    assert cond.per_frame and cond.t is t
    assert cond.c.shape == cond.t_emb.shape == (2, 3, 32) and cond.y_emb.shape == (2, 32)
    assert torch.equal(cond.c, cond.t_emb + cond.y_emb[:, None])
    assert torch.allclose(cond.t_emb[0, 1], model.t_embedder(torch.tensor([400.0]))[0], atol=1e-6)
    for name, width in (("c", (32,)), ("t_emb", (32,)), ("y_emb", (32,)), ("t", ())):
        tok = cond.per_token(name)
        assert tok.shape == (2, 3 * n) + width, name
    for f in range(3):  # every token carries its own frame's values
        frame = slice(f * n, (f + 1) * n)
        assert (cond.per_token("t")[:, frame] == t[:, f : f + 1]).all()
        assert (cond.per_token("c")[:, frame] == cond.c[:, f : f + 1]).all()
        assert (cond.per_token("y_emb")[:, frame] == cond.y_emb[:, None]).all()
    assert cond.per_token("c", expand=False).shape == (2, 3 * n, 32)  # per frame is always per token

    # one time for all frames: (B, D) values, expanded on request; the forward agrees with (B, F) times
    same = model.condition(t[1:, :1].flatten(), y[1:], num_tokens=3 * n)
    assert not same.per_frame and same.c.shape == (1, 32)
    assert same.per_token("c", expand=False).shape == (1, 32) and same.per_token("c").shape == (1, 3 * n, 32)
    for block in model.blocks:
        nn.init.normal_(block.adaLN_modulation[-1].weight, std=0.1)
    nn.init.normal_(model.final_layer.linear.weight, std=0.1)
    x = torch.randn(1, 3, 1, 32, 32)
    assert torch.allclose(model(x, t[1:], y[1:]), model(x, t[1, :1], y[1:]), atol=1e-5)


def test_bad_times_and_fields():
    model = create_model("DiT-M/8", frames=3, **TINY)
    x, y = torch.randn(2, 3, 1, 32, 32), torch.tensor([1, 2])
    with pytest.raises(ValueError, match=r"t has shape \(2, 4\); expected \(B,\) = \(2,\) or per frame"):
        model(x, torch.zeros(2, 4), y)
    with pytest.raises(KeyError, match="unknown conditioning field 'sigma'"):
        model.condition(torch.zeros(2), y, 3 * model.tokens_per_frame).per_token("sigma")


def test_step_frame_builds_the_same_conditioning():
    model = create_model("DiT-M/8", frames=2, mask="block", block=RawTimeBlock, **TINY).eval()
    nn.init.normal_(model.final_layer.linear.weight, std=0.1)
    x, t, y = torch.randn(2, 2, 1, 32, 32), torch.tensor([[1000.0, 300.0], [0.0, 700.0]]), torch.tensor([1, 2])
    full = model(x, t, y)  # per-frame times, all frames at once
    for f in range(2):
        out, _ = model.step_frame(x[:, f], t[:, f], y, None, f)  # one frame, its time (B,)
        assert torch.allclose(out, full[:, f], atol=1e-5)


# ---- block factory and per-block mixer kwargs ----------------------------------------------------------
def _weights(**kw):
    torch.manual_seed(0)
    return DiT(input_size=32, patch_size=8, in_channels=1, num_classes=10, **TINY, **kw).state_dict()


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_block_factory_by_function():
    made = []

    def factory(i, **kw):
        made.append((i, kw["mixer"]))
        return DiTBlock(**kw)

    assert _same(_weights(block=factory), _weights())  # same creation order, same init
    assert made == [(0, "attention"), (1, "attention")]

    def wide_odd(i, **kw):  # the index shapes each block
        return DiTBlock(**{**kw, "mlp_ratio": 2.0 if i % 2 else 4.0})

    model = create_model("DiT-M/8", depth=4, hidden_size=32, num_heads=2, block=wide_odd)
    assert [b.mlp.fc1.out_features for b in model.blocks] == [128, 64, 128, 64]


def test_register_family_with_a_block():
    register_family("TestRawT", block=RawTimeBlock)
    try:
        model = create_model("TestRawT-M/8", depth=2)
        assert all(type(b) is RawTimeBlock for b in model.blocks)
    finally:
        for name in [n for n in MODELS if n.startswith("TestRawT-")]:
            del MODELS[name]


def test_per_block_mixer_kwargs_reach_each_block():
    mix = ["attention", "pom"]
    # flat dict: every non-attention block (the default; identical to before)
    m = create_model("DiT-M/8", depth=4, mixer=mix, mixer_kwargs={"degree": 3})
    assert [b.attn.degree for b in m.blocks[1::2]] == [3, 3]
    assert all(b.attn.qkv.bias is not None for b in m.blocks[::2])
    # keyed by mixer name
    m = create_model("DiT-M/8", depth=4, mixer=mix,
                     mixer_kwargs={"pom": {"degree": 1, "form": "v2"}, "attention": {"qkv_bias": False}})
    assert [(b.attn.degree, b.attn.form) for b in m.blocks[1::2]] == [(1, "v2"), (1, "v2")]
    assert all(b.attn.qkv.bias is None for b in m.blocks[::2])
    # one dict per block, and a repeating pattern of dicts
    m = create_model("DiT-M/8", depth=4, mixer="pom", mixer_kwargs=[{"degree": d} for d in (1, 2, 3, 4)])
    assert [b.attn.degree for b in m.blocks] == [1, 2, 3, 4]
    # one mixer name per block, with one dict per block
    names = ["pom", "attention", "attention", "pom"]
    m = create_model("DiT-M/8", depth=4, mixer=names, mixer_kwargs=[{"degree": 3}, {}, {"qkv_bias": False}, {}])
    assert m.mixers == names and [b.attn.mixer_name for b in m.blocks] == names
    assert (m.blocks[0].attn.degree, m.blocks[3].attn.degree) == (3, 2)  # block 3 keeps the default
    assert m.blocks[1].attn.qkv.bias is not None and m.blocks[2].attn.qkv.bias is None
    m = create_model("DiT-M/8", depth=4, mixer=mix, mixer_kwargs=[{"qkv_bias": False}, {"expand": 1}])
    assert [b.attn.qkv.bias is None for b in m.blocks[::2]] == [True, True]
    assert [b.attn.expand for b in m.blocks[1::2]] == [1, 1]
    # keys of registered mixers the model does not use are ignored (one params section, many variants)
    m = create_model("DiT-M/8", depth=2, mixer_kwargs={"pom": {"degree": 3}, "attention": {"qkv_bias": False}})
    assert all(b.attn.qkv.bias is None for b in m.blocks)


def test_mixer_kwargs_forms_build_identical_models():
    """The same per-block kwargs in every form give the same weights as the flat default."""
    mix = ["attention", "pom"]
    flat = _weights(mixer=mix, mixer_kwargs={"degree": 3})
    assert _same(_weights(mixer=mix, mixer_kwargs={"pom": {"degree": 3}}), flat)
    assert _same(_weights(mixer=mix, mixer_kwargs=[{}, {"degree": 3}]), flat)
    assert not _same(_weights(mixer=mix, mixer_kwargs={"degree": 2}), flat)


@pytest.mark.parametrize("kwargs, message", [
    ([{"degree": 2}] * 3, r"mixer_kwargs: a list of 3 dicts does not tile 4 blocks"),
    ([], r"mixer_kwargs: a list of 0 dicts does not tile 4 blocks"),
    ({"pmo": {"degree": 2}}, r"mixer_kwargs: unknown mixer key 'pmo' \(known mixers: attention, pom"),
    ({"attention": {}, "sla": {"topk": 4}}, r"unknown mixer key 'sla'"),
    ({"pom": {"degree": 2}, "expand": 2}, r"mixer_kwargs mixes per-mixer dicts \(pom\) with plain arguments \(expand\)"),
    ([{"degree": 2}, 2], r"mixer_kwargs\[1\] must be a dict of mixer arguments, got int"),
    ("degree=2", r"mixer_kwargs must be a dict or a list of dicts, got str"),
])
def test_bad_per_block_mixer_kwargs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_model("DiT-M/8", depth=4, mixer=["attention", "pom"], mixer_kwargs=kwargs)


# ---- FLOPs at a chosen timestep ------------------------------------------------------------------------
@pytest.mark.parametrize("mixer", ["attention", "pom"])
def test_static_models_cost_the_same_at_every_t(mixer):
    model = create_model("DiT-M/4", mixer=mixer, **TINY)
    at = [model_flops(model, t=t)["flops"] for t in (0.0, 500.0, 999.0)]
    assert at[0] > 0 and at == [at[0]] * 3
    assert model_flops(model)["flops"] == at[0]


def test_dynamic_block_costs_differ_per_t():
    d, n = 32, 64  # hidden size, tokens of DiT-M/4 at 32 px
    model = create_model("DiT-M/4", block=SkipMlpLateBlock, **TINY)
    early, late = model_flops(model, t=100.0)["flops"], model_flops(model, t=900.0)["flops"]
    assert early - late == TINY["depth"] * 2 * (2 * n * d * 4 * d)  # the skipped MLPs: 2 matmuls, 2 FLOPs/MAC
    mixed = model_flops(model, batch=2, t=torch.tensor([100.0, 900.0]))  # one sample needs the MLP
    assert mixed["flops"] == 2 * early
    static = create_model("DiT-M/4", **TINY)
    assert model_flops(static, t=100.0)["flops"] == early
