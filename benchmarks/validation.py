"""Validation table of the shipped models next to OpenCV SIFT and ORB, measured in one run.

Writes an HPatches-layout set from the *validation* split of a photo folder (files with
``crc32(name) % 10 == 0``, never trained on: :func:`silk_keypoints.training.data.split_train_val`) —
random homographies (``v_*``) and illumination changes (``i_*``), fixed seed — and evaluates every method
at the same keypoint budget: repeatability@3, MMA@1/3/5, homography accuracy @1/3/5 px (mean corner error
of a RANSAC fit) and its AUC up to 1 and 3 px (finer-grained than the accuracy where every method gets
every pair within the threshold), #keypoints, #matches, ms per image. Our convention (pixel centres at
integers), images at their generated size, plain mutual nearest neighbours; matched SiLK points are refined
below the cell size as ``Matcher`` does by default (:mod:`silk_keypoints.refinement`; ``--no-refine``: the
ablation).
Repeatability always uses the keypoints as detected. ``--strength 0.5 2`` makes the hard set: the change
grows from image 2 to image 6 of each sequence up to twice the default's (rotations up to 30 deg, scales
0.64-1.56, strong gamma and shading), closer to real HPatches.

    python benchmarks/validation.py --photos ../shared/data/train-photos --models fast tiny
    python benchmarks/validation.py --photos ../shared/data/train-photos --models fast tiny --strength 0.5 2
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from silk_keypoints.evaluation.extractors import build_extractors
from silk_keypoints.evaluation.hpatches import evaluate_hpatches, get_protocol
from silk_keypoints.evaluation.report import hpatches_table, write_json
from silk_keypoints.evaluation.testdata import make_hpatches
from silk_keypoints.io import list_images
from silk_keypoints.training.data import split_train_val

COLUMNS = ("rep@3", "mma@1", "mma@3", "mma@5", "h_acc@1", "h_acc@3", "h_acc@5", "h_auc@1", "h_auc@3")


def add_set_args(p: argparse.ArgumentParser) -> None:
    """The options of the validation set (shared with benchmarks/subpixel.py)."""
    p.add_argument("--photos", default="../shared/data/train-photos", help="photo folder (its validation split is used)")
    p.add_argument("--max-keypoints", type=int, default=2048)
    p.add_argument("--sequences", type=int, default=20)
    p.add_argument("--size", default="480x360", help="WxH of the generated images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strength", type=float, nargs=2, default=(1.0, 1.0), metavar=("LO", "HI"),
                   help="change in image 2 and image 6 of each sequence (make_hpatches); 0.5 2: the hard set")
    p.add_argument("--viewpoint-light", type=float, default=0.3,
                   help="photometric change of the viewpoint images (make_hpatches; 1: as strong as i_*)")


def parse_size(text: str) -> tuple[int, int]:
    """(W, H) of a ``WxH`` option."""
    w, h = (int(v) for v in text.lower().split("x"))
    return w, h


def validation_photos(photos: str, tmp: str) -> tuple[Path, int]:
    """A folder under ``tmp`` holding copies of the validation split of ``photos``; and their number."""
    folder = Path(tmp) / "val-images"
    if not folder.is_dir():
        folder.mkdir()
        for path in split_train_val(list_images(photos))[1]:
            shutil.copy(path, folder / path.name)
    return folder, len(list_images(folder))


def validation_set(args: argparse.Namespace, tmp: str) -> tuple[Any, int]:
    """The HPatches-layout sequences of the photo folder's validation split, written under ``tmp``; and the
    number of validation photos."""
    folder, count = validation_photos(args.photos, tmp)
    root = make_hpatches(Path(tmp) / "hpatches", folder, args.sequences, parse_size(args.size), args.seed,
                         tuple(args.strength), args.viewpoint_light)
    return root, count


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_set_args(p)
    p.add_argument("--models", nargs="*", default=["fast", "tiny"], help="shipped model names")
    p.add_argument("--checkpoint", nargs="*", default=[], help="extra weight files")
    p.add_argument("--baselines", default="sift,orb")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="folder for the JSON results (optional)")
    p.add_argument("--no-refine", action="store_true", help="keep matched points on the cell grid (an ablation)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        data, photos = validation_set(args, tmp)
        baselines = [b for b in args.baselines.split(",") if b.strip()]
        extractors = build_extractors(args.models, args.checkpoint, baselines, args.max_keypoints)
        protocol = get_protocol("d2net", max_keypoints=args.max_keypoints, table=COLUMNS, refine=not args.no_refine)
        result = evaluate_hpatches(data, extractors, protocol, seed=args.seed, progress=False)
    refine = "matches refined below the cell size" if protocol.refine else "matches on the cell grid"
    print(f"{photos} validation photos -> {args.sequences} sequences of {args.size}, strength "
          f"{args.strength[0]:g}-{args.strength[1]:g} (viewpoint light {args.viewpoint_light:g}), "
          f"{args.max_keypoints} keypoints, mutual NN ({refine}), seed {args.seed}\n")
    print(hpatches_table(result))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        print("wrote", write_json(Path(args.out) / "validation.json", result))


if __name__ == "__main__":
    main()
