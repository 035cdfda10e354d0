"""Stage: evaluate the samples of one or more runs on pixels, in the feature space of their dataset.

    python -m pipelines.evaluate runs/<paper>/<variant>/s<seed> [...] --featnet data/featnet

Reads `<run>/samples.npz` (`arr_0` uint8 (N, H, W, C) or (N, F, H, W, C), `labels` (N,); latent runs
were decoded into pixels by the sample stage), plus `samples.json` and `train.json` for the protocol,
and writes `<run>/eval.json`: FID against the reference statistics, KID, precision/recall (k-NN, k=3),
class consistency, and for videos the per-frame FID (all frames pooled, against real video frames) and
temporal consistency. Each number sits beside its protocol (feature space, sample count, reference,
sampler, steps, guidance, EMA, codec, dataset, preset), and the time it took (`eval_seconds`, `eval_threads`).

Feature spaces (`--features auto` takes the dataset's, `common.data.DatasetInfo.features`):
- `mnist-cnn` (the digits): `--featnet DIR` holds mnist-cnn.pt and ref_stats.npz (pipelines.featurenet).
- `inception` (ImageNet, CIFAR-10): torch-fidelity's InceptionV3 from a local weights file
  (`--inception-weights`, $DIFFREPRO_INCEPTION_WEIGHTS, `--inception DIR` or the torch hub cache; never
  downloaded here) against `<inception DIR>/<dataset>.npz` (mu/sigma/features, or ADM's reference batch).
  It has no classifier: class consistency is null.
"""
from __future__ import annotations

import hashlib
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

from common.data import info
from common.errors import UserError, short_reason
from common.io import check_writable, read_json, write_json
from common.metrics.featnet import CKPT_NAME, FEATURE_SPACE, REF_NAME, load_featnet, load_ref_stats
from common.metrics.fid import (
    INCEPTION_ENV,
    INCEPTION_FILE,
    INCEPTION_SPACE,
    PR_K,
    InceptionNet,
    feature_stats,
    find_inception_weights,
    image_metrics,
    load_reference,
)
from common.metrics.video import temporal_consistency

from ._cli import RUN_JSON_FIX, StageParser, check_run_json, friendly_errors

MAX_REF_FRAMES = 5000
RESAMPLE = "Fix: delete it and re-run the sample stage for this run"


class EvalError(UserError, RuntimeError):
    """A run directory that cannot be evaluated; the message names the file."""


def _read_json(path: Path, required: bool) -> dict:
    if not path.is_file() and not required:
        return {}
    return read_json(path, fix=RESAMPLE if path.name == "samples.json" else RUN_JSON_FIX)


def _npy_header(zf: zipfile.ZipFile, name: str) -> tuple[tuple, np.dtype]:
    """(shape, dtype) of one array of an .npz from its header, without reading the data."""
    with zf.open(name) as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
    return shape, dtype


def check_samples(run: Path) -> tuple:
    """Shape of a run's samples, from the .npz headers only (no pixel is read): a missing, empty, garbage
    or truncated file, a wrong layout or too few samples fail here, before any metric is computed."""
    path = run / "samples.npz"
    if not path.is_file():
        raise EvalError(f"'{path}' not found. Fix: run the sample stage for this run first")
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            if "arr_0.npy" not in names:
                raise EvalError(f"'{path}' has no 'arr_0' array (keys: {[n[:-4] for n in names]}). {RESAMPLE}")
            shape, dtype = _npy_header(zf, "arr_0.npy")
            labels = _npy_header(zf, "labels.npy")[0] if "labels.npy" in names else None
    except EvalError:
        raise
    except Exception as e:  # empty, garbage or truncated: zipfile / numpy say why
        raise EvalError(f"'{path}' is not a readable .npz ({short_reason(e)}). {RESAMPLE}") from e
    if dtype != np.uint8 or len(shape) not in (4, 5):
        raise EvalError(f"'{path}': arr_0 must be uint8 (N, H, W, C) or (N, F, H, W, C); got {dtype} {shape}")
    if shape[0] * (shape[1] if len(shape) == 5 else 1) <= PR_K:
        raise EvalError(f"'{path}' holds {shape[0]} samples; the metrics need more than {PR_K} images. {RESAMPLE}")
    if labels is not None and labels != (shape[0],):
        raise EvalError(f"'{path}': labels must have shape ({shape[0]},); got {labels}")
    return shape


