"""``silk extract``: keypoints of image files into an hloc ``features.h5``, resumable, parallel, sharded."""

from __future__ import annotations

import argparse

from ..bulk import extract_to_h5, keep_memory_flat
from ..devices import setup_distributed
from ..io import named_images
from . import add_command
from .common import (
    add_bulk_args,
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
        description="Detect and describe keypoints of images into hloc's features.h5 (per image: keypoints N x 2 "
        "as (x, y), pixel centres at integers; scores N; descriptors D x N; image_size (W, H)). Files are named "
        "by their path relative to --root (default: file name), a FOLDER's images relative to it. Images are "
        "written as they finish: a rerun skips those already in the file (same model and options; --overwrite "
        "starts over); unreadable ones are skipped and listed in OUT.failed.txt. Works under torchrun "
        "(docs/scale.md).",
    )
    p.add_argument("images", nargs="*", metavar="IMAGE|FOLDER", help="image files and folders (searched recursively)")
    p.add_argument("--image-list", default=None, metavar="FILE",
                   help="text file of image paths relative to --root, one per line (as hloc's image_list)")
    p.add_argument("--out", required=True, metavar="H5", help="output features.h5 (resumed if it exists)")
    p.add_argument("--root", default=None, help="name images by their path relative to this folder")
    add_overwrite_arg(p)
    add_model_args(p)
    add_detection_args(p)
    add_bulk_args(p, "image")
    p.add_argument("--neighbours", action="store_true",
                   help="also store the descriptors of the 3x3 cells around each keypoint (neighbour_descriptors, "
                   "float16, ~9x the descriptors' size), which silk adjust-keypoints needs")
    p.add_argument("--batch-size", type=int, default=1, metavar="B",
                   help="run up to B consecutive images of equal size as one batch (default: 1)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    images = named_images(args.images, args.root, args.image_list)
    rank, _, device = setup_distributed(args.device)
    model = load_model(args, device)
    opts = detection_options(args)
    if args.neighbours:
        opts["neighbours"] = True
    weights = weights_path(args)
    keep_memory_flat()
    summary = extract_to_h5(model, images, args.out, resize=args.resize, options=opts, model_name=weights.stem,
                            weights=weights, workers=args.workers, batch_size=args.batch_size, strict=args.strict,
                            overwrite=args.overwrite, progress=not args.quiet)
    if rank == 0:
        print(summary.line("images", args.out))
    summary.check_some_done("no image could be read", args.out)
    return 0
