"""Arguments shared by several sub-commands and the model loading they imply."""

from __future__ import annotations

import argparse

import torch

from ..errors import SilkError
from ..model import SiLK


def add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--model", metavar="NAME", help="shipped weights to use (default: the default model)")
    group.add_argument("--checkpoint", metavar="PATH", help="weight file: ours (.safetensors, .pt) or an original SiLK .ckpt")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default: cpu)")


def add_detection_args(parser: argparse.ArgumentParser, max_keypoints: int = 2048) -> None:
    parser.add_argument("--max-keypoints", type=int, default=max_keypoints, metavar="N",
                        help=f"keep the N best keypoints per image (default: {max_keypoints})")
    parser.add_argument("--threshold", type=float, default=None, metavar="P",
                        help="keep keypoints with probability > P (default: the model's, 0)")
    parser.add_argument("--nms", type=int, default=None, metavar="R",
                        help="non-maximum suppression radius in output cells (default: the model's)")
    parser.add_argument("--resize", type=int, default=None, metavar="PX",
                        help="downscale images so their long side is at most PX (keypoints are mapped back)")


def detection_options(args: argparse.Namespace) -> dict:
    return {"max_keypoints": args.max_keypoints, "detection_threshold": args.threshold, "nms_radius": args.nms}


def load_model(args: argparse.Namespace) -> SiLK:
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SilkError(f"--device {args.device}: CUDA is not available on this machine")
    model = SiLK.from_checkpoint(args.checkpoint) if args.checkpoint else SiLK.from_pretrained(args.model)
    return model.to(args.device).eval()


def matcher_options(method: str, args: argparse.Namespace) -> dict:
    """:class:`~silk_keypoints.matching.Matcher` options from ``--match-threshold``, ``--temperature`` and,
    where the command has them, ``--max-distance`` and ``--no-refine``; options left unset are left out (the
    matcher's defaults)."""
    opts = {"temperature": args.temperature, "max_distance": getattr(args, "max_distance", None)}
    opts["ratio_threshold" if method == "ratio" else "threshold"] = args.match_threshold
    if getattr(args, "no_refine", False):
        opts["refine"] = False
    return {k: v for k, v in opts.items() if v is not None}


def add_refine_arg(p: argparse.ArgumentParser) -> None:
    """``--no-refine``: keep matched points on the model's cell grid (see :mod:`silk_keypoints.refinement`)."""
    p.add_argument("--no-refine", action="store_true",
                   help="do not refine matched points below the cell size (default: refine, see docs/conventions.md)")
