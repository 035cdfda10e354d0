"""ImageNet (or any ImageFolder) as SD-VAE latents, the input of the `paper` presets.

    python -m common.data.latents <imagefolder> data/imagenet-latents/train.pt --size 256

Images are center-cropped as ADM/DiT do, resized to `size`, encoded with the Stable Diffusion VAE
(`stabilityai/sd-vae-ft-ema` through `diffusers`, the optional `latents` extra; downloaded where there
is a network) and scaled by 0.18215, giving 32x32x4 latents at 256 px. The encoder is a parameter, so
the pipeline is tested offline with a stand-in. Output: one `.pt` file {"latents": (N, 4, s/8, s/8),
"labels": (N,), "classes": [...]}, loaded by `load_latents`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

SD_VAE = "stabilityai/sd-vae-ft-ema"
LATENT_SCALE = 0.18215


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


def sd_vae_encoder(device: str = "cpu"):
    """The SD-VAE encoder as a callable images[-1, 1] (B, 3, H, W) -> latents (B, 4, H/8, W/8)."""
    try:
        from diffusers.models import AutoencoderKL
    except ImportError as e:
        raise RuntimeError("encoding ImageNet latents needs diffusers: pip install -e '.[latents]'") from e
    try:
        vae = AutoencoderKL.from_pretrained(SD_VAE).to(device).eval()
    except Exception as e:
        raise RuntimeError(f"could not load the VAE '{SD_VAE}' ({type(e).__name__}: {e}); it downloads from "
                           f"the Hugging Face hub, so run this where there is a network or set HF_HOME to a "
                           f"cache holding it") from e

    @torch.no_grad()
    def encode(x):
        return vae.encode(x.to(device)).latent_dist.sample().mul_(LATENT_SCALE).cpu()

    return encode


@torch.no_grad()
def encode_imagefolder(folder: str | Path, out: str | Path, size: int = 256, encoder=None, batch_size: int = 32,
                       flip: bool = False) -> dict:
    """Encode every image of an ImageFolder; `flip` adds horizontally flipped copies (DiT trains with flips)."""
    from torchvision.datasets import ImageFolder

    folder = Path(folder)
    if not folder.is_dir():
        from common.data import DataError

        raise DataError(f"ImageFolder {folder} does not exist (expected <class>/<image> files)")
    ds = ImageFolder(str(folder), transform=lambda im: torch.from_numpy(center_crop_arr(im, size)))
    encoder = encoder or sd_vae_encoder()
    lat, labels = [], []
    for i in range(0, len(ds), batch_size):
        items = [ds[j] for j in range(i, min(i + batch_size, len(ds)))]
        x = torch.stack([im for im, _ in items]).permute(0, 3, 1, 2).float() / 127.5 - 1  # (B, 3, H, W)
        y = torch.tensor([c for _, c in items])
        for xx in ([x, x.flip(-1)] if flip else [x]):
            lat.append(encoder(xx))
            labels.append(y)
    obj = {"latents": torch.cat(lat).float(), "labels": torch.cat(labels), "classes": list(ds.classes)}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, out)
    return obj


def load_latents(path: str | Path) -> TensorDataset:
    from common.data import DataError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"dataset 'imagenet' latents not found at {path}. Fix: encode an ImageFolder with "
                        f"`python -m common.data.latents <imagenet/train> {path}` (needs the 'latents' extra)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        return TensorDataset(obj["latents"].float(), obj["labels"].long())
    except Exception as e:
        raise DataError(f"dataset file {path} is unreadable ({type(e).__name__}: {e})") from e


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder")
    ap.add_argument("out")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--flip", action="store_true")
    args = ap.parse_args(argv)
    obj = encode_imagefolder(args.folder, args.out, args.size, flip=args.flip)
    print(f"encoded {len(obj['labels'])} images of {len(obj['classes'])} classes -> {args.out}")


if __name__ == "__main__":
    main()
