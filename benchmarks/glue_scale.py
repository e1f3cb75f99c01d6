"""Matchers under zoom and rotation: a validation photo against itself shrunk and turned into a cluttered view.

The hard set's viewpoint pairs (``make_hpatches``) cannot zoom out far: the inverse homography must keep the
image corners inside the photo's canvas, so view 1 never shows the photo at half its size. Real pairs do (the
demo's ``box`` -> ``box_in_scene`` is a 0.5x zoom with a turn). Here view 0 is a validation photo at ``--size``,
view 1 the same photo scaled by s and turned by r degrees about its centre, pasted on another validation photo
(clutter: keypoints with no partner), at the same size. Ground truth: the similarity. Per matcher and (s, r):
correct within 3 px / matches, summed over the photos. Same keypoints for every matcher
(the extractor's, ``--positions``). CPU.

    python benchmarks/glue_scale.py --weights runs/glue-fast/fast-current.safetensors \
        runs/glue-fast-mixed/mixed1024-ema.safetensors --threads 1
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
import torch

from silk_keypoints import Matcher, SiLK
from silk_keypoints.cli.common import parse_image_size
from silk_keypoints.errors import SilkError
from silk_keypoints.evaluation.report import format_table
from silk_keypoints.evaluation.testdata import cover_crop, paste_view, rotation_about
from silk_keypoints.geometry import homography_errors
from silk_keypoints.io import list_images, load_image
from silk_keypoints.model.config import POSITIONS
from silk_keypoints.training.data import split_train_val


def count(matcher: Matcher, f0, f1, H: np.ndarray, px: float = 3.0) -> tuple[int, int]:
    """(matches, matches within ``px`` of the truth ``H``)."""
    out = matcher({"image0": f0, "image1": f1})
    p0, p1 = out["points0"][0].double(), out["points1"][0].double()
    return len(p0), int((homography_errors(p0, p1, H) <= px).sum())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--photos", default="../shared/data/train-photos", help="photo folder (its validation split)")
    p.add_argument("--count", type=int, default=6, help="validation photos used")
    p.add_argument("--size", default="480x360")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.7, 0.5, 0.35])
    p.add_argument("--rotations", type=float, nargs="+", default=[0.0, 30.0])
    p.add_argument("--weights", nargs="*", default=[], help="SiLKGlue .safetensors files")
    p.add_argument("--threshold", type=float, default=0.1, help="glue: keep P > T")
    p.add_argument("--extractor", default="fast")
    p.add_argument("--positions", choices=POSITIONS, default=None)
    p.add_argument("--max-keypoints", type=int, default=2048)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", help="also write the table here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    try:
        size = parse_image_size(args.size, "480x360")
    except SilkError as e:
        p.error(str(e))
    _, val = split_train_val(list_images(args.photos))
    photos = [cover_crop(load_image(f), size, np.random.default_rng(i)) for i, f in enumerate(val[:args.count + 1])]
    model = SiLK.from_pretrained(args.extractor).eval()
    matchers = {"mnn": Matcher("mnn"), "ratio": Matcher("ratio")}
    for w in args.weights:
        matchers[f"glue:{Path(w).stem}@{args.threshold:g}"] = Matcher("glue", glue_weights=w, threshold=args.threshold)
    cases = list(itertools.product(args.scales, args.rotations))
    sums = {(name, c): [0, 0] for name in matchers for c in cases}
    for i in range(len(photos) - 1):
        f0 = model.extract(photos[i], max_keypoints=args.max_keypoints, positions=args.positions)
        for c in cases:
            H = rotation_about(size, c[1], c[0])
            f1 = model.extract(paste_view(photos[i], photos[i + 1], H), max_keypoints=args.max_keypoints,
                               positions=args.positions)
            for name, matcher in matchers.items():
                n, ok = count(matcher, f0, f1, H)
                sums[name, c][0] += n
                sums[name, c][1] += ok
    columns = [f"x{s:g} {r:g}deg" for s, r in cases]
    rows = [[name, *(f"{sums[name, c][1]} / {sums[name, c][0]}" for c in cases)] for name in matchers]
    title = (f"Correct within 3 px / matches, summed over {len(photos) - 1} validation photos ({args.size}; view 1: "
             f"the photo scaled and turned on another photo), {args.extractor} "
             f"{args.positions or model.config.positions}, {args.max_keypoints} keypoints")
    text = format_table(["matcher", *columns], rows, title)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
