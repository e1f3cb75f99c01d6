"""``silk export onnx``: the dense network as an ONNX file, checked on onnxruntime."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..ecosystem.onnx import DEFAULT_OPSET, check_example_size, compare_with_torch, export_onnx
from ..errors import SilkError
from ..files import atomic_write, check_overwrite
from ..model import SiLK
from . import add_command
from .common import add_overwrite_arg, model_help


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "export")
    formats = p.add_subparsers(dest="format", metavar="FORMAT", required=True)
    o = formats.add_parser(
        "onnx",
        help="write the dense network as an ONNX file",
        description="Write the dense network (BatchNorm folded, float32) as an ONNX file with outputs "
        "logits, probability (B, 1, Hf, Wf) and unit-norm descriptors (B, D, Hf, Wf); keypoint selection runs "
        "outside the graph (OnnxSiLK in silk_keypoints.ecosystem.onnx). The file is checked on onnxruntime "
        "against torch before this command returns. See docs/performance.md.",
    )
    src = o.add_mutually_exclusive_group()
    src.add_argument("--model", metavar="NAME", help=model_help())
    src.add_argument(
        "--checkpoint", metavar="PATH", help="weight file: ours (.safetensors, .pt) or an original .ckpt"
    )
    o.add_argument("--out", required=True, metavar="ONNX", help="output .onnx file")
    o.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, metavar="N", help=f"ONNX opset (default: {DEFAULT_OPSET})"
    )
    o.add_argument("--static", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="fix the graph to batch 1 x H x W (default: dynamic batch, height and width)")
    o.add_argument("--dynamic", action="store_true", help="the default; accepted for old scripts")
    o.add_argument("--height", type=int, default=480,
                   help="height of the tracing and check input of a dynamic graph (default: 480)")
    o.add_argument("--width", type=int, default=640,
                   help="width of the tracing and check input of a dynamic graph (default: 640)")
    add_overwrite_arg(o)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = check_overwrite(args.out, args.overwrite)
    model = SiLK.from_checkpoint(args.checkpoint) if args.checkpoint else SiLK.from_pretrained(args.model)
    size = tuple(args.static) if args.static else (args.height, args.width)
    check_example_size(model, size)
    diff = 0.0

    def export_and_check(tmp: Path) -> None:  # the file appears at --out only once onnxruntime agrees
        nonlocal diff
        export_onnx(model, tmp, opset=args.opset, dynamic=not args.static, example_size=size)
        try:
            diff = compare_with_torch(model, tmp, size)
        except Exception as e:  # noqa: BLE001 -- onnxruntime's errors (allocation, ...) have many types
            first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
            raise SilkError(f"the onnxruntime check of the export failed, nothing written: {first}") from None

    atomic_write(out, export_and_check)
    shape = f"fixed 1x{size[0]}x{size[1]}" if args.static else "dynamic batch x height x width"
    print(
        f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, opset {args.opset}, {shape}); "
        f"onnxruntime vs torch: max |diff| {diff:.1e}"
    )
    return 0
