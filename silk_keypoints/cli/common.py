"""Arguments shared by several sub-commands and the model loading they imply."""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..devices import resolve_device
from ..errors import SilkError
from ..files import MAX_PIXELS
from ..matching import GATE_MAX_DISTANCE, GATE_MIN_INLIER_RATIO, GATE_MIN_INLIERS, MATCHERS
from ..model import SiLK, SiLKConfig
from ..model.config import POSITIONS
from ..model.pipeline import detection_options as checked_options
from ..model.zoo import DEFAULT_MAX_KEYPOINTS, DEFAULT_PRETRAINED, available_pretrained, pretrained_path


def model_help() -> str:
    """The help of ``--model``: the shipped names and the default."""
    return f"shipped model: {', '.join(available_pretrained())} (default: {DEFAULT_PRETRAINED}; see silk models)"


def add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--model", metavar="NAME", help=model_help())
    group.add_argument("--checkpoint", metavar="PATH", help="weight file: ours (.safetensors, .pt) or an original SiLK .ckpt")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default: cpu)")


def add_detection_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-keypoints", type=int, default=None, metavar="N",
                        help=f"keep the N best keypoints per image (default: the model's, {DEFAULT_MAX_KEYPOINTS} for "
                        "the shipped models)")
    parser.add_argument("--threshold", type=float, default=None, metavar="P",
                        help="keep keypoints with probability > P (default: the model's, 0)")
    parser.add_argument("--nms", type=int, default=None, metavar="R",
                        help="non-maximum suppression radius in output cells (default: the model's)")
    parser.add_argument("--positions", choices=POSITIONS, default=None,
                        help="where keypoints are placed: 'cells', the best cells of the model's grid, or "
                        "'extrema', the sub-pixel difference-of-Gaussians extrema of the image where the model's "
                        "keypoint probability is highest (default: the model's)")
    parser.add_argument("--resize", type=int, default=None, metavar="PX",
                        help="downscale images so their long side is at most PX (keypoints are mapped back)")
    add_max_pixels_arg(parser)


def pixel_count(text: str) -> int:
    """argparse type of ``--max-pixels``: a number of pixels >= 1 in any number spelling (24000000, 24e6)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of pixels, e.g. 24000000 or 24e6, got {text!r}") from None
    if not math.isfinite(value) or value < 1:
        raise argparse.ArgumentTypeError(f"must be a number of pixels >= 1, got {text!r}")
    return int(value)


def parse_image_size(text: str, example: str = "320x240") -> tuple[int, int]:
    """(W, H) of a ``--size WxH`` option, both sides at least 32 px; ``example`` shows the form in the error."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SilkError(f"--size must look like {example}, got {text!r}") from None
    if min(w, h) < 32:
        raise SilkError(f"--size {text}: images must be at least 32x32")
    return w, h


def add_max_pixels_arg(parser: argparse.ArgumentParser) -> None:
    """``--max-pixels``: the largest image decoded and run (the model's ``max_pixels``), see :func:`load_model`."""
    parser.add_argument("--max-pixels", type=pixel_count, default=None, metavar="N",
                        help=f"refuse images of more than N pixels, checked before decoding (default: "
                        f"{MAX_PIXELS / 1e6:g} MP; memory per MP: docs/reliability.md)")


def add_bulk_args(parser: argparse.ArgumentParser, item: str) -> None:
    """``--workers``, ``--strict``, ``--quiet``: the options of the resumable commands (:mod:`silk_keypoints.bulk`)."""
    if item == "image":
        parser.add_argument("--workers", type=int, default=0, metavar="N",
                            help="processes that read, decode and resize images (default: 0, in the main process); "
                            "on CPU each one also runs the network, on its share of the torch threads")
    parser.add_argument("--strict", action="store_true",
                        help=f"stop at the first {item} that fails (default: skip it, list it in OUT.failed.txt)")
    parser.add_argument("--quiet", action="store_true", help=f"no progress bar (the {item}s/s and ETA)")


def add_overwrite_arg(parser: argparse.ArgumentParser) -> None:
    """``--overwrite``: the one rule of every command that writes files (:func:`~silk_keypoints.files.check_overwrite`)."""
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")


def detection_options(args: argparse.Namespace) -> dict:
    """The detection options of ``--max-keypoints``, ``--threshold``, ``--nms``, checked here (before the model
    is loaded) by :func:`~silk_keypoints.model.pipeline.detection_options`, with the CLI's names in errors."""
    opts = {"max_keypoints": args.max_keypoints, "detection_threshold": args.threshold, "nms_radius": args.nms,
            "positions": args.positions}
    check_detection_flags(opts)
    if getattr(args, "resize", None) is not None and args.resize < 1:
        raise SilkError(f"--resize must be a long side in pixels >= 1, got {args.resize}")
    return opts


_FLAGS = {"max_keypoints": "--max-keypoints", "detection_threshold": "--threshold", "nms_radius": "--nms"}


def check_detection_flags(options: dict) -> None:
    """Check detection ``options`` (None: the model's) as the pipeline does, naming the CLI flag in the error."""
    try:
        checked_options(SiLKConfig(), options)
    except SilkError as e:
        key = next((k for k in _FLAGS if str(e).startswith(k)), None)
        raise SilkError(str(e).replace(key, _FLAGS[key], 1) if key else str(e)) from None


