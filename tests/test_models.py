"""common.models: the DiT registry matches the official parameter counts; adaLN-Zero, frozen positions,
learned sigma, attention logits, FLOPs; the `paper` preset of papers/dit still builds."""
from pathlib import Path

import pytest
import torch

from common.config import load_params, resolve
from common.flops import model_flops
from common.mixers import MixerContext
from common.models import MODELS, PAPER_SIZES, count_params, create_model
from common.nn import sincos_2d

ROOT = Path(__file__).resolve().parent.parent

# Totals of the official facebookresearch/DiT models (frozen pos_embed included).
OFFICIAL_PARAMS = {
    "DiT-S/8": 33_148_160, "DiT-S/4": 32_945_024, "DiT-S/2": 32_963_360,
    "DiT-B/8": 130_881_536, "DiT-B/4": 130_475_648, "DiT-B/2": 130_512_416,
    "DiT-L/8": 458_594_816, "DiT-L/4": 458_053_760, "DiT-L/2": 458_102_816,
    "DiT-XL/8": 675_683_072, "DiT-XL/4": 675_074_432, "DiT-XL/2": 675_129_632,
}

# DiT paper Table 4 "Gflops" (multiply-adds per forward pass at 256 px).
PAPER_GFLOPS = {
    "DiT-S/8": 0.36, "DiT-S/4": 1.41, "DiT-S/2": 6.06, "DiT-B/8": 1.42, "DiT-B/4": 5.56, "DiT-B/2": 23.01,
    "DiT-L/8": 5.01, "DiT-L/4": 19.70, "DiT-L/2": 80.71, "DiT-XL/8": 7.39, "DiT-XL/4": 29.05, "DiT-XL/2": 118.64,
}

TINY = dict(depth=2, hidden_size=32, num_heads=2)


def test_registry_holds_every_paper_size():
    expected = {f"DiT-{s}/{p}" for s in PAPER_SIZES for p in (2, 4, 8)}
    assert expected == set(OFFICIAL_PARAMS)
    assert expected <= set(MODELS)


@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAMS))
def test_paper_param_counts_and_gflops(name):
    with torch.device("meta"):  # no memory, no init cost; FLOPs need shapes only
        model = create_model(name)
    assert count_params(model) == OFFICIAL_PARAMS[name]
    # the paper's "Gflops" are multiply-adds (DiT Table 4); attention's QK^T and AV must be counted
    assert model_flops(model)["gmacs"] == pytest.approx(PAPER_GFLOPS[name], rel=2e-3, abs=6e-3)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert frozen == model.pos_embed.numel()  # only the position embedding is frozen
    assert (model.in_channels, model.input_size, model.num_classes, model.out_channels) == (4, 32, 1000, 8)


def test_unknown_model_name():
    with pytest.raises(KeyError, match="unknown model 'DiT-Q/3'"):
        create_model("DiT-Q/3")


def _inputs(model, b=3):
    x = torch.randn(b, model.in_channels, model.input_size, model.input_size)
    t = torch.rand(b) * 1000
    y = torch.randint(0, model.num_classes, (b,))
    return x, t, y


def test_adaln_zero_fresh_model_outputs_zero():
    model = create_model("DiT-M/4")
    out = model(*_inputs(model))
    assert out.shape == (3, 2, 32, 32)
    assert torch.count_nonzero(out) == 0
    for block in model.blocks:  # the residual branches are gated shut at init
        assert torch.count_nonzero(block.adaLN_modulation[-1].weight) == 0
    # ... yet gradients reach the gates (adaLN-Zero trains, unlike a dead zero init)
    out.sum().backward()
    assert model.final_layer.linear.weight.grad.abs().sum() > 0


def test_pos_embed_frozen_sincos():
    model = create_model("DiT-M/4", **TINY)
    pe = model.pos_embed
    assert not pe.requires_grad
    assert "pos_embed" in model.state_dict()
    ref = torch.from_numpy(sincos_2d(32, 8)).float()
    assert torch.equal(pe[0], ref)
    torch.nn.init.normal_(model.final_layer.linear.weight)  # make the output depend on the input
    model(*_inputs(model)).sum().backward()
    assert pe.grad is None
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad and "y_embedder" not in n)


