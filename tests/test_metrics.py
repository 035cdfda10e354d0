"""Metrics: FID agrees with torchmetrics and clean-fid, KID/PR/class-consistency sanity, the feature
network's input handling and save/load, the metrics.json schema and the claim verdicts."""
import numpy as np
import pytest
import torch

from common.data import mnist5k_split
from common.metrics import (
    FeatNet,
    FeatNetConfig,
    MnistCNN,
    class_consistency,
    feature_stats,
    fid_cleanfid,
    fid_from_features,
    fid_torchmetrics,
    frechet_distance,
    kid,
    load_featnet,
    precision_recall,
    save_featnet,
    temporal_consistency,
    validate_metrics,
)
from common.metrics.featnet import _random_shift


@pytest.fixture(scope="module")
def digits():
    X, y = mnist5k_split("heldout")                  # uint8 (500, 32, 32), sorted by class: shuffle
    idx = np.random.default_rng(0).permutation(len(y))
    return X[idx], y[idx]


@pytest.fixture(scope="module")
def tiny_net():
    torch.manual_seed(0)
    cfg = FeatNetConfig(channels=(8, 16, 16), feat_dim=16)
    return FeatNet(MnistCNN(cfg.channels, cfg.feat_dim), cfg)


def _blurred(X):
    """A visibly different distribution: digits shifted by 3 px and dimmed."""
    return (np.roll(X, 3, axis=2).astype(np.float32) * 0.6).astype(np.uint8)


def test_fid_agrees_with_torchmetrics_and_cleanfid(digits, tiny_net):
    X, _ = digits
    real = X[:250, ..., None]                        # (250, 32, 32, 1) uint8 NHWC
    fake = _blurred(X[250:])[..., None]
    f_real, f_fake = tiny_net.extract(real), tiny_net.extract(fake)
    ours = fid_from_features(f_real, f_fake)
    assert ours > 0
    tm = fid_torchmetrics(tiny_net, real, fake, batch_size=100)
    cf = fid_cleanfid(f_real, f_fake)
    assert ours == pytest.approx(tm, rel=1e-4)
    assert ours == pytest.approx(cf, rel=1e-4)


def test_frechet_distance_closed_form():
    # N(mu1, I) vs N(mu2, 4I) in d dims: |mu1 - mu2|^2 + d (1 + 4 - 2 * 2)
    d = 5
    mu1, mu2 = np.zeros(d), np.arange(d, dtype=float)
    assert frechet_distance(mu1, np.eye(d), mu2, 4 * np.eye(d)) == pytest.approx(30.0 + d, rel=1e-10)


def test_fid_self_is_zero_and_different_sets_are_not(digits, tiny_net):
    X, _ = digits
    f = tiny_net.extract(X)
    assert abs(fid_from_features(f, f)) < 1e-6 * np.trace(feature_stats(f)[1])
    same = fid_from_features(f[::2], f[1::2])        # two halves of the same distribution
    other = fid_from_features(f[::2], tiny_net.extract(_blurred(X[1::2])))
    assert other > 3 * same > 0


def test_kid_matches_cleanfid_on_full_sets_and_separates():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(120, 8)), rng.normal(size=(120, 8))
    c = rng.normal(loc=1.0, size=(120, 8))
    from cleanfid.fid import kernel_distance

    # with subsets as large as the sets, every subset is the whole set: the estimate is exact
    ours, _ = kid(a, c, num_subsets=3, subset_size=1000)
    theirs = kernel_distance(a, c, num_subsets=3, max_subset_size=1000)
    assert ours == pytest.approx(theirs, rel=1e-9)
    same, _ = kid(a, b, num_subsets=20, subset_size=60)
    shifted, _ = kid(a, c, num_subsets=20, subset_size=60)
    assert abs(same) < 0.1 * shifted


def test_precision_recall_sanity():
    rng = np.random.default_rng(1)
    real = rng.normal(size=(300, 4))
    assert precision_recall(real, real, k=3) == (1.0, 1.0)
    far = precision_recall(real, real + 100.0, k=3)
    assert far == (0.0, 0.0)
    collapsed = real[rng.choice(20, 300)] + 1e-3 * rng.normal(size=(300, 4))  # copies of 20 reals
    p, r = precision_recall(real, collapsed, k=3)
    assert p > 0.95 and r < 0.3


def test_class_and_temporal_consistency():
    assert class_consistency([0, 1, 2, 3], [0, 1, 2, 0]) == 0.75
    assert temporal_consistency([[1, 1, 1, 2], [3, 3, 3, 3]]) == pytest.approx(5 / 6)
    with pytest.raises(Exception, match="equal"):
        class_consistency([0, 1], [0])