def load_model(args: argparse.Namespace, device: torch.device | None = None) -> SiLK:
    """The model of ``--model`` / ``--checkpoint`` in eval mode on ``device`` (default: ``--device``), with
    ``--max-pixels`` (if the command has it) as its ``max_pixels``."""
    device = device or resolve_device(args.device, "--device")
    model = SiLK.from_checkpoint(args.checkpoint) if args.checkpoint else SiLK.from_pretrained(args.model)
    if getattr(args, "max_pixels", None) is not None:
        model.config = model.config.replace(max_pixels=args.max_pixels)
    return model.to(device).eval()


def weights_path(args: argparse.Namespace) -> Path:
    """The weight file of ``--checkpoint`` / ``--model``."""
    return Path(args.checkpoint) if args.checkpoint else pretrained_path(args.model)


def weights_description(args: argparse.Namespace) -> str:
    """``checkpoint PATH`` or ``shipped weights 'NAME' (PATH)`` for ``--checkpoint`` / ``--model``."""
    if args.checkpoint:
        return f"checkpoint {args.checkpoint}"
    path = weights_path(args)
    return f"shipped weights '{path.stem}' ({path})"


def progress_printer() -> Callable[[str], None]:
    """A function printing ``[seconds since now] message`` lines to stderr."""
    start = time.perf_counter()

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - start:5.1f} s] {msg}", file=sys.stderr, flush=True)

    return say


def matcher_options(args: argparse.Namespace) -> dict:
    """:class:`~silk_keypoints.matching.Matcher` options (besides ``--matcher``) from ``--match-threshold``,
    ``--temperature`` and, where the command has them, ``--max-distance`` and ``--no-refine``; options left
    unset are left out (the matcher's defaults)."""
    opts = {"temperature": args.temperature, "max_distance": getattr(args, "max_distance", None)}
    opts["ratio_threshold" if args.matcher == "ratio" else "threshold"] = args.match_threshold
    if args.matcher == "glue":  # the weights trained for --glue-weights, else for this command's --model
        opts["glue_weights"] = args.glue_weights or getattr(args, "model", None) or DEFAULT_PRETRAINED
    elif args.glue_weights:
        raise SilkError("--glue-weights needs --matcher glue")
    if getattr(args, "no_refine", False):
        opts["refine"] = False
    return {k: v for k, v in opts.items() if v is not None}


def min_inliers(args: argparse.Namespace) -> dict:
    """``min_inliers`` / ``min_inlier_ratio`` of :func:`~silk_keypoints.pair.match_pair` from ``--no-gate``."""
    return {"min_inliers": 0, "min_inlier_ratio": 0.0} if args.no_gate else {}


class _DeprecatedAlias(argparse.Action):
    """An old spelling of an option: stores into the new option's ``dest`` and says so on stderr."""

    def __init__(self, option_strings: list[str], dest: str, new: str = "", **kwargs) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"{parser.prog}: {option_string} is deprecated, use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_matcher_args(p: argparse.ArgumentParser, refine: bool = True, max_distance: bool = True,
                     pair_gate: bool = False) -> None:
    """The matching options of every command: ``--matcher`` (``--method``: a deprecated alias),
    ``--match-threshold``, ``--temperature``, optionally ``--max-distance``, ``--no-gate`` (the pair gate of a
    fitted model) and ``--no-refine``; read them with :func:`matcher_options` and :func:`min_inliers`."""
    p.add_argument("--matcher", choices=MATCHERS, default="mnn",
                   help="matching rule (default: mnn); glue: the learned SiLKGlue (docs/glue.md)")
    p.add_argument("--method", choices=MATCHERS, dest="matcher", action=_DeprecatedAlias, new="--matcher",
                   default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.add_argument("--match-threshold", type=float, default=None, metavar="T",
                   help="ratio: keep best/second-best distance < T (default 0.6); double-softmax: keep "
                   "1 - P < T (default 0.6; the original's examples use 0.9 and 0.99); glue: keep P > T "
                   "(default 0.1)")
    p.add_argument("--glue-weights", default=None, metavar="NAME|FILE",
                   help="glue: SiLKGlue weights shipped for extractor NAME or a .safetensors file (default: "
                   "those of --model, else of the default model)")
    p.add_argument("--temperature", type=float, default=None, metavar="T",
                   help="double-softmax temperature for descriptors of norm 1.41 (default 0.1)")
    if max_distance:
        p.add_argument("--max-distance", type=float, default=None, metavar="D",
                       help=f"drop matches with cosine distance > D, any method (default: keep them; {GATE_MAX_DISTANCE}: "
                       "the descriptor gate against unrelated pairs, see docs/ecosystem.md)")
    if pair_gate:
        p.add_argument("--no-gate", action="store_true",
                       help=f"accept a fitted model with fewer than {GATE_MIN_INLIERS} inliers or under "
                       f"{100 * GATE_MIN_INLIER_RATIO:.0f}%% of the matches (default: no model: the unrelated-pairs gate)")
    if refine:
        add_refine_arg(p)


def add_pair_list_gate_arg(p: argparse.ArgumentParser) -> None:
    """``--no-gate`` of the commands that match pair lists (``match-pairs``, ``colmap``)."""
    p.add_argument("--no-gate", action="store_true",
                   help=f"keep the matches of pairs that no homography explains with {GATE_MIN_INLIERS} inliers and "
                   f"{100 * GATE_MIN_INLIER_RATIO:.0f}%% of the matches (default: such pairs get no matches: the "
                   "unrelated-pairs gate, docs/ecosystem.md)")


def add_refine_arg(p: argparse.ArgumentParser) -> None:
    """``--no-refine``: keep matched points on the model's cell grid (see :mod:`silk_keypoints.refinement`)."""
    p.add_argument("--no-refine", action="store_true",
                   help="do not refine matched points below the cell size (default: refine, see docs/conventions.md)")