def test_learn_sigma_doubles_channels():
    for ls, ch in ((True, 2), (False, 1)):
        model = create_model("DiT-M/4", learn_sigma=ls, **TINY)
        assert model.out_channels == ch
        assert model(*_inputs(model)).shape == (3, ch, 32, 32)
    model = create_model("DiT-M/8", in_channels=3, **TINY)
    assert model(*_inputs(model)).shape == (3, 6, 32, 32)


def test_label_dropout_row():
    model = create_model("DiT-M/4", **TINY)
    table = model.y_embedder.embedding_table
    assert table.num_embeddings == model.num_classes + 1  # the "null" class for CFG
    y = torch.tensor([3, 3])
    emb = model.y_embedder(y, train=False, force_drop_ids=torch.tensor([0, 1]))
    assert torch.equal(emb[0], table.weight[3]) and torch.equal(emb[1], table.weight[model.num_classes])


def _paper_configs():
    params = load_params(ROOT / "papers" / "dit" / "params.yaml")
    return [(v, resolve(params, "dit", v, {"preset": "paper", "model": {"overrides": {"depth": 1}}}))
            for v in params["variants"]]


PAPER_CONFIGS = _paper_configs()
VARIANTS = [v for v, _ in PAPER_CONFIGS]


@pytest.mark.parametrize("variant, cfg", PAPER_CONFIGS, ids=VARIANTS)
def test_paper_preset_builds_at_reduced_size(variant, cfg):
    from common import data
    from common.train import build_model

    info = data.info(cfg.data.name)
    model = build_model(cfg, info)  # as the training loop builds it
    assert len(model.blocks) == 1
    assert (model.in_channels, model.input_size, model.num_classes) == (info.channels, info.size, info.num_classes)
    assert (info.channels, info.size, info.num_classes) == (4, 32, 1000)  # ImageNet-256 SD-VAE latents
    out = model(torch.randn(2, 4, 32, 32), torch.tensor([10.0, 900.0]), torch.tensor([0, 999]))
    exp_ch = 8 if (cfg.diffusion.objective == "flow" or cfg.diffusion.learn_sigma) else 4
    assert out.shape == (2, exp_ch, 32, 32)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("variant, cfg", PAPER_CONFIGS, ids=VARIANTS)
def test_paper_preset_uses_a_paper_size(variant, cfg):
    assert cfg.model.name in OFFICIAL_PARAMS


def test_flops_match_hand_count_of_linear_layers():
    """Forward FLOPs of a DiT with depth 1 are dominated by its matmuls; check against a hand count."""
    d, n, p, c = 32, 64, 4, 1
    model = create_model("DiT-M/4", depth=1, hidden_size=d, num_heads=2, learn_sigma=False)
    f = model_flops(model)
    macs = (n * (p * p * c) * d          # patch embedding
            + n * d * 3 * d + n * d * d  # qkv + proj
            + 2 * n * n * d              # q k^T and attn v
            + 2 * n * d * 4 * d          # MLP
            + n * d * p * p * c          # final linear
            + (256 * d + d * d)          # timestep MLP
            + d * 6 * d + d * 2 * d)     # adaLN modulations
    assert f["flops"] == 2 * macs
    assert f["gmacs"] == pytest.approx(macs / 1e9)


def test_attention_logits_through_ctx():
    model = create_model("DiT-M/4", depth=3, hidden_size=32, num_heads=2)
    x, t, y = _inputs(model, 2)
    ctx = MixerContext(frames=1, height=model.grid, width=model.grid, attn_logits=[])
    out = model(x, t, y, ctx=ctx)
    assert out.shape == (2, 2, 32, 32)
    assert len(ctx.attn_logits) == 3 and all(a.shape == (2, 2, 64, 64) for a in ctx.attn_logits)
    assert torch.equal(model(x, t, y), out)  # collecting logits does not change the output


def test_per_frame_timesteps_video_shape():
    model = create_model("DiT-M/8", frames=3, **TINY)
    x = torch.randn(2, 3, 1, 32, 32)
    out = model(x, torch.rand(2, 3) * 1000, torch.tensor([1, 2]))
    assert out.shape == (2, 3, 2, 32, 32)