def test_featnet_layouts_and_roundtrip(digits, tiny_net, tmp_path):
    X, _ = digits
    X = X[:16]
    f = tiny_net.extract(X)                          # (N, H, W)
    assert f.shape == (16, 16) and f.dtype == np.float64
    np.testing.assert_allclose(tiny_net.extract(X[..., None]), f)              # NHWC
    np.testing.assert_allclose(tiny_net.extract(torch.from_numpy(X)[:, None]), f)  # NCHW uint8
    as_float = torch.from_numpy(X)[:, None].float() / 127.5 - 1                  # NCHW float [-1, 1]
    np.testing.assert_allclose(tiny_net.extract(as_float), f, rtol=1e-5, atol=1e-6)
    rgb = np.repeat(X[..., None], 3, axis=-1)                                    # grey as RGB
    np.testing.assert_allclose(tiny_net.extract(rgb), f, rtol=1e-5, atol=1e-6)
    save_featnet(tiny_net, tmp_path / "mnist-cnn.pt")
    ck = torch.load(tmp_path / "mnist-cnn.pt", weights_only=True)
    assert ck["config"]["feat_dim"] == 16
    loaded = load_featnet(tmp_path)
    np.testing.assert_array_equal(loaded.extract(X), f)
    labels = loaded.classify(X)
    assert labels.shape == (16,) and labels.dtype == np.int64


def test_load_featnet_missing_names_file(tmp_path):
    with pytest.raises(Exception, match="mnist-cnn.pt"):
        load_featnet(tmp_path)


def test_random_shift_keeps_the_digit():
    X, _ = mnist5k_split("heldout")
    x = torch.from_numpy(X[:32]).float()[:, None] / 127.5 - 1  # digits are padded by 2 px
    y = _random_shift(x, 2, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and not torch.equal(x, y)
    torch.testing.assert_close((y + 1).sum(dim=(1, 2, 3)), (x + 1).sum(dim=(1, 2, 3)))


def _good_doc():
    return {
        "paper": "dit", "title": "Scalable Diffusion Models with Transformers", "arxiv": "2212.09748",
        "preset": "tiny", "dataset": "mnist5k", "toy_scale": True,
        "rows": [{"variant": "sit", "fid": 12.3, "fid_std": 0.4, "fid_features": "mnist-cnn",
                  "fid_samples": 2000, "kid": 0.01, "precision": 0.8, "recall": 0.7,
                  "class_consistency": 0.93, "params": 1300000, "gflops": 0.12, "train_steps": 4000,
                  "train_img_per_s": 300.0, "sample_s_per_img": 0.01, "seeds": [0, 1, 2],
                  "sampler": "euler", "sample_steps": 50, "cfg_scale": 2.0, "ema": True,
                  "thumbnail": "papers/dit/results/sit_grid.png", "gflops_note": None}],
        "claims": [{"claim": "SiT beats DiT", "paper": "Table 1", "measured": "12.3 vs 14.0",
                    "verdict": "reproduced", "compares": ["sit", "dit"], "rule": "better: one-sided Welch",
                    "gate": {"passed": True, "detail": "sit class-consistency 0.93 >= 0.8"},
                    "values": {"sit": [12.0, 12.3, 12.6], "dit": [13.5, 14.0, 14.5]}}],
        "notebooks": {"samples": "papers/dit/results/notebooks/samples.html"},
    }


def test_schema_accepts_good_document():
    assert validate_metrics(_good_doc()) == []
    minimal = {k: v for k, v in _good_doc().items() if k not in ("claims", "notebooks", "toy_scale")}
    minimal["rows"] = [{"variant": "sit", "fid": 1.0, "fid_features": "mnist-cnn", "kid": None}]
    assert validate_metrics(minimal) == []


@pytest.mark.parametrize("edit, expected", [
    (lambda d: d.pop("arxiv"), "missing key 'arxiv'"),
    (lambda d: d.update(arxiv="abc"), "'arxiv' must look like"),
    (lambda d: d["rows"][0].pop("fid"), "missing key 'fid'"),
    (lambda d: d["rows"][0].update(fid=float("nan")), "'fid' must be a finite number"),
    (lambda d: d["rows"][0].update(precision=1.5), "'precision' must lie in [0, 1]"),
    (lambda d: d["rows"][0].update(seeds=[0, "1"]), "'seeds' must be"),
    (lambda d: d["rows"][0].update(thumbnail="/abs/sit.png"), "'thumbnail' must be relative"),
    (lambda d: d["rows"].append(dict(d["rows"][0])), "duplicate variant"),
    (lambda d: d["claims"][0].update(verdict="yes"), "'verdict' must be one of"),
    (lambda d: d["notebooks"].update(x="../x.html"), "notebooks['x']"),
    (lambda d: d.update(rows=[]), "'rows' is empty"),
])
def test_schema_rejects_bad_documents(edit, expected):
    d = _good_doc()
    edit(d)
    problems = validate_metrics(d)
    assert any(expected in p for p in problems), problems
    assert validate_metrics([1, 2]) != []


