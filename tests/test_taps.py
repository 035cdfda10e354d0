"""common.models.taps: block outputs and attention logits collected by hooks equal a forward by hand,
the model's return value is unchanged, and the same holds through a DDP wrapper."""
import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from common.mixers import MixerContext
from common.models import create_model
from common.models.taps import Taps


def manual_forward(model, x, t, y):
    """Every block's output and the attention logits by hand with the DiT API (embed, condition,
    block(h, cond, ctx))."""
    ctx = MixerContext(frames=1, height=model.grid, width=model.grid, attn_logits=[])
    h = model.embed(x)  # (B, N, D)
    c = model.condition(t, y, h.shape[1])  # Cond
    feats = []
    for block in model.blocks:
        h = block(h, c, ctx)
        feats.append(h)
    return feats, ctx.attn_logits


def _model(**kw):
    torch.manual_seed(0)
    model = create_model("DiT-M/8", depth=4, hidden_size=32, **kw).eval()
    with torch.no_grad():  # non-zero adaLN gates: every block changes its input
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.2)
    return model


def _inputs():
    return torch.randn(3, 1, 32, 32), torch.tensor([10.0, 500.0, 990.0]), torch.tensor([1, 4, 7])


def test_taps_equal_a_manual_forward():
    model, (x, t, y) = _model(), _inputs()
    with torch.no_grad():
        plain = model(x, t, y)
        feats, logits = manual_forward(model, x, t, y)
        with Taps(model, blocks=(0, 2, -1), attn_logits=True) as taps:
            out = model(x, t, y)
    assert isinstance(out, torch.Tensor) and torch.equal(out, plain)    # return type and value unchanged
    assert sorted(taps.features) == [0, 2, 3]
    for i, h in taps.features.items():
        assert h.shape == (3, 16, 32) and torch.equal(h, feats[i])
    assert sorted(taps.attn_logits) == [0, 1, 2, 3]
    for i, a in taps.attn_logits.items():
        assert a.shape == (3, 4, 16, 16) and torch.equal(a, logits[i])
    assert torch.equal(taps.input, x) and torch.equal(taps.output, plain)
    # hooks are gone after the block: nothing is collected any more
    n_feats = dict(taps.features)
    with torch.no_grad():
        model(x + 1, t, y)
    assert all(torch.equal(taps.features[i], n_feats[i]) for i in n_feats)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_taps_keep_the_graph_and_skip_mixers_without_maps():
    model, (x, t, y) = _model(mixer=["attention", "pom"]), _inputs()  # hybrid: PoM computes no attention map
    with Taps(model, blocks=(1,), attn_logits=True) as taps:
        model(x, t, y)
    assert sorted(taps.attn_logits) == [0, 2]
    taps.features[1].pow(2).mean().backward()                           # a loss on a tapped feature trains
    assert next(model.blocks[1].attn.parameters()).grad is not None
    assert model.blocks[3].mlp.fc1.weight.grad is None                  # blocks after the tap: no gradient


def test_taps_on_a_caller_provided_attention_list():
    """A caller that already collects logits in its own ctx list keeps them; the tap sees the same tensors."""
    model, (x, t, y) = _model(), _inputs()
    ctx = MixerContext(frames=1, height=model.grid, width=model.grid, attn_logits=[])
    with torch.no_grad(), Taps(model, attn_logits=True) as taps:
        model(x, t, y, ctx=ctx)
    assert len(ctx.attn_logits) == 4 and all(taps.attn_logits[i] is ctx.attn_logits[i] for i in range(4))


def test_taps_through_ddp(tmp_path):
    if dist.is_initialized():
        pytest.skip("a process group is already initialised")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        model, (x, t, y) = _model(), _inputs()
        feats, _ = manual_forward(model, x, t, y)
        wrapped = DDP(model)
        with Taps(wrapped, blocks=(1,), attn_logits=True) as taps:
            out = wrapped(x, t, y)
        assert torch.equal(taps.features[1], feats[1]) and torch.equal(taps.output, out)
        assert sorted(taps.attn_logits) == [0, 1, 2, 3]
    finally:
        dist.destroy_process_group()


def test_bad_block_index():
    with pytest.raises(IndexError, match="block index 4 is out of range for a model with 4 blocks"):
        Taps(_model(), blocks=(4,))
