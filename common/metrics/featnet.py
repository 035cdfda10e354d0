"""The `mnist-cnn` feature space: a small CNN classifier trained on mnist5k whose 128-d penultimate
activations stand in for Inception features at toy scale (Inception features of 32 px grey digits
say little; a digit classifier's features separate digit shape and style).

- `MnistCNN`: 3 conv blocks (32 -> 16 -> 8 -> 4 px) + global pool + 128-d penultimate + linear head.
- `train_featnet(cfg)`: deterministic training on the mnist5k `train` split with random shifts.
- `FeatNet`: an eval-mode wrapper mapping images in any of the project's layouts to float64 features;
  it is what `torchmetrics.FrechetInceptionDistance(feature=...)` and our own FID consume.
- `save_featnet` / `load_featnet`: a plain dict (state_dict + config) loadable with weights_only=True.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from common.errors import UserError, short_reason
from common.io import atomic_write

FEATURE_SPACE = "mnist-cnn"
CKPT_NAME = "mnist-cnn.pt"
REF_NAME = "ref_stats.npz"


class FeatNetError(UserError, RuntimeError):
    """A missing or unreadable feature network / reference file; the message names it."""


@dataclass
class FeatNetConfig:
    """Architecture and training recipe. Defaults are the ones the `mnist-cnn` space is defined by."""

    channels: tuple = (32, 64, 128)
    feat_dim: int = 128
    num_classes: int = 10
    size: int = 32                  # input resolution; other sizes are resized to it
    epochs: int = 20                # 98.0% held-out accuracy (12 epochs: 97.2%)
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    max_shift: int = 2              # random translation of +-max_shift px (augmentation)
    seed: int = 0
    max_steps: int = 0              # > 0 stops early (tests); 0 trains all epochs

    @classmethod
    def from_dict(cls, d: dict) -> FeatNetConfig:
        """Validated config; a bad value raises FeatNetError naming the key `featnet.<name>`."""
        if not isinstance(d, dict):
            raise FeatNetError(f"params key 'featnet' must be a mapping, got {type(d).__name__} ({d!r:.60})")
        known = {f.name for f in fields(cls)}
        for k in d:
            if k not in known:
                raise FeatNetError(f"unknown featnet config key 'featnet.{k}' (known: {', '.join(sorted(known))})")
        d = dict(d)
        if "channels" in d:
            c = d["channels"]
            if not (isinstance(c, (list, tuple)) and c and all(_is_int(x) and x >= 1 for x in c)):
                raise FeatNetError(f"params key 'featnet.channels' must be a list of positive ints, got {c!r}")
            d["channels"] = tuple(c)
        for k, lo in _LOWER.items():
            if k not in d:
                continue
            v, is_int = d[k], isinstance(getattr(cls, k), int)
            if not is_int and isinstance(v, str):  # YAML 1.1 reads 2e-3 as a string
                try:
                    v = d[k] = float(v)
                except ValueError:
                    pass
            ok = _is_int(v) if is_int else isinstance(v, (int, float)) and not isinstance(v, bool)
            if not ok or v < lo or (k == "lr" and v == 0):
                what = f"an int >= {lo}" if is_int else ("a number > 0" if k == "lr" else f"a number >= {lo}")
                raise FeatNetError(f"params key 'featnet.{k}' must be {what}, got {v!r}")
        cfg = cls(**d)
        if cfg.size < 2 ** len(cfg.channels):
            raise FeatNetError(f"params key 'featnet.size' = {cfg.size} is too small for {len(cfg.channels)} "
                               f"pooling blocks (at least {2 ** len(cfg.channels)})")
        return cfg


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# lowest allowed value of each scalar featnet key
_LOWER = {"feat_dim": 1, "num_classes": 2, "size": 1, "epochs": 1, "batch_size": 1, "lr": 0.0,
          "weight_decay": 0.0, "max_shift": 0, "seed": 0, "max_steps": 0}


class MnistCNN(nn.Module):
    """Conv-BN-ReLU-pool blocks + MLP head on (B, 1, 32, 32) floats in [-1, 1]; `features` gives the penultimate (B, feat_dim)."""

    def __init__(self, channels=(32, 64, 128), feat_dim: int = 128, num_classes: int = 10):
        super().__init__()
        blocks, c_in = [], 1
        for c in channels:
            blocks += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            c_in = c
        self.blocks = nn.Sequential(*blocks)
        self.penultimate = nn.Sequential(nn.Linear(c_in, feat_dim), nn.ReLU(inplace=True))
        self.head = nn.Linear(feat_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(x)                  # (B, C, 4, 4)
        h = h.mean(dim=(2, 3))              # (B, C)
        return self.penultimate(h)          # (B, feat_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, num_classes)


def _to_input(images, size: int) -> torch.Tensor:
    """Any project image layout -> float32 (B, 1, size, size) in [-1, 1].

    Accepted: uint8 (N, H, W), (N, H, W, C) or (N, C, H, W) with C in {1, 3}; float tensors in the same
    layouts are taken to be in [-1, 1] (the project's `common.data.to_float` convention).
    RGB is averaged to grey (the feature space is defined on grey digits).
    """
    x = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images)
    is_u8 = x.dtype == torch.uint8
    if x.dim() == 3:
        x = x[:, None]                                   # (N, 1, H, W)
    elif x.dim() == 4:
        if x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
            x = x.permute(0, 3, 1, 2)                    # NHWC -> NCHW
    else:
        raise FeatNetError(f"images must be (N, H, W), (N, H, W, C) or (N, C, H, W); got shape {tuple(x.shape)}")
    if x.shape[1] not in (1, 3):
        raise FeatNetError(f"images must have 1 or 3 channels; got shape {tuple(x.shape)}")
    x = x.float()
    if is_u8:
        x = x / 127.5 - 1.0
    if x.shape[1] == 3:
        x = x.mean(dim=1, keepdim=True)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.contiguous()                                # (N, 1, size, size)


class FeatNet(nn.Module):
    """Frozen, eval-mode feature extractor: images (any layout, see `_to_input`) -> (N, d) float64.

    `num_features` lets torchmetrics skip its 299x299 probe image.
    """

    def __init__(self, net: MnistCNN, cfg: FeatNetConfig, batch_size: int = 500):
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        self.cfg = cfg
        self.num_features = cfg.feat_dim
        self.batch_size = batch_size

    def train(self, mode: bool = True) -> FeatNet:  # always eval: BatchNorm must use running stats
        return super().train(False)

    @torch.no_grad()
    def forward(self, images) -> torch.Tensor:
        x = _to_input(images, self.cfg.size)
        out = [self.net.features(x[i:i + self.batch_size]) for i in range(0, len(x), self.batch_size)]
        return torch.cat(out).double()                   # (N, d)

    @torch.no_grad()
    def logits(self, images) -> torch.Tensor:
        x = _to_input(images, self.cfg.size)
        return torch.cat([self.net(x[i:i + self.batch_size]) for i in range(0, len(x), self.batch_size)])

    def extract(self, images) -> np.ndarray:
        """(N, d) float64 numpy features."""
        return self(images).numpy()

    def classify(self, images) -> np.ndarray:
        """(N,) int64 predicted labels."""
        return self.logits(images).argmax(dim=1).numpy().astype(np.int64)


def classify(net: FeatNet, images) -> np.ndarray:
    """Predicted digit labels (N,) int64 for images in any layout `FeatNet` accepts."""
    return net.classify(images)


def _random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each image of (B, 1, H, W) by its own integer offset in [-max_shift, max_shift] (zero fill)."""
    if max_shift <= 0:
        return x
    B, _, H, W = x.shape
    xp = F.pad(x, (max_shift,) * 4, value=-1.0)          # (B, 1, H+2s, W+2s), background is -1
    dy = torch.randint(0, 2 * max_shift + 1, (B,), generator=gen)
    dx = torch.randint(0, 2 * max_shift + 1, (B,), generator=gen)
    rows = (dy[:, None] + torch.arange(H))[:, :, None]   # (B, H, 1)
    cols = (dx[:, None] + torch.arange(W))[:, None, :]   # (B, 1, W)
    return xp[torch.arange(B)[:, None, None], 0, rows, cols][:, None]  # (B, 1, H, W)


@torch.no_grad()
def accuracy(net: FeatNet, images: np.ndarray, labels: np.ndarray) -> float:
    return float((net.classify(images) == np.asarray(labels)).mean())


def train_featnet(cfg: FeatNetConfig, log=print, eval_train: bool = True) -> tuple[FeatNet, dict]:
    """Train on mnist5k `train` (4,500 digits) with random shifts; returns the wrapper and a metrics dict.

    Deterministic for a given seed and thread count (CPU). `eval_train=False` skips the train-split
    accuracy (tests).
    """
    from common.data import mnist5k_split

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    X, y = mnist5k_split("train")                        # uint8 (4500, 32, 32), int64 (4500,)
    Xh, yh = mnist5k_split("heldout")
    x_all = _to_input(X, cfg.size)                       # (N, 1, 32, 32)
    y_all = torch.from_numpy(y)
    net = MnistCNN(cfg.channels, cfg.feat_dim, cfg.num_classes)
    steps_per_epoch = -(-len(x_all) // cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    if cfg.max_steps > 0:
        total = min(total, cfg.max_steps)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=0.15)
    t0, step = time.perf_counter(), 0
    net.train()
    while step < total:
        perm = torch.randperm(len(x_all), generator=gen)
        for i in range(0, len(perm), cfg.batch_size):
            if step >= total:
                break
            idx = perm[i:i + cfg.batch_size]
            xb = _random_shift(x_all[idx], cfg.max_shift, gen)  # (B, 1, 32, 32)
            loss = F.cross_entropy(net(xb), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if log and (step % steps_per_epoch == 0 or step == total):
                log(f"featnet step {step}/{total} loss {loss.item():.4f}")
    train_seconds = time.perf_counter() - t0
    fnet = FeatNet(net, cfg)
    metrics = {
        "heldout_accuracy": accuracy(fnet, Xh, yh),
        "train_accuracy": accuracy(fnet, X, y) if eval_train else None,
        "train_seconds": round(train_seconds, 2),
        "train_steps": total,
        "params": sum(p.numel() for p in net.parameters()),
        "feature_space": FEATURE_SPACE,
        "feature_dim": cfg.feat_dim,
        "seed": cfg.seed,
        "threads": torch.get_num_threads(),
    }
    return fnet, metrics


def save_featnet(fnet: FeatNet, path: str | Path) -> None:
    """Write {"state_dict", "config"} (tensors and primitives only) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = asdict(fnet.cfg)
    cfg["channels"] = list(cfg["channels"])
    with atomic_write(path) as f:
        torch.save({"state_dict": fnet.net.state_dict(), "config": cfg, "feature_space": FEATURE_SPACE}, f)


def _locate(path: str | Path, name: str, suffix: str) -> tuple[Path, Path]:
    """(directory, file) of a feature-network file given its directory or the file itself."""
    path = Path(path)
    if path.is_dir() or path.suffix != suffix:  # a directory, or the name of one not made yet
        return path, path / name
    return path.parent, path


def _rebuild_fix(d: Path, path: Path | None = None) -> str:
    """How to make the missing or corrupt file `path` of directory `d` (only its standard name can be made)."""
    if path is not None and path.name not in (CKPT_NAME, REF_NAME):
        return f"Fix: pass the directory that holds {CKPT_NAME} and {REF_NAME} (the featurenet stage's --out)"
    return f"Fix: run `python -m pipelines.featurenet --out {d}` (it writes {d / CKPT_NAME} and {d / REF_NAME})"


def load_featnet(path: str | Path) -> FeatNet:
    """Load the feature network from `mnist-cnn.pt` or from a directory holding it (weights_only=True)."""
    d, path = _locate(path, CKPT_NAME, ".pt")
    if not path.is_file():
        raise FeatNetError(f"feature network '{path}' not found. {_rebuild_fix(d, path)}")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
        cfg = FeatNetConfig.from_dict(ck["config"])
        net = MnistCNN(cfg.channels, cfg.feat_dim, cfg.num_classes)
        net.load_state_dict(ck["state_dict"])
    except Exception as e:  # torch's own message would advise weights_only=False: wrong for a corrupt file
        raise FeatNetError(f"feature network '{path}' is corrupt or not an {FEATURE_SPACE} network "
                           f"({short_reason(e)}). {_rebuild_fix(d)}") from e
    return FeatNet(net, cfg)


def featnet_digest(path: str | Path) -> str:
    """sha256[:12] of `mnist-cnn.pt` (given it or its directory): which trained network a number was
    measured with, since every retraining moves the `mnist-cnn` space."""
    import hashlib

    d, path = _locate(path, CKPT_NAME, ".pt")
    if not path.is_file():
        raise FeatNetError(f"feature network '{path}' not found. {_rebuild_fix(d, path)}")
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def load_ref_stats(path: str | Path) -> dict:
    """Reference statistics {"mu", "sigma", "features", ...} from `ref_stats.npz` or its directory."""
    d, path = _locate(path, REF_NAME, ".npz")
    if not path.is_file():
        raise FeatNetError(f"reference statistics '{path}' not found. {_rebuild_fix(d, path)}")
    try:
        with np.load(path) as z:
            missing = {"mu", "sigma", "features"} - set(z.files)
            ref = {k: z[k] for k in z.files}
    except Exception as e:  # garbage, truncated or pickled: numpy / zipfile say why
        raise FeatNetError(f"reference statistics '{path}' are corrupt ({short_reason(e)}). {_rebuild_fix(d)}") from e
    if missing:
        raise FeatNetError(f"reference statistics '{path}' lack keys {sorted(missing)}. {_rebuild_fix(d)}")
    n, dim = ref["features"].shape if ref["features"].ndim == 2 else (0, 0)
    if n < 2 or ref["mu"].shape != (dim,) or ref["sigma"].shape != (dim, dim):
        raise FeatNetError(f"reference statistics '{path}' have inconsistent shapes (features "
                           f"{ref['features'].shape}, mu {ref['mu'].shape}, sigma {ref['sigma'].shape}). {_rebuild_fix(d)}")
    return ref


def reference_stats(fnet: FeatNet, split: str = "train") -> dict:
    """Features of the real mnist5k `split` and their statistics (mu, sigma float64 + raw features)."""
    from common.data import mnist5k_split

    from .fid import feature_stats

    X, y = mnist5k_split(split)
    feats = fnet.extract(X)                              # (N, d) float64
    mu, sigma = feature_stats(feats)
    return {"mu": mu, "sigma": sigma, "features": feats, "labels": y,
            "feature_space": np.array(FEATURE_SPACE), "reference": np.array(f"mnist5k/{split}")}


def save_reference(ref: dict, out_dir: str | Path) -> None:
    """`reference_stats` -> `<out_dir>/ref_stats.npz`, written atomically."""
    with atomic_write(Path(out_dir) / REF_NAME) as f:
        np.savez(f, **ref)


def write_reference(fnet: FeatNet, out_dir: str | Path, split: str = "train") -> dict:
    """Features of the real mnist5k `split` -> `<out_dir>/ref_stats.npz` (mu, sigma float64 + raw features)."""
    ref = reference_stats(fnet, split)
    save_reference(ref, out_dir)
    return ref