def load_samples(run: Path) -> tuple[np.ndarray, np.ndarray]:
    """uint8 samples (N, H, W, C) or (N, F, H, W, C) and int64 labels (N,) of a run."""
    check_samples(run)
    path = run / "samples.npz"
    try:
        with np.load(path) as z:
            return z["arr_0"], (z["labels"] if "labels" in z.files else None)
    except Exception as e:  # a damaged member the headers did not show (CRC, zlib)
        raise EvalError(f"'{path}' is not a readable .npz ({short_reason(e)}). {RESAMPLE}") from e


def video_reference(net, dataset: str, root: str = "data") -> dict | None:
    """Stats of real video frames (all frames pooled) of `dataset`'s train split, or None if unavailable."""
    try:
        from common.data import info, load, to_uint8

        if info(dataset).frames == 0:
            raise ValueError(f"'{dataset}' is not a video dataset")
        vids = load(dataset, "train", root=root).tensors[0]     # (N, F, C, H, W) float [-1, 1]
    except Exception as e:  # noqa: BLE001 - fall back to the still-image reference, and say so
        print(f"warning: real frames of '{dataset}' unavailable ({type(e).__name__}: {e}); "
              f"per-frame FID uses the still-image reference", file=sys.stderr)
        return None
    frames = to_uint8(vids.flatten(0, 1)).movedim(1, -1).numpy()  # (N*F, H, W, C)
    if len(frames) > MAX_REF_FRAMES:
        frames = frames[np.random.default_rng(0).choice(len(frames), MAX_REF_FRAMES, replace=False)]
    feats = net.extract(frames)
    mu, sigma = feature_stats(feats)
    return {"mu": mu, "sigma": sigma, "features": feats, "reference": f"{dataset}/train frames"}


def run_dataset(run: Path) -> str | None:
    """The dataset a run was trained on (train.json, else samples.json), or None if neither says."""
    train = _read_json(run / "train.json", required=False)
    return train.get("dataset") or _read_json(run / "samples.json", required=False).get("dataset")


def feature_space(features: str, dataset: str | None) -> str:
    """`--features` resolved for one run: `auto` takes the dataset's space (mnist-cnn if unknown)."""
    if features != "auto":
        return features
    return info(dataset).features if dataset else FEATURE_SPACE


def load_space(space: str, dataset: str | None, args) -> tuple:
    """(feature net, reference statistics, feature net id) of one feature space."""
    if space == FEATURE_SPACE:
        fdir = featnet_dir(args.featnet)
        net, ref = load_featnet(fdir), load_ref_stats(fdir)
        ref["reference"] = str(ref.get("reference", "mnist5k/train"))
        return net, ref, f"{FEATURE_SPACE}@{hashlib.sha256((fdir / CKPT_NAME).read_bytes()).hexdigest()[:12]}"
    if not dataset:
        raise EvalError(f"the '{space}' feature space needs the run's dataset (train.json names none)")
    weights = find_inception_weights(args.inception_weights, [args.inception])
    if weights is None:
        from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

        raise EvalError(f"Inception weights not found for the '{space}' feature space of '{dataset}': download "
                        f"{URL_INCEPTION_V3} into {args.inception}/, or pass --inception-weights FILE or set "
                        f"${INCEPTION_ENV}")
    net = InceptionNet(weights)
    ref = load_reference(Path(args.inception) / f"{dataset}.npz", net)
    ref["reference"] = f"{dataset}/{ref['reference']}"
    return net, ref, f"{INCEPTION_SPACE}@{hashlib.sha256(Path(weights).read_bytes()).hexdigest()[:12]}"


