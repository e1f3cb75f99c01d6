"""``silk demo``: match the OpenCV sample pair shipped in the package and draw the result."""

from __future__ import annotations

import argparse

from ..errors import SilkError
from ..files import check_overwrite, make_dir
from ..model.zoo import DEFAULT_MAX_KEYPOINTS
from ..pair import DEMO_PAIR, DEMO_PICTURES, run_demo
from . import add_command
from .common import (
    add_matcher_args,
    add_model_args,
    add_overwrite_arg,
    check_detection_flags,
    load_model,
    matcher_options,
    min_inliers,
    progress_printer,
    weights_description,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "demo",
        description=f"Run a SiLK model (default: the shipped default weights) on the image pair shipped in the "
        f"package ({DEMO_PAIR[0].name}, {DEMO_PAIR[1].name}: OpenCV samples, see data/SOURCES.txt), fit a "
        "homography and write matches.png and keypoints.png into --out.",
    )
    p.add_argument("--out", default="silk-demo", metavar="DIR", help="output folder, created if needed (default: silk-demo)")
    p.add_argument("--max-keypoints", type=int, default=None, metavar="N",
                   help=f"keypoints per image (default: the model's, {DEFAULT_MAX_KEYPOINTS} for the shipped models)")
    add_overwrite_arg(p)
    add_matcher_args(p, pair_gate=True)
    add_model_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_detection_flags({"max_keypoints": args.max_keypoints})
    try:
        weights = weights_description(args)
    except SilkError as e:
        raise SilkError(f"{e} (run the demo with your own weights: silk demo --checkpoint PATH)") from None
    out = make_dir(args.out)  # fail before the slow steps
    for name in DEMO_PICTURES:
        check_overwrite(out / name, args.overwrite)
    say = progress_printer()
    say(f"loading {weights}")
    model = load_model(args)
    result, written = run_demo(model, args.out, progress=say, method=args.matcher,
                               matcher_options=matcher_options(args),
                               max_keypoints=args.max_keypoints, **min_inliers(args))
    print(result.summary())
    print(f"weights: {weights}")
    for path in written:
        print(f"wrote {path}")
    return 0
