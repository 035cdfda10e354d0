"""Sample-quality metrics on feature vectors: FID, KID, precision/recall, class consistency.

Everything here works on (N, d) feature arrays so that the feature space is a separate choice
(`mnist-cnn` at toy scale, Inception where its weights can be had). Statistics are float64.

- FID: Frechet distance between Gaussians fitted to the two feature sets (Heusel et al. 2017).
  `fid_torchmetrics` and `fid_cleanfid` compute the same number through those libraries; the tests
  assert all three agree.
- KID: unbiased MMD^2 with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3, averaged over random
  subsets (Binkowski et al. 2018).
- Precision / recall: k-NN manifolds (Kynkaanniemi et al. 2019, k = 3).
"""
from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import numpy as np
from scipy import linalg

from common.errors import UserError


class MetricsError(UserError, RuntimeError):
    """A metric that cannot be computed (bad shapes, missing weights); the message says why and the fix."""


def _as_features(f, name: str) -> np.ndarray:
    f = np.asarray(f.detach().cpu() if hasattr(f, "detach") else f, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise MetricsError(f"{name} must be (N, d) features with N >= 2; got shape {f.shape}")
    return f


def feature_stats(f) -> tuple[np.ndarray, np.ndarray]:
    """Mean (d,) and unbiased covariance (d, d) in float64."""
    f = _as_features(f, "features")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), float64.

    Stability: if sqrtm of S1 S2 is not finite (near-singular product), retry with eps added to both
    diagonals; a small imaginary part from round-off is dropped, a large one is an error.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (len(mu1), len(mu1)):
        raise MetricsError(f"FID statistics disagree in shape: mu {mu1.shape} vs {mu2.shape}, "
                           f"sigma {s1.shape} vs {s2.shape}")
    diff = mu1 - mu2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy warns on near-singular input; we check below
        covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(mu1)) * eps
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise MetricsError(f"FID: sqrtm has a large imaginary part ({np.abs(covmean.imag).max():.3g})")
        covmean = covmean.real
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def fid_from_features(f_real, f_fake) -> float:
    """FID between two (N, d) feature sets."""
    return frechet_distance(*feature_stats(f_real), *feature_stats(f_fake))


def fid_from_stats(ref: dict, f_fake) -> float:
    """FID of fake features against stored reference statistics {"mu", "sigma"}."""
    return frechet_distance(ref["mu"], ref["sigma"], *feature_stats(f_fake))


def fid_cleanfid(f_real, f_fake) -> float:
    """The same FID computed by clean-fid's `fid_from_feats` on the same features (cross-check)."""
    from cleanfid import fid as cfid

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # newer scipy deprecates the `disp` argument clean-fid passes
        return float(cfid.fid_from_feats(_as_features(f_real, "f_real"), _as_features(f_fake, "f_fake")))


def fid_torchmetrics(feature_net, real_images, fake_images, batch_size: int = 500) -> float:
    """FID through `torchmetrics.image.fid.FrechetInceptionDistance(feature=feature_net)` (cross-check).

    `feature_net` maps a batch of images to (B, d) features (e.g. `FeatNet`); images are passed as given.
    """
    import torch
    from torchmetrics.image.fid import FrechetInceptionDistance

    # its sums are float64 already; no set_dtype (that would also cast feature_net's weights)
    metric = FrechetInceptionDistance(feature=feature_net, reset_real_features=True)
    for imgs, real in ((real_images, True), (fake_images, False)):
        imgs = torch.as_tensor(np.asarray(imgs))
        for i in range(0, len(imgs), batch_size):
            metric.update(imgs[i:i + batch_size], real=real)
    return float(metric.compute())