def evaluate_run(run: Path, net, ref: dict, featnet_id: str, space: str = FEATURE_SPACE) -> dict:
    """All metrics of one run dir, with their protocol, as a flat dict (also written to eval.json).
    A feature net without `classify` (Inception) leaves class and temporal consistency null.
    `eval_seconds` / `eval_threads`: the wall time of this run's metrics (feature net and reference
    loading excluded) and torch's thread count, so that a run's CPU budget is recorded (pipelines.budget)."""
    import torch

    t0 = time.perf_counter()
    x, labels = load_samples(run)
    meta = _read_json(run / "samples.json", required=False)
    train = _read_json(run / "train.json", required=False)
    dataset = train.get("dataset") or meta.get("dataset")
    if x.ndim == 5:                                             # video: metrics over pooled frames
        n, f = x.shape[:2]
        vref = video_reference(net, dataset) if dataset else None
        ref = vref or ref
        images = x.reshape(n * f, *x.shape[2:])                 # (N*F, H, W, C)
        cond = None if labels is None else np.repeat(labels, f)
    else:
        n, f, images, cond = len(x), 0, x, labels
    out, pred = image_metrics(images, cond, net, ref, space, featnet_id)
    if f:
        out["frame_fid"] = out["fid"]
        out["temporal_consistency"] = None if pred is None else temporal_consistency(pred.reshape(n, f))
        out["frames"] = int(f)
    out.update({
        "num_samples": int(n),
        "sampler": meta.get("sampler"),
        "sample_steps": meta.get("steps"),
        "cfg_scale": meta.get("cfg_scale"),
        "ema": meta.get("ema"),
        "sample_seed": meta.get("seed"),
        "sample_s_per_img": meta.get("sample_s_per_img"),
        "codec": meta.get("codec"),
        "dataset": dataset,
        "preset": train.get("preset"),
        "eval_seconds": time.perf_counter() - t0,
        "eval_threads": torch.get_num_threads(),
    })
    return out


def featnet_dir(arg: str) -> Path:
    """`--featnet`: the directory holding mnist-cnn.pt and ref_stats.npz, or one of those two files."""
    p = Path(arg)
    if p.is_file() and p.name in (CKPT_NAME, REF_NAME):
        return p.parent
    if p.exists() and not p.is_dir():
        raise EvalError(f"--featnet '{p}' is a file; pass the directory holding {CKPT_NAME} and {REF_NAME}")
    return p


@friendly_errors
def main(argv: list[str] | None = None) -> list[dict]:
    ap = StageParser("evaluate", __doc__)
    ap.add_argument("runs", nargs="+", help="run directories holding samples.npz")
    ap.add_argument("--features", choices=("auto", FEATURE_SPACE, INCEPTION_SPACE), default="auto",
                    help="feature space of the FID (auto: the dataset's)")
    ap.add_argument("--featnet", default="data/featnet", help="directory with mnist-cnn.pt and ref_stats.npz")
    ap.add_argument("--inception", default="data/inception",
                    help=f"directory with {INCEPTION_FILE} and the reference <dataset>.npz")
    ap.add_argument("--inception-weights", default=None, help=f"the {INCEPTION_FILE} file (else looked up)")
    ap.add_argument("--paper", default=None, help="refuse a run whose run.json is not of this paper")
    ap.add_argument("--variant", default=None, help="refuse a run whose run.json is not of this variant")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 keeps the default)")
    args = ap.parse_args(argv)
    runs = [Path(r) for r in args.runs]
    want = {"paper": args.paper, "variant": args.variant}
    for run in runs:  # everything a run needs is checked before the first metric is computed
        check_run_json(run, want, required=any(want.values()))
        check_samples(run)
        _read_json(run / "samples.json", required=False)
        _read_json(run / "train.json", required=False)
    check_writable(*(run / "eval.json" for run in runs))
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    spaces, todo = {}, []
    for run in runs:  # every feature space loads before any metric is computed
        dataset = run_dataset(run)
        space = feature_space(args.features, dataset)
        key = (space, None if space == FEATURE_SPACE else dataset)
        if key not in spaces:
            spaces[key] = load_space(space, dataset, args)
        todo.append((run, space, *spaces[key]))
    results = [evaluate_run(run, net, ref, featnet_id, space) for run, space, net, ref, featnet_id in todo]
    for run, res in zip(runs, results):  # written only once every run is evaluated
        write_json(run / "eval.json", res)
        print(f"{run}: FID {res['fid']:.3f} ({res['fid_features']}, n={res['fid_samples']}) "
              f"KID {res['kid']:.4f} P {res['precision']:.3f} R {res['recall']:.3f} "
              f"class-consistency {res['class_consistency']}")
    return results


if __name__ == "__main__":
    main()
