"""``silk eval hpatches|pose|registration|imc2022`` and ``silk make-testdata hpatches|pose|rgbd``."""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import torch

from ..devices import resolve_device
from ..errors import SilkError
from ..evaluation import hpatches, pose, registration, report, testdata
from ..evaluation.extractors import BASELINES, build_extractors
from ..files import check_overwrite, make_dir
from ..matching import Matcher
from . import add_command
from .common import (
    add_matcher_args,
    add_overwrite_arg,
    check_detection_flags,
    matcher_options,
    parse_image_size,
)


def register(sub: argparse._SubParsersAction) -> None:
    ev = add_command(sub, "eval", description="Evaluate SiLK models and baselines on the paper's benchmarks. See "
                        "docs/evaluation.md for the data layouts and the command of each table.")
    evsub = ev.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)

    p = evsub.add_parser("hpatches", help="HPatches sequences: repeatability, MMA, homography accuracy",
                         description="HPatches sequences: repeatability, MMA and homography accuracy of each "
                         "pair, per protocol. Data layout and protocols: docs/evaluation.md.")
    p.add_argument("root", metavar="ROOT", help="the hpatches-sequences-release folder")
    p.add_argument("--protocol", choices=sorted(hpatches.PROTOCOLS), default="silk",
                   help="silk: the SiLK paper's; d2net: D2-Net / glue-factory's (default: silk)")
    p.add_argument("--dense", action="store_true", help="match the dense descriptors of every cell (SiLK models only)")
    p.add_argument("--refine", action=argparse.BooleanOptionalAction, default=None,
                   help="refine matched points below the cell size (default: the protocol's: off for silk, on for d2net)")
    p.add_argument("--short-side", type=int, default=None, metavar="PX",
                   help="override the protocol's resize of the shorter image side (0: keep the original size)")
    _extractor_args(p, "the protocol's: silk 10001, d2net 4096")
    _output_args(p)
    p.set_defaults(func=run_hpatches)

    p = evsub.add_parser("pose", help="relative pose (ScanNet-1500 / MegaDepth-1500 style): AUC@5/10/20",
                         description="Relative pose from matched keypoints (essential matrix), AUC at 5/10/20 degrees, on "
                         "ScanNet-1500 / MegaDepth-1500 style pair files. Pair formats: docs/evaluation.md.")
    p.add_argument("pairs", nargs="+", metavar="PAIRS",
                   help="pair files (.json, .csv, LoFTR ScanNet test.npz, MegaDepth scene info .npz), concatenated")
    p.add_argument("--root", default=None, help="folder the image paths are relative to (default: the pair file's folder)")
    p.add_argument("--intrinsics", default=None, metavar="NPZ", help="ScanNet intrinsics.npz (default: beside PAIRS)")
    p.add_argument("--protocol", choices=sorted(pose.PROTOCOLS), default="scannet",
                   help="image resize and defaults: scannet (long side 640), megadepth (1600) (default: scannet)")
    p.add_argument("--resize", type=int, default=None, metavar="PX", help="override the protocol's long side")
    p.add_argument("--ransac-threshold", type=float, default=None, metavar="PX",
                   help="essential-matrix inlier threshold in pixels (default: 0.5)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="evaluate the first N pairs only")
    add_matcher_args(p, max_distance=False)
    _extractor_args(p, "2048")
    _output_args(p)
    p.set_defaults(func=run_pose)

    p = evsub.add_parser("registration", help="RGB-D point-cloud registration (ScanNet): rotation, translation, chamfer",
                         description="RGB-D point-cloud registration of ScanNet frame pairs: rotation and translation errors, "
                         "chamfer distance. Data layout: docs/evaluation.md.")
    p.add_argument("root", metavar="ROOT", help="a ScanNet scene folder or a folder of scene folders")
    p.add_argument("--pairs", default=None, metavar="FILE", help="pairs file: lines 'scene frame0 frame1'")
    p.add_argument("--frame-gap", type=int, default=20, metavar="N", help="pair frames N apart (default: 20)")
    p.add_argument("--inlier-threshold", type=float, default=0.05, metavar="M",
                   help="RANSAC inlier distance in metres (default: 0.05)")
    p.add_argument("--chamfer-stride", type=int, default=5, metavar="PX",
                   help="sample the depth maps every PX pixels for the chamfer distance (default: 5)")
    add_matcher_args(p, max_distance=False)
    _extractor_args(p, "2048")
    _output_args(p)
    p.set_defaults(func=run_registration)

    p = evsub.add_parser("imc2022", help="write an IMC2022 submission CSV (a fundamental matrix per pair)",
                         description="Estimate a fundamental matrix (USAC_MAGSAC) for every pair of an IMC2022 "
                         "test.csv and write the Kaggle submission file (sample_id,fundamental_matrix).")
    p.add_argument("test_csv", metavar="TEST_CSV", help="IMC2022 test.csv")
    p.add_argument("--images", default=None, metavar="DIR", help="test_images folder (default: beside TEST_CSV)")
    p.add_argument("--submission", required=True, metavar="CSV", help="output submission file")
    p.add_argument("--resize", type=int, default=None, metavar="PX", help="resize the long side to PX (default: no)")
    p.add_argument("--ransac-threshold", type=float, default=0.5, metavar="PX", help="inlier threshold (default: 0.5)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_overwrite_arg(p)
    add_matcher_args(p, max_distance=False)
    _extractor_args(p, "2048")
    p.set_defaults(func=run_imc2022)

    mk = add_command(sub, "make-testdata", description="Write small data sets in the layouts of the benchmarks "
                     "(hpatches, pose, rgbd) from a folder of images or procedural textures. See docs/evaluation.md.")
    mk.add_argument("kind", choices=("hpatches", "pose", "rgbd"))
    mk.add_argument("--out", required=True, metavar="DIR", help="output folder")
    mk.add_argument("--images", default=None, metavar="DIR", help="source images (default: procedural textures)")
    mk.add_argument("--count", type=int, default=None, metavar="N",
                    help="sequences (hpatches, default 4), views (pose, default 4) or frames (rgbd, default 4)")
    mk.add_argument("--size", default="320x240", metavar="WxH", help="image size (default: 320x240)")
    mk.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    mk.add_argument("--strength", type=float, nargs=2, default=(1.0, 1.0), metavar=("LO", "HI"),
                    help="hpatches: change in image 2 and image 6, ramped in between (default: 1 1; "
                    "0.5 2 is closer to real HPatches)")
    add_overwrite_arg(mk)
    mk.set_defaults(func=run_make_testdata)


def _extractor_args(p: argparse.ArgumentParser, default_keypoints: str) -> None:
    g = p.add_argument_group("methods (default: the default shipped model)")
    g.add_argument("--model", nargs="+", action="extend", default=[], metavar="NAME", help="shipped weights by name")
    g.add_argument("--checkpoint", nargs="+", action="extend", default=[], metavar="PATH", help="weight files")
    g.add_argument("--baselines", default="", metavar="LIST", help=f"comma-separated OpenCV baselines: {','.join(BASELINES)}")
    g.add_argument("--max-keypoints", type=int, default=None, metavar="N",
                   help=f"keypoints per image (default: {default_keypoints})")
    g.add_argument("--device", default="cpu", help="torch device for the models and matching (default: cpu)")


def _output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=None, metavar="DIR", help="write the JSON results (and plots) into DIR")
    add_overwrite_arg(p)
    p.add_argument("--seed", type=int, default=0, help="random seed of the robust estimators (default: 0)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _check_extractor_args(args: argparse.Namespace) -> None:
    """The cheap checks of the method options, made before any data is read."""
    check_detection_flags({"max_keypoints": args.max_keypoints})
    resolve_device(args.device, "--device")


def _extractors(args: argparse.Namespace, default_keypoints: int):
    device = str(resolve_device(args.device, "--device"))
    baselines = [b for b in args.baselines.split(",") if b.strip()]
    return build_extractors(args.model, args.checkpoint, baselines, args.max_keypoints or default_keypoints, device)


def _outputs(args: argparse.Namespace, *names: str) -> list[Path]:
    """The files ``names`` under ``--out`` (none without ``--out``), checked before the benchmark runs: the
    folder can be made and the files follow the overwrite rule."""
    if not args.out:
        return []
    folder = make_dir(args.out)
    return [check_overwrite(folder / name, args.overwrite) for name in names]


def _matcher(args: argparse.Namespace) -> Matcher:
    return Matcher(args.matcher, **matcher_options(args))


def _seed(seed: int) -> None:
    np.random.seed(seed)
    torch.manual_seed(seed)
    cv2.setRNGSeed(seed)


def run_hpatches(args: argparse.Namespace) -> int:
    _check_extractor_args(args)
    _seed(args.seed)
    protocol = hpatches.get_protocol(args.protocol, short_side=args.short_side, refine=args.refine)
    stem = f"hpatches-{protocol.name}" + ("-dense" if args.dense else "")
    outputs = _outputs(args, f"{stem}.json", f"{stem}-mma.png")
    sequences = hpatches.read_hpatches(args.root, protocol.exclude)
    extractors = _extractors(args, protocol.max_keypoints)
    result = hpatches.evaluate_hpatches(sequences, extractors, protocol, dense=args.dense, seed=args.seed,
                                        progress=not args.no_progress, device=args.device)
    result["root"] = str(args.root)
    print(report.hpatches_table(result))
    if outputs:
        print(f"\nwrote {report.write_json(outputs[0], result)}")
        print(f"wrote {report.plot_mma(result, outputs[1])}")
    return 0


def run_pose(args: argparse.Namespace) -> int:
    _check_extractor_args(args)
    _seed(args.seed)
    protocol = pose.get_protocol(args.protocol, resize=args.resize, ransac_threshold=args.ransac_threshold)
    outputs = _outputs(args, f"pose-{protocol.name}.json")
    if args.limit is not None and args.limit < 1:
        raise SilkError(f"--limit must be >= 1, got {args.limit}")
    pairs = [p for path in args.pairs for p in pose.read_pose_pairs(path, args.root, args.intrinsics)][: args.limit]
    extractors = _extractors(args, protocol.max_keypoints)
    result = pose.evaluate_pose(pairs, extractors, protocol, _matcher(args), args.seed, not args.no_progress)
    print(report.pose_table(result))
    if outputs:
        print(f"\nwrote {report.write_json(outputs[0], result)}")
    return 0


def run_registration(args: argparse.Namespace) -> int:
    _check_extractor_args(args)
    _seed(args.seed)
    outputs = _outputs(args, "registration.json")
    for flag, value in (("--frame-gap", args.frame_gap), ("--chamfer-stride", args.chamfer_stride)):
        if value < 1:
            raise SilkError(f"{flag} must be >= 1, got {value}")
    if not args.inlier_threshold > 0:
        raise SilkError(f"--inlier-threshold must be > 0 (metres), got {args.inlier_threshold}")
    pairs, skipped = registration.read_rgbd_pairs(args.root, args.pairs, args.frame_gap)
    extractors = _extractors(args, 2048)
    result = registration.evaluate_registration(pairs, extractors, _matcher(args), args.inlier_threshold,
                                                args.chamfer_stride, args.seed, not args.no_progress)
    result["skipped_pairs"] = skipped
    print(report.registration_table(result))
    if outputs:
        print(f"\nwrote {report.write_json(outputs[0], result)}")
    return 0


def run_imc2022(args: argparse.Namespace) -> int:
    _check_extractor_args(args)
    check_overwrite(args.submission, args.overwrite)
    if args.resize is not None and args.resize < 1:
        raise SilkError(f"--resize must be a long side in pixels >= 1, got {args.resize}")
    pairs = pose.read_imc2022_test(args.test_csv, args.images)
    extractors = _extractors(args, 2048)
    if len(extractors) != 1:
        raise SilkError("imc2022 writes one submission: give exactly one --model, --checkpoint or baseline")
    r = pose.imc2022_submission(pairs, extractors[0], args.submission, _matcher(args), args.resize,
                                args.ransac_threshold, not args.no_progress)
    print(f"wrote {r['pairs']} fundamental matrices ({r['failures']} failed, written as zeros) to {r['path']}")
    return 0


def run_make_testdata(args: argparse.Namespace) -> int:
    w, h = parse_image_size(args.size)
    if args.count is not None and args.count < 1:
        raise SilkError(f"--count must be >= 1, got {args.count}")
    count = 4 if args.count is None else args.count
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise SilkError(f"--out {out} is a file, expected a folder")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:  # --overwrite: the files are written over
        raise SilkError(f"{out} exists: pass --overwrite (Python: overwrite=True) to replace it")
    make_dir(out)
    if args.kind == "hpatches":
        out = testdata.make_hpatches(args.out, args.images, count, (w, h), args.seed, tuple(args.strength))
    elif args.kind == "pose":
        out = testdata.make_pose_dataset(args.out, args.images, count, (w, h), args.seed)
    else:
        out = testdata.make_rgbd_dataset(args.out, args.images, count, size=(w, h), seed=args.seed)
    print(f"wrote a {args.kind} test data set to {out}")
    return 0
