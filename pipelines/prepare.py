"""Stage: encode a latent dataset's images with its codec (the `paper` presets' ImageNet latents).

    python -m pipelines.prepare imagenet --images data/imagenet/images/train --root data [--flip]

Reads an ImageFolder (<class>/<image>), center-crops every image to the dataset's pixel size (its
latent size x the codec's downsampling: 32 x 8 = 256 px for ImageNet and the SD-VAE) and writes
`<root>/<dataset>/latents/<split>.pt` (see `common.data.latents`). The codec's weights come from
`<root>/codecs/<codec>/` or the Hugging Face hub (`common.data.codec`). Pixel datasets (codec
`identity`) need no preparation.
"""
from __future__ import annotations

import torch

from common.config import ConfigError
from common.data import DataError, info
from common.data.codec import dataset_codec
from common.data.latents import encode_imagefolder, latents_file

from ._cli import StageParser, friendly_errors


@friendly_errors
def main(argv=None) -> dict:
    ap = StageParser("prepare", __doc__)
    ap.add_argument("dataset", help="a registered latent dataset (e.g. imagenet)")
    ap.add_argument("--images", required=True, help="ImageFolder of the split: <class>/<image> files")
    ap.add_argument("--root", default="data", help="data root (the same as the runs' data.root)")
    ap.add_argument("--split", default="train")
    ap.add_argument("--flip", action="store_true", help="also encode horizontally flipped copies (DiT's augmentation)")
    ap.add_argument("--seed", type=int, default=0, help="seeds the posterior draw of every image")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    di = info(args.dataset)
    if di.codec == "identity":
        raise DataError(f"dataset '{args.dataset}' is stored as pixels (codec 'identity'): nothing to prepare")
    codec = dataset_codec(args.dataset, args.root, args.device)
    size = di.size * codec.downsample
    out = latents_file(args.root, args.dataset, args.split)
    obj = encode_imagefolder(args.images, out, codec, size=size, batch_size=args.batch_size, flip=args.flip,
                             seed=args.seed)
    print(f"encoded {len(obj['labels'])} images of {len(obj['classes'])} classes at {size} px with "
          f"'{codec.name}' -> {tuple(obj['latents'].shape[1:])} latents in {out}")
    return obj


if __name__ == "__main__":
    main()
