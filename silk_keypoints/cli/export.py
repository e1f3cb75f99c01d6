"""``silk export onnx``: the dense network as an ONNX file, checked on onnxruntime."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..ecosystem.onnx import DEFAULT_OPSET, compare_with_torch, export_onnx
from ..errors import SilkError
from ..model import SiLK


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a model to another runtime (ONNX)")
    formats = p.add_subparsers(dest="format", metavar="FORMAT", required=True)
    o = formats.add_parser(
        "onnx",
        help="write the dense network as an ONNX file",
        description="Write the dense network (BatchNorm folded, float32) as an ONNX file with outputs "
        "logits, "
        "probability (B, 1, Hf, Wf) and unit-norm descriptors (B, D, Hf, Wf). Sparse selection runs outside "
        "the graph (silk_keypoints.ecosystem.onnx.OnnxSiLK / select_keypoints_numpy). The file is checked on "
        "onnxruntime against torch before this command returns.",
    )
    src = o.add_mutually_exclusive_group()
    src.add_argument("--model", metavar="NAME", help="shipped weights to export (default: the default model)")
    src.add_argument(
        "--checkpoint", metavar="PATH", help="weight file: ours (.safetensors, .pt) or an original .ckpt"
    )
    o.add_argument("--out", required=True, metavar="ONNX", help="output .onnx file")
    o.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, metavar="N", help=f"ONNX opset (default: {DEFAULT_OPSET})"
    )
    o.add_argument(
        "--dynamic",
        action="store_true",
        help="free batch size, height and width (default: fixed to --height x --width, batch 1)",
    )
    o.add_argument(
        "--height",
        type=int,
        default=480,
        help="input height of the fixed-size graph, or of the check and tracing input (default: 480)",
    )
    o.add_argument(
        "--width",
        type=int,
        default=640,
        help="input width of the fixed-size graph, or of the check and tracing input (default: 640)",
    )
    o.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise SilkError(f"{out} exists (use --overwrite to replace it)")
    model = SiLK.from_checkpoint(args.checkpoint) if args.checkpoint else SiLK.from_pretrained(args.model)
    export_onnx(model, out, opset=args.opset, dynamic=args.dynamic, example_size=(args.height, args.width))
    diff = compare_with_torch(model, out, (args.height, args.width))
    shape = "dynamic batch x height x width" if args.dynamic else f"fixed 1x{args.height}x{args.width}"
    print(
        f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, opset {args.opset}, {shape}); "
        f"onnxruntime vs torch: max |diff| {diff:.1e}"
    )
    return 0
