"""``silk extract``: keypoints of image files into an hloc ``features.h5``."""

from __future__ import annotations

import argparse

from tqdm import tqdm

from ..ecosystem.hloc import write_features
from ..image_features import extract_image
from ..io import named_images
from . import add_command
from .common import (
    add_detection_args,
    add_model_args,
    add_overwrite_arg,
    detection_options,
    load_model,
    weights_path,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "extract",
        description="Detect and describe keypoints of images and write them in hloc's features.h5 layout "
        "(per image: keypoints N x 2 as (x, y) with pixel centres at integers, scores N, descriptors D x N, "
        "image_size as (W, H)). Files are named by their path relative to --root (default: their file name); "
        "the images of a FOLDER by their path relative to it.",
    )
    p.add_argument("images", nargs="*", metavar="IMAGE|FOLDER", help="image files and folders (searched recursively)")
    p.add_argument("--image-list", default=None, metavar="FILE",
                   help="text file of image paths relative to --root, one per line (as hloc's image_list)")
    p.add_argument("--out", required=True, metavar="H5", help="output features.h5")
    p.add_argument("--root", default=None, help="name images by their path relative to this folder")
    add_overwrite_arg(p)
    add_model_args(p)
    add_detection_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    images = named_images(args.images, args.root, args.image_list)
    model = load_model(args)
    opts = detection_options(args)

    def features():
        for name, path in tqdm(images, desc="extract", unit="img", disable=len(images) < 2):
            yield name, extract_image(model, path, resize=args.resize, **opts)

    weights = weights_path(args)
    out = write_features(args.out, features(), overwrite=args.overwrite, model_name=weights.stem,
                         weights=weights, options={"resize": args.resize, **opts})
    print(f"wrote {len(images)} images to {out}")
    return 0
