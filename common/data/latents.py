"""ImageNet (or any ImageFolder) as codec latents, the input of the `paper` presets.

Written by the `prepare` stage (`python -m pipelines.prepare imagenet --images <imagefolder>`):
images are center-cropped as ADM/DiT do to the dataset's pixel size (latent size x the codec's
downsampling: 32 x 8 = 256 px for the SD-VAE), encoded with the dataset's codec as one posterior draw
per image (as DiT's feature extraction; the draw of image i depends only on (seed, i), not on the
batch size) and saved as one `.pt` file: {"latents": (N, C, s, s), "labels": (N,), "classes": [...],
"codec": name, "scaling_factor": float, "image_size": int}, loaded by `load_latents`.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from . import DataError


def latents_file(root: str | Path, dataset: str, split: str) -> Path:
    """Where the latents of `dataset`'s `split` live: `<root>/<dataset>/latents/<split>.pt`."""
    return Path(root) / dataset / "latents" / f"{split}.pt"


def center_crop_arr(pil_image, image_size: int):
    """ADM's center crop: halve with BOX while large, resize with BICUBIC, then crop the center."""
    from PIL import Image

    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image.convert("RGB"))
    y, x = (arr.shape[0] - image_size) // 2, (arr.shape[1] - image_size) // 2
    return arr[y : y + image_size, x : x + image_size]


def image_folder(folder: str | Path, size: int):
    """torchvision's ImageFolder yielding center-cropped uint8 (size, size, 3) arrays; DataError if absent."""
    from torchvision.datasets import ImageFolder

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"ImageFolder {folder} does not exist (expected <class>/<image> files)")
    try:
        return ImageFolder(str(folder), transform=lambda im: torch.from_numpy(center_crop_arr(im, size)))
    except (FileNotFoundError, OSError) as e:
        raise DataError(f"ImageFolder {folder} holds no images ({e})") from e


@torch.no_grad()
def encode_imagefolder(folder: str | Path, out: str | Path, codec, size: int, batch_size: int = 32,
                       flip: bool = False, seed: int = 0) -> dict:
    """Encode every image of an ImageFolder with `codec`; `flip` adds horizontally flipped copies (DiT
    trains with flips). Written atomically: nothing appears at `out` unless every image was encoded."""
    from common.diffusion import per_sample_noise

    ds = image_folder(folder, size)
    copies = 2 if flip else 1
    lat, labels = [[] for _ in range(copies)], []
    for i in range(0, len(ds), batch_size):
        items = []
        for j in range(i, min(i + batch_size, len(ds))):
            try:
                items.append(ds[j])
            except Exception as e:  # noqa: BLE001 - PIL raises many types for a broken file
                raise DataError(f"image {ds.samples[j][0]} is unreadable ({type(e).__name__}: {e})") from e
        x = torch.stack([im for im, _ in items]).permute(0, 3, 1, 2).float() / 127.5 - 1  # (B, 3, H, W)
        labels.append(torch.tensor([c for _, c in items]))
        for f in range(copies):
            shape = (len(x), codec.channels, size // codec.downsample, size // codec.downsample)
            noise = per_sample_noise(shape, [seed * 1_000_003 + copies * j + f for j in range(i, i + len(x))])
            lat[f].append(codec.encode(x.flip(-1) if f else x, noise))  # (B, C, s, s)
    # all images in folder order, then (with flip) all flipped copies in the same order
    obj = {"latents": torch.cat([z for f in lat for z in f]).float(), "labels": torch.cat(labels * copies),
           "classes": list(ds.classes), "codec": codec.name, "scaling_factor": codec.scaling_factor,
           "image_size": size}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, out)
    return obj


def load_latents(path: str | Path, codec: str | None = None) -> TensorDataset:
    """The latents and labels of a file written by `encode_imagefolder`; `codec` (if given) must be the
    one that encoded them, since samples of models trained on them are decoded with it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"latents not found at {path}. Fix: encode an ImageFolder with `python -m pipelines.prepare "
                        f"{path.parent.parent.name} --images <imagefolder> --root {path.parent.parent.parent}`")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        latents, labels = obj["latents"].float(), obj["labels"].long()
    except Exception as e:
        raise DataError(f"dataset file {path} is unreadable ({type(e).__name__}: {e})") from e
    if codec is not None and obj.get("codec", codec) != codec:
        raise DataError(f"latents in {path} were encoded with codec '{obj['codec']}'; this dataset decodes "
                        f"with '{codec}'. Fix: encode them again with the prepare stage")
    return TensorDataset(latents, labels)
