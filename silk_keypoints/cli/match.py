"""``silk match``: keypoints and matches of two images, a fitted homography / fundamental matrix, pictures."""

from __future__ import annotations

import argparse
import sys

from ..files import check_output_path, check_overwrite, make_dir
from ..pair import (
    GEOMETRIES,
    ROTATIONS,
    keypoint_picture_names,
    keypoints_picture,
    match_pair,
    save_json,
    save_pictures,
)
from ..viz import IMAGE_FORMATS, save_image
from . import add_command
from .common import (
    add_detection_args,
    add_matcher_args,
    add_model_args,
    add_overwrite_arg,
    detection_options,
    load_model,
    matcher_options,
    min_inliers,
    progress_printer,
    weights_description,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "match",
        description="Detect, describe and match keypoints of two images, fit a homography (or fundamental "
        "matrix) with USAC_MAGSAC, print a summary and draw matches.png (inliers green, outliers red).",
    )
    p.add_argument("image0", metavar="IMG0", help="first image (the homography maps it onto IMG1)")
    p.add_argument("image1", metavar="IMG1", help="second image")
    p.add_argument("--out", default="matches.png", metavar="PNG", help="matches picture (default: matches.png)")
    p.add_argument("--keypoints-out", default=None, metavar="DIR",
                   help="also draw each image's keypoints into DIR/<image name>_keypoints.png")
    p.add_argument("--json", default=None, metavar="FILE", help="write keypoints, matches and geometry as JSON")
    add_overwrite_arg(p)
    add_matcher_args(p, pair_gate=True)
    p.add_argument("--geometry", choices=GEOMETRIES, default="homography",
                   help="two-view model to fit (default: homography)")
    p.add_argument("--ransac-threshold", type=float, default=None, metavar="PX",
                   help="inlier threshold in pixels (default: 3 for a homography, 1 for a fundamental matrix)")
    p.add_argument("--rotations", type=int, choices=ROTATIONS, default=1,
                   help="4: also match IMG1 turned by 90, 180 and 270 degrees and keep the turn with the most "
                   "inliers (for pairs turned in-plane; 4x the extraction of IMG1; default: 1)")
    add_model_args(p)
    add_detection_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_overwrite(check_output_path(args.out, IMAGE_FORMATS, "picture"), args.overwrite)
    if args.json:
        check_overwrite(check_output_path(args.json, formats=None), args.overwrite)
    keypoints_dir = make_dir(args.keypoints_out) if args.keypoints_out else None
    if keypoints_dir is not None:
        for name in keypoint_picture_names((args.image0, args.image1)):
            check_overwrite(keypoints_dir / name, args.overwrite)
    say = progress_printer()
    weights = weights_description(args)
    say(f"loading {weights}")
    model = load_model(args)
    result = match_pair(model, args.image0, args.image1, method=args.matcher,
                        matcher_options=matcher_options(args),
                        geometry=args.geometry, ransac_threshold=args.ransac_threshold, resize=args.resize,
                        progress=say, rotations=args.rotations, **min_inliers(args), **detection_options(args))
    say("drawing pictures")
    written = save_pictures(result, args.out)
    if keypoints_dir is not None:
        for i, name in enumerate(keypoint_picture_names(result.names)):
            written.append(save_image(keypoints_picture(result, i), keypoints_dir / name))
    if args.json:
        written.append(save_json(result, args.json, {"weights": weights}))
    print(result.summary())
    if result.warning:
        print(f"warning: {result.warning}", file=sys.stderr)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0
