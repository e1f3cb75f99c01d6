"""``silk extract``: keypoints of image files into an hloc ``features.h5``."""

from __future__ import annotations

import argparse
from pathlib import Path

from tqdm import tqdm

from ..ecosystem.hloc import write_features
from ..image_features import extract_image
from . import add_command
from .common import (
    add_detection_args,
    add_model_args,
    add_overwrite_arg,
    detection_options,
    image_name,
    load_model,
    weights_path,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "extract",
        description="Detect and describe keypoints of IMAGE files and write them in hloc's features.h5 layout "
        "(per image: keypoints N x 2 as (x, y) with pixel centres at integers, scores N, descriptors D x N, "
        "image_size as (W, H)). Images are named by their path relative to --root (default: their file name).",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--out", required=True, metavar="H5", help="output features.h5")
    p.add_argument("--root", default=None, help="name images by their path relative to this folder")
    add_overwrite_arg(p)
    add_model_args(p)
    add_detection_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model = load_model(args)
    paths = [Path(p) for p in args.images]
    root = Path(args.root) if args.root else None
    opts = detection_options(args)

    def features():
        for path in tqdm(paths, desc="extract", unit="img", disable=len(paths) < 2):
            yield image_name(path, root), extract_image(model, path, resize=args.resize, **opts)

    weights = weights_path(args)
    out = write_features(args.out, features(), overwrite=args.overwrite, model_name=weights.stem,
                         weights=weights, options={"resize": args.resize, **opts})
    print(f"wrote {len(paths)} images to {out}")
    return 0