def kid(f_real, f_fake, num_subsets: int = 50, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance: mean and std over subsets of the unbiased MMD^2 estimate.

    Kernel k(x, y) = (x.y / d + 1)^3. Each subset draws m = min(subset_size, N_real, N_fake) points
    from each set without replacement; the seed makes it deterministic.
    """
    x_all, y_all = _as_features(f_real, "f_real"), _as_features(f_fake, "f_fake")
    d = x_all.shape[1]
    m = min(subset_size, len(x_all), len(y_all))
    rng = np.random.default_rng(seed)
    vals = np.empty(num_subsets)
    for s in range(num_subsets):
        x = x_all[rng.choice(len(x_all), m, replace=False)]  # (m, d)
        y = y_all[rng.choice(len(y_all), m, replace=False)]  # (m, d)
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        off = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        vals[s] = off - 2.0 * kxy.mean()
    return float(vals.mean()), float(vals.std())


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise squared Euclidean distances (len(a), len(b)), clipped at 0."""
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def _knn_radii(f: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """Squared distance of each point to its k-th nearest neighbour in the same set (self excluded)."""
    radii = np.empty(len(f))
    for i in range(0, len(f), chunk):
        d = _sq_dists(f[i:i + chunk], f)                     # (c, N)
        radii[i:i + chunk] = np.partition(d, k, axis=1)[:, k]  # index 0 is the point itself (distance 0)
    return radii


def _coverage(f_query: np.ndarray, f_manifold: np.ndarray, radii: np.ndarray, chunk: int = 1024) -> float:
    """Share of query points inside at least one k-NN ball of the manifold set."""
    inside = np.empty(len(f_query), dtype=bool)
    for i in range(0, len(f_query), chunk):
        d = _sq_dists(f_query[i:i + chunk], f_manifold)      # (c, M)
        inside[i:i + chunk] = (d <= radii[None, :]).any(axis=1)
    return float(inside.mean())


def precision_recall(f_real, f_fake, k: int = 3, max_samples: int | None = None, seed: int = 0) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019).

    precision = share of fakes inside the real manifold (union of k-NN balls around real points),
    recall = share of reals inside the fake manifold. Both sets are subsampled (seeded) to the same
    size, min(N_real, N_fake, max_samples), because the manifold estimate depends on the set size.
    """
    real, fake = _as_features(f_real, "f_real"), _as_features(f_fake, "f_fake")
    n = min(len(real), len(fake), max_samples or len(real))
    if n <= k:
        raise MetricsError(f"precision/recall with k={k} needs more than {k} samples per set; got {n}")
    rng = np.random.default_rng(seed)
    if len(real) > n:
        real = real[np.sort(rng.choice(len(real), n, replace=False))]
    if len(fake) > n:
        fake = fake[np.sort(rng.choice(len(fake), n, replace=False))]
    precision = _coverage(fake, real, _knn_radii(real, k))
    recall = _coverage(real, fake, _knn_radii(fake, k))
    return precision, recall


def class_consistency(predicted, conditioning) -> float:
    """Share of conditional samples that the classifier labels as their conditioning class."""
    p, c = np.asarray(predicted).reshape(-1), np.asarray(conditioning).reshape(-1)
    if p.shape != c.shape or p.size == 0:
        raise MetricsError(f"class_consistency needs equal, non-empty label arrays; got {p.shape} and {c.shape}")
    return float((p == c).mean())


# ----------------------------------------------------------------------------------------------------
# Inception feature space (paper-comparable numbers; needs the weights, which are not bundled)

INCEPTION_SPACE = "inception"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_ENV = "DIFFREPRO_INCEPTION_WEIGHTS"



KID_SUBSETS, KID_SUBSET_SIZE, PR_K = 50, 1000, 3  # the evaluate stages' protocol


def image_metrics(images: np.ndarray, labels, net, ref: dict, space: str, featnet_id: str):
    """(metrics, predicted classes or None): FID, KID, precision/recall and class-consistency of uint8
    images (M, H, W, C) against the reference statistics `ref` (mu, sigma, features) in the feature space
    of `net`, beside their protocol. `labels` (M,) are the asked classes (None: unconditional); a net
    without `classify` (Inception) leaves class consistency null. Shared by the evaluate stages."""
    feats = net.extract(images)                                 # (M, d)
    pred = net.classify(images) if hasattr(net, "classify") else None  # (M,)
    out = {"fid": frechet_distance(ref["mu"], ref["sigma"], *feature_stats(feats))}
    out["kid"], out["kid_std"] = kid(ref["features"], feats, KID_SUBSETS, KID_SUBSET_SIZE)
    out["precision"], out["recall"] = precision_recall(ref["features"], feats, k=PR_K)
    out["class_consistency"] = None if labels is None or pred is None else class_consistency(pred, labels)
    out.update({"fid_features": space, "fid_samples": int(len(images)),
                "reference": str(ref.get("reference", "mnist5k/train")), "reference_samples": int(len(ref["features"])),
                "featnet": featnet_id, "kid_subsets": KID_SUBSETS,
                "kid_subset_size": int(min(KID_SUBSET_SIZE, len(images), len(ref["features"]))), "pr_k": PR_K})
    return out, pred

def find_inception_weights(weights_path: str | None = None, search_dirs=()) -> str | None:
    """A local file of torch-fidelity's InceptionV3 weights, or None: `weights_path` (which must exist),
    $DIFFREPRO_INCEPTION_WEIGHTS, `<dir>/weights-inception-2015-12-05-6726825d.pth` for each of
    `search_dirs`, then the torch hub cache."""
    import torch

    if weights_path:
        if not Path(weights_path).is_file():
            raise MetricsError(f"Inception weights '{weights_path}' not found")
        return str(weights_path)
    candidates = [os.environ.get(INCEPTION_ENV), *(Path(d) / INCEPTION_FILE for d in search_dirs),
                  Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE]
    return next((str(c) for c in candidates if c and Path(c).is_file()), None)


class InceptionNet:
    """torch-fidelity's TF-ported InceptionV3, the network behind torchmetrics' FID and ADM's evaluator:
    uint8 images (N, H, W[, C]) -> 2048-d pool features (N, 2048) float64 (grey is repeated to RGB,
    resizing to 299 happens inside). `weights_path=None` downloads the weights (needs a network)."""

    def __init__(self, weights_path: str | None = None, batch_size: int = 100):
        import torch
        from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3, FeatureExtractorInceptionV3

        try:
            self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                                   feature_extractor_weights_path=weights_path)
        except Exception as e:
            raise MetricsError(
                f"Inception weights are not available ({type(e).__name__}: {(str(e).splitlines() or [''])[0]}). "
                f"The 'inception' feature space needs {URL_INCEPTION_V3}; download it where there is a network "
                f"and pass its path or set "
                f"${INCEPTION_ENV}, or put it in {Path(torch.hub.get_dir()) / 'checkpoints'}. "
                f"The 'mnist-cnn' feature space needs no download.") from e
        self.batch_size = batch_size

    def extract(self, images) -> np.ndarray:
        import torch

        x = torch.as_tensor(np.asarray(images))
        if x.dtype != torch.uint8:
            raise MetricsError(f"Inception features need uint8 images; got {x.dtype}")
        if x.dim() == 3:
            x = x[..., None]                                 # (N, H, W, 1)
        x = x.permute(0, 3, 1, 2)                            # (N, C, H, W)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)                      # (N, 3, H, W)
        with torch.no_grad():
            out = [self.net(x[i:i + self.batch_size].contiguous())[0] for i in range(0, len(x), self.batch_size)]
        return torch.cat(out).double().numpy()               # (N, 2048)


def inception_features(images, weights_path: str | None = None, batch_size: int = 100) -> np.ndarray:
    """2048-d pool features of torch-fidelity's InceptionV3 (the ADM/torch-fidelity convention).

    Weights come from `weights_path`, $DIFFREPRO_INCEPTION_WEIGHTS, or the torch hub cache; otherwise a
    download is attempted, and offline this stops with a message saying so.
    """
    return InceptionNet(find_inception_weights(weights_path), batch_size).extract(images)


def load_reference(path: str | Path, net) -> dict:
    """Reference statistics of real data in `net`'s feature space: an `.npz` holding mu, sigma and the
    raw features, or a reference batch of uint8 images `arr_0` (ADM's evaluation format, e.g.
    VIRTUAL_imagenet256_labeled.npz), whose features `net.extract` computes here."""
    path = Path(path)
    if not path.is_file():
        raise MetricsError(f"reference statistics '{path}' not found. Fix: put there an .npz with mu, sigma "
                           f"and features, or a reference batch of images (arr_0, e.g. ADM's)")
    with np.load(path) as z:
        if {"mu", "sigma", "features"} <= set(z.files):
            return {"mu": z["mu"], "sigma": z["sigma"], "features": z["features"], "reference": path.name}
        if "arr_0" not in z.files:
            raise MetricsError(f"reference statistics '{path}' hold neither mu, sigma, features nor arr_0 "
                               f"(keys: {z.files})")
        images = z["arr_0"]
    feats = net.extract(images)                              # (N, d)
    mu, sigma = feature_stats(feats)
    return {"mu": mu, "sigma": sigma, "features": feats, "reference": path.name}


# ----------------------------------------------------------------------------------------------------

def bench_fid(n: int = 2000, featnet: str | Path = "data/featnet") -> dict:
    """Time feature extraction + FID (+ KID, P/R) for n real mnist5k digits against the reference stats.

    Uses the trained `mnist-cnn` from `featnet` when present, else a randomly initialised one and the
    reference computed on the fly (the timing is the same; the numbers are then meaningless).
    """
    import torch

    from common.data import mnist5k_split

    from .featnet import (
        FeatNet,
        FeatNetConfig,
        FeatNetError,
        MnistCNN,
                load_featnet,
        load_ref_stats,
    )

    X, _ = mnist5k_split("all")                                   # sorted by class: draw a shuffled subset
    X = X[np.resize(np.random.default_rng(0).permutation(len(X)), n)]  # (n, 32, 32) uint8, repeats if n > 5000
    try:
        net, ref, trained = load_featnet(featnet), load_ref_stats(featnet), True
    except FeatNetError:
        torch.manual_seed(0)
        cfg = FeatNetConfig()
        net, trained = FeatNet(MnistCNN(cfg.channels, cfg.feat_dim), cfg), False
        ref_feats = net.extract(mnist5k_split("train")[0])
        ref = dict(zip(("mu", "sigma"), feature_stats(ref_feats)), features=ref_feats)
    t0 = time.perf_counter()
    feats = net.extract(X)                                   # (n, d)
    t1 = time.perf_counter()
    fid = fid_from_stats(ref, feats)
    t2 = time.perf_counter()
    kid_mean, _ = kid(ref["features"], feats)
    t3 = time.perf_counter()
    prec, rec = precision_recall(ref["features"], feats)
    t4 = time.perf_counter()
    return {"seconds": round(t4 - t0, 3), "n": n, "extract_seconds": round(t1 - t0, 3),
            "fid_seconds": round(t2 - t1, 3), "kid_seconds": round(t3 - t2, 3), "pr_seconds": round(t4 - t3, 3),
            "fid": fid, "kid": kid_mean, "precision": prec, "recall": rec, "trained_featnet": trained,
            "threads": torch.get_num_threads()}
