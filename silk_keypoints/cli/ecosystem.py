"""``silk pairs``, ``match-pairs``, ``adjust-keypoints``, ``colmap``, ``export-npz``: files for hloc, COLMAP, other tools."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from ..bulk import keep_memory_flat, match_to_h5
from ..devices import setup_distributed
from ..ecosystem.colmap import CAMERA_MODELS, build_colmap_database, image_names
from ..ecosystem.hloc import adjust_features, feature_names, merge_h5, read_features
from ..ecosystem.npz import export_npz
from ..ecosystem.pairs import exhaustive_pairs, read_pairs, sequential_pairs, write_pairs
from ..errors import SilkError
from ..files import make_dir
from ..image_features import extract_image
from ..io import named_images
from ..matching import Matcher
from . import add_command
from .common import (
    add_bulk_args,
    add_detection_args,
    add_matcher_args,
    add_model_args,
    add_overwrite_arg,
    add_pair_list_gate_arg,
    detection_options,
    load_model,
    matcher_options,
)


def register(sub: argparse._SubParsersAction) -> None:
    _register_pairs(sub)
    _register_match_pairs(sub)
    _register_adjust(sub)
    _register_merge(sub)
    _register_colmap(sub)
    _register_export_npz(sub)


# ------------------------------------------------------------------------------------------------ pairs
def _register_pairs(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "pairs",
        description="Write image pairs in hloc's pairs.txt format (one 'name0 name1' per line). Images are "
        "the groups of --features, or the image files under --images named by their path relative to it, "
        "in sorted order. exhaustive: every pair once; sequential: each image with the next --window images.",
    )
    p.add_argument("mode", choices=["exhaustive", "sequential"])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--features", metavar="H5", help="take the image names of this features.h5")
    src.add_argument("--images", metavar="DIR", help="take the images under this folder")
    p.add_argument(
        "--window",
        type=int,
        default=10,
        metavar="N",
        help="sequential: pair each image with the next N (default: 10)",
    )
    p.add_argument("--out", required=True, metavar="TXT", help="output pairs file")
    add_overwrite_arg(p)
    p.set_defaults(func=run_pairs)


def run_pairs(args: argparse.Namespace) -> int:
    names = feature_names(args.features) if args.features else image_names(args.images)
    pairs = exhaustive_pairs(names) if args.mode == "exhaustive" else sequential_pairs(names, args.window)
    out = write_pairs(args.out, pairs, overwrite=args.overwrite)
    print(f"wrote {len(pairs)} pairs of {len(names)} images to {out}")
    return 0


# ------------------------------------------------------------------------------------------------ match-pairs
def _register_match_pairs(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "match-pairs",
        description="Match the descriptors of the image pairs listed in PAIRS (hloc format) from a "
        "features.h5 and write hloc's matches.h5: per pair a group name0/name1 ('/' in names replaced by "
        "'-') with matches0 (index in image 1 or -1 per keypoint of image 0) and matching_scores0. Pairs are "
        "written as they finish: rerunning skips the pairs already in the file (same matcher settings; "
        "--overwrite starts over). Under torchrun each process matches a slice of the pairs (docs/scale.md).",
    )
    p.add_argument("pairs", metavar="PAIRS", help="pairs file, 'name0 name1' per line")
    p.add_argument("--features", required=True, metavar="H5", help="features.h5 (e.g. from silk extract)")
    p.add_argument("--out", required=True, metavar="H5", help="output matches.h5 (resumed if it exists)")
    add_overwrite_arg(p)
    p.add_argument("--device", default="cpu", help="torch device for matching (default: cpu)")
    add_matcher_args(p, refine=False)
    add_pair_list_gate_arg(p)
    add_bulk_args(p, "pair")
    p.set_defaults(func=run_match_pairs)


def run_match_pairs(args: argparse.Namespace) -> int:
    rank, _, device = setup_distributed(args.device)
    pairs = read_pairs(args.pairs, known=feature_names(args.features), where=args.features)
    matcher = Matcher(args.matcher, **matcher_options(args))
    keep_memory_flat()
    summary = match_to_h5(args.features, pairs, args.out, matcher, device=device, overwrite=args.overwrite,
                          progress=not args.quiet, gate=not args.no_gate, strict=args.strict)
    if rank == 0:
        print(summary.line("pairs", args.out))
    summary.check_some_done("no pair could be matched", args.out)
    return 0


# ------------------------------------------------------------------------------------------------ adjust-keypoints
def _register_adjust(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "adjust-keypoints",
        description="Move the keypoints of a features.h5 below the cell size so that every track of verified "
        "matches agrees: each pair of PAIRS is verified by a fundamental matrix on its matches.h5 matches, and "
        "each matched keypoint moves to the mean of its own position and its matches' positions seen from its "
        "image (found in the descriptor map around it). Writes a new features.h5 (same descriptors, for hloc's "
        "triangulation or silk colmap --features). The features must come from silk extract --neighbours. "
        "See docs/subpixel.md.",
    )
    p.add_argument("pairs", metavar="PAIRS", help="pairs file, 'name0 name1' per line (the matched pairs)")
    p.add_argument("--features", required=True, metavar="H5", help="features.h5 from silk extract --neighbours")
    p.add_argument("--matches", required=True, metavar="H5", help="matches.h5 of the pairs (silk match-pairs)")
    p.add_argument("--out", required=True, metavar="H5", help="output features.h5 with the adjusted keypoints")
    p.add_argument("--min-inliers", type=int, default=15, metavar="N",
                   help="use only pairs with at least N verified matches (default: 15, COLMAP's)")
    add_overwrite_arg(p)
    p.set_defaults(func=run_adjust)


def run_adjust(args: argparse.Namespace) -> int:
    if args.min_inliers < 8:
        raise SilkError(f"--min-inliers must be >= 8 (a fundamental matrix needs 8 matches), got {args.min_inliers}")
    pairs = read_pairs(args.pairs, known=feature_names(args.features), where=args.features)
    counts = adjust_features(args.features, args.matches, pairs, args.out, overwrite=args.overwrite,
                             min_inliers=args.min_inliers, progress=True)
    print(f"wrote {counts['images']} images to {args.out}: {counts['moved']} keypoints adjusted on the tracks of "
          f"{counts['verified_pairs']} of {counts['pairs']} pairs")
    return 0


# ------------------------------------------------------------------------------------------------ merge
def _register_merge(sub: argparse._SubParsersAction) -> None:
    for kind in ("features", "matches"):
        p = add_command(
            sub,
            f"merge-{kind}",
            description=f"Merge the part files of a sharded run (OUT stem .partRofW, one per torchrun process) "
            f"into one {kind}.h5. Items OUT already has are kept, so a merge can be rerun; parts made with other "
            "settings are refused. Rank 0 of a torchrun run does this itself when every part is on its file "
            "system; this command is for parts gathered from several machines.",
        )
        p.add_argument("parts", nargs="+", metavar="PART", help=f"part files ({kind}.h5 layout)")
        p.add_argument("--out", required=True, metavar="H5", help=f"output {kind}.h5 (added to if it exists)")
        p.add_argument("--delete-parts", action="store_true", help="delete the part files after the merge")
        add_overwrite_arg(p)
        p.set_defaults(func=run_merge, kind=kind)


def run_merge(args: argparse.Namespace) -> int:
    copied = merge_h5(args.parts, args.out, kind=args.kind, overwrite=args.overwrite)
    if args.delete_parts:
        for part in args.parts:
            Path(part).unlink()
    print(f"merged {copied} new items from {len(args.parts)} part files into {args.out}")
    return 0


# ------------------------------------------------------------------------------------------------ colmap
def _register_colmap(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "colmap",
        description="Write keypoints (COLMAP convention: +0.5 px) and matches into a COLMAP database "
        "(created if missing), verified by COLMAP's own two-view geometry (pycolmap), so that colmap mapper "
        "can run on it. Images are named by their path relative to --images, as COLMAP's --image_path names "
        "them. Features are extracted unless --features is given, pairs are exhaustive unless --pairs is "
        "given, matches are computed unless --matches is given. An existing database is added to: its "
        "cameras are kept and must have the images' sizes. See docs/ecosystem.md.",
    )
    p.add_argument("--images", metavar="DIR", help="image folder (COLMAP's --image_path)")
    p.add_argument("--database", required=True, metavar="DB", help="COLMAP database file")
    p.add_argument("--pairs", metavar="TXT", help="pairs to match (default: all pairs)")
    p.add_argument("--features", metavar="H5", help="use this features.h5 instead of extracting")
    p.add_argument("--matches", metavar="H5", help="use this matches.h5 instead of matching")
    p.add_argument(
        "--camera-model",
        choices=list(CAMERA_MODELS),
        default="SIMPLE_RADIAL",
        help="model of new cameras (default: SIMPLE_RADIAL, focal 1.2 * max(W, H))",
    )
    p.add_argument("--single-camera", action="store_true", help="all new images share one camera")
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="write the raw matches only (verify them with colmap matches_importer)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace keypoints (and their matches) of images the database already has keypoints for",
    )
    p.add_argument(
        "--adjust-keypoints",
        action="store_true",
        help="move keypoints below the cell size so that every track of verified matches agrees, before "
        "writing them (verifies twice; a --features file must come from silk extract --neighbours; "
        "docs/subpixel.md)",
    )
    add_matcher_args(p, refine=False)
    add_pair_list_gate_arg(p)
    add_model_args(p)
    add_detection_args(p)
    p.set_defaults(func=run_colmap)


def run_colmap(args: argparse.Namespace) -> int:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        counts = build_colmap_database(
            args.database, args.images, args.features, args.pairs, args.matches,
            model=None if args.features else load_model(args),
            extract_options={"resize": args.resize, **detection_options(args)},
            matcher=None if args.matches else Matcher(args.matcher, **matcher_options(args)),
            camera_model=args.camera_model,
            single_camera=args.single_camera, verify=not args.no_verify, overwrite=args.overwrite, progress=True,
            gate=not args.no_gate, adjust=args.adjust_keypoints,
        )
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    verified = "not verified" if args.no_verify else f"{counts['verified_pairs']} with two-view geometry"
    if counts["unverified_pairs"]:
        verified += (f", {counts['unverified_pairs']} unverified: pycolmap crashed on every try, raw matches "
                     "kept for colmap matches_importer")
    rejected = f", {counts['rejected_pairs']} with no matches: unrelated-pairs gate" if counts["rejected_pairs"] else ""
    print(f"wrote {counts['images']} images, matches of {counts['pairs']} pairs ({verified}{rejected}) to "
          f"{args.database}")
    return 0


# ------------------------------------------------------------------------------------------------ export-npz
def _register_export_npz(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "export-npz",
        description="Write one OUT/<name>.npz per image with keypoints (N x 2, x y, pixel centres at "
        "integers), scores (N), descriptors (N x D) and image_size (W, H): from IMAGE files (extracted "
        "here) or from the images of --features.",
    )
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image files (or give --features)")
    p.add_argument("--features", metavar="H5", help="export the images of this features.h5")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--root", default=None, help="name images by their path relative to this folder")
    add_overwrite_arg(p)
    add_model_args(p)
    add_detection_args(p)
    p.set_defaults(func=run_export_npz)


def run_export_npz(args: argparse.Namespace) -> int:
    if bool(args.images) == bool(args.features):
        raise SilkError("give either IMAGE files or --features H5")
    if args.features:
        names = feature_names(args.features)

        def features(name: str) -> dict:
            return read_features(args.features, name)
    else:
        paths = dict(named_images(args.images, args.root))
        names = list(paths)
        model, opts = load_model(args), detection_options(args)

        def features(name: str) -> dict:
            return extract_image(model, paths[name], resize=args.resize, **opts)

    make_dir(args.out)
    written = export_npz(names, features, args.out, overwrite=args.overwrite, progress=len(names) > 1)
    print(f"wrote {len(written)} .npz files to {args.out}")
    return 0
