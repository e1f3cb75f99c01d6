"""Unrelated-pairs gate: how many verified matches related and unrelated image pairs keep under each gate.

Related pairs, all made from the *validation* split of a photo folder
(:func:`silk_keypoints.training.data.split_train_val`, never trained on): the default and the hard
(``--strength 0.5 2``) validation sequences (benchmarks/validation.py, pairs 1-k), a rendered 3-D scene of
planes textured with validation photos (:func:`~silk_keypoints.evaluation.testdata.make_pose_dataset`, every
pair of 6 views) and the shipped demo pair (box, box_in_scene: real photos), and with ``--pairs DIR`` six real pairs of one
scene each (benchmarks/fetch_pairs.sh: a hand-held viewpoint change, aerial photos, a street, video frames, a
rendered mesh). Unrelated pairs: every pair of two different validation photos, each demo image with each
validation photo, and with ``--pairs`` one view of each real scene with one of every other.

For each gate and model: the share of the related pairs' verified inliers (no gate = 100 %) it keeps, and the
mean / max number of verified matches of the unrelated pairs. Verified = inliers of the geometry each command
fits: a USAC_MAGSAC homography at 3 px (``silk match``'s default) and COLMAP's own two-view verification
(pycolmap; what ``silk colmap`` runs and what hloc runs on ``silk match-pairs`` files). A pair gate
(``min_inliers``; ``min_inlier_ratio`` of the homography, ``silk match``'s default gate) zeroes a pair whose
verification keeps fewer inliers.

    bash benchmarks/fetch_pairs.sh /tmp/real-pairs
    python benchmarks/unrelated_pairs.py --photos ../shared/data/train-photos --models fast tiny --pairs /tmp/real-pairs
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from validation import add_set_args, validation_set

from silk_keypoints import SiLK
from silk_keypoints.ecosystem.colmap import colmap_camera, default_camera, verify_matches
from silk_keypoints.evaluation.testdata import make_pose_dataset
from silk_keypoints.geometry import estimate_homography
from silk_keypoints.image_features import image_features
from silk_keypoints.io import load_image, resize_long_side
from silk_keypoints.matching import Matcher
from silk_keypoints.pair import DEMO_PAIR
from silk_keypoints.training.data import split_train_val


@dataclass
class Gate:
    """A candidate: a filter of the matches (on the plain mutual-NN matches, or the double softmax's), then a
    pair gate on the verified inliers."""

    name: str
    min_similarity: float = -1.0  # cosine of the two descriptors
    max_ratio: float = float("inf")  # best / second-best cosine distance
    double_softmax: float | None = None  # keep 1 - P < this (the double softmax's own mutual NN)
    min_inliers: int = 0
    min_inlier_ratio: float = 0.0  # of the homography (silk match's pair gate)
    # the pair-list gate of silk match-pairs / silk colmap: COLMAP's verification only for pairs whose homography
    # passes the gate, fitted on the matched keypoints themselves (features.h5 holds no neighbours to refine with)
    homography_first: bool = False


GATES = [
    Gate("none (plain mnn)"),
    *(Gate(f"similarity >= {s}", min_similarity=s) for s in (0.8, 0.82, 0.85, 0.9)),
    *(Gate(f"ratio < {r}", max_ratio=r) for r in (0.8, 0.9)),
    *(Gate(f"double-softmax 1 - P < {t}", double_softmax=t) for t in (0.9, 0.99)),
    Gate("mnn, >= 15 inliers", min_inliers=15),
    Gate("mnn, >= 15 inliers and >= 5% (default)", min_inliers=15, min_inlier_ratio=0.05),
    *(Gate(f"similarity >= {s}, >= 15 inliers", min_similarity=s, min_inliers=15) for s in (0.8, 0.82)),
    Gate("mnn, homography on keypoints >= 15 and >= 5%, then COLMAP (match-pairs, colmap default)",
         min_inliers=15, min_inlier_ratio=0.05, homography_first=True),
]
DS_THRESHOLD = max(g.double_softmax or 0 for g in GATES)


def related_pairs(args: argparse.Namespace, tmp: str, val_folder: Path) -> list[tuple[str, Any, Any]]:
    pairs = []
    for label, strength in (("default", (1.0, 1.0)), ("hard", (0.5, 2.0))):
        args.strength = strength
        sub = Path(tmp) / label
        sub.mkdir()
        data, _ = validation_set(args, str(sub))
        for seq in sorted(data.iterdir()):
            for k in range(2, 7):
                pairs.append((label, seq / "1.ppm", seq / f"{k}.ppm"))
    scene = make_pose_dataset(Path(tmp) / "scene", val_folder, views=6, size=(640, 480), seed=args.seed)
    views = sorted((scene / "images").glob("view*.jpg"))
    pairs += [("3-D scene", a, b) for a, b in itertools.combinations(views, 2)]
    pairs.append(("demo", *DEMO_PAIR))
    return pairs + [("real", a, b) for a, b in real_pairs(args.pairs)]


def real_pairs(folder: str | None) -> list[tuple[Path, Path]]:
    """The pairs of a benchmarks/fetch_pairs.sh folder (its pairs.txt), or none."""
    if not folder:
        return []
    lines = (Path(folder) / "pairs.txt").read_text().split("\n")
    return [(Path(folder) / a, Path(folder) / b) for a, b in (line.split() for line in lines if line.strip())]


def unrelated_pairs(val: list[Path], real: list[tuple[Path, Path]]) -> list[tuple[str, Any, Any]]:
    pairs = [("photos", a, b) for a, b in itertools.combinations(val, 2)]
    pairs += [("real", a[0], b[1]) for a, b in itertools.permutations(real, 2)]  # views of different real scenes
    return pairs + [("demo", d, p) for d in DEMO_PAIR for p in val]


class PairMatches:
    """The plain mutual-NN matches of one pair (refined points, similarity, ratio) and the double softmax's;
    verification results cached per set of matches."""

    def __init__(self, f0, f1, cams: dict) -> None:
        self.f0, self.f1, self.cams = f0, f1, cams
        out = Matcher("mnn", max_distance=None)({"image0": f0, "image1": f1})
        self.m = out["matches"][0].numpy()
        self.points = out["points0"][0].numpy(), out["points1"][0].numpy()
        self.keypoints = f0.keypoints[0, self.m[:, 0]].numpy(), f1.keypoints[0, self.m[:, 1]].numpy()
        d0, d1 = (F.normalize(f.descriptors[0].double(), dim=1) for f in (f0, f1))
        sim = d0 @ d1.T
        self.sim = sim[self.m[:, 0], self.m[:, 1]].numpy()
        second = sim.topk(2, dim=1).values[:, 1].numpy()[self.m[:, 0]]
        self.ratio = (1 - self.sim) / np.maximum(1 - second, 1e-12)
        ds = Matcher("double-softmax", threshold=DS_THRESHOLD, max_distance=None)({"image0": f0, "image1": f1})
        self.ds, self.ds_prob = ds["matches"][0].numpy(), ds["scores"][0].numpy()
        self.ds_points = ds["points0"][0].numpy(), ds["points1"][0].numpy()
        self.cache: dict = {}

    def verified(self, gate: Gate, colmap: bool) -> tuple[int, int, int]:
        """(matches, homography inliers, COLMAP inliers or -1) under ``gate``."""
        if gate.double_softmax is not None:
            keep = 1 - self.ds_prob < gate.double_softmax
            m, points, key = self.ds[keep], [p[keep] for p in self.ds_points], ("ds", gate.double_softmax)
        else:
            keep = (self.sim >= gate.min_similarity) & (self.ratio < gate.max_ratio)
            m, points, key = self.m[keep], [p[keep] for p in self.points], ("mnn", keep.tobytes())
        if gate.homography_first:
            points = [p[keep] for p in self.keypoints]
        key = key + (colmap, gate.homography_first)
        if key not in self.cache:
            h = estimate_homography(*points, threshold=3.0, seed=0).num_inliers if len(m) >= 4 else 0
            passed = h >= gate.min_inliers and h >= gate.min_inlier_ratio * len(m)
            c = self.colmap_inliers(m) if colmap and (passed or not gate.homography_first) else 0 if colmap else -1
            self.cache[key] = (len(m), h, c)
        n, h, c = self.cache[key]
        h = h if h >= gate.min_inliers and h >= gate.min_inlier_ratio * n else 0
        return n, h, (c if c >= gate.min_inliers else 0) if c >= 0 else -1

    def colmap_inliers(self, m: np.ndarray) -> int:
        if len(m) == 0:
            return 0
        cams = []
        for f in (self.f0, self.f1):
            size = tuple(int(v) for v in f.image_size[0])
            if size not in self.cams:
                model_id, params = default_camera("SIMPLE_RADIAL", *size)
                self.cams[size] = colmap_camera(model_id, *size, params)
            cams.append(self.cams[size])
        k0, k1 = self.f0.keypoints[0].numpy(), self.f1.keypoints[0].numpy()
        return len(verify_matches(*cams, k0, k1, m).inlier_matches)


class FeatureCache:
    """Features of each image file once (gray, long side at most ``resize``)."""

    def __init__(self, model: SiLK, resize: int, max_keypoints: int) -> None:
        self.model, self.resize, self.max_keypoints, self.cache = model, resize, max_keypoints, {}

    def __call__(self, path):
        if path not in self.cache:
            img, _ = resize_long_side(load_image(path, gray=True), self.resize)
            self.cache[path] = image_features(self.model, img, neighbours=True, max_keypoints=self.max_keypoints)
        return self.cache[path]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_set_args(p)
    p.add_argument("--models", nargs="*", default=["fast", "tiny"])
    p.add_argument("--resize", type=int, default=640, help="long side of the unrelated photos")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--colmap-every", type=int, default=8, help="no gate: COLMAP on every N-th unrelated pair")
    p.add_argument("--pairs", default=None, help="real pairs of one scene (benchmarks/fetch_pairs.sh makes the folder)")
    p.add_argument("--gates", nargs="*", default=None, metavar="TEXT",
                   help="only the gates whose name contains one of these (default: all; 'none' is always run)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    _, val = split_train_val(sorted(Path(args.photos).glob("*.jpg")))
    with tempfile.TemporaryDirectory() as tmp:
        related = related_pairs(args, tmp, val[0].parent)
        unrelated = unrelated_pairs(val, real_pairs(args.pairs))
        print(f"{len(related)} related pairs ({len({r[0] for r in related})} kinds), {len(unrelated)} unrelated "
              f"pairs of {len(val)} validation photos + the 2 demo images, {args.max_keypoints} keypoints\n")
        print("| model | gate | related kept, H | hard set kept, H | related kept, COLMAP | real pairs kept, COLMAP "
              "| unrelated matches | unrelated H inliers mean / max | unrelated COLMAP inliers mean / max |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for name in args.models:
            model = SiLK.from_pretrained(name).eval()
            feats = FeatureCache(model, args.resize, args.max_keypoints)

            cams: dict = {}
            rel = [PairMatches(feats(a), feats(b), cams) for _, a, b in related]
            unr = [PairMatches(feats(a), feats(b), cams) for _, a, b in unrelated]
            kinds = np.array([k for k, _, _ in related])
            print(f"{name}: features and matches done", flush=True)
            base = None
            gates = [g for g in GATES if g is GATES[0] or args.gates is None or any(t in g.name for t in args.gates)]
            for gate in gates:
                # a gate keeping hundreds of false matches on unrelated pairs makes COLMAP's RANSAC run its maximum
                # number of trials (~1 s a pair): then only every --colmap-every-th unrelated pair is verified
                many = np.mean([pm.verified(gate, False)[0 if not gate.homography_first else 1] for pm in unr]) > 100
                sub = args.colmap_every if many else 1
                r = np.array([pm.verified(gate, True) for pm in rel])
                u = np.array([pm.verified(gate, i % sub == 0) for i, pm in enumerate(unr)])
                if base is None:
                    base = r
                kept = r[:, 1:].sum(0) / base[:, 1:].sum(0)
                hard = r[kinds == "hard", 1].sum() / base[kinds == "hard", 1].sum()
                real = r[kinds == "real", 2].sum() / max(base[kinds == "real", 2].sum(), 1)
                uc = u[u[:, 2] >= 0, 2]
                print(f"| {name} | {gate.name} | {kept[0]:.1%} | {hard:.1%} | {kept[1]:.1%} | "
                      + (f"{real:.1%}" if args.pairs else "—") + f" | {u[:, 0].mean():.1f} | "
                      f"{u[:, 1].mean():.1f} / {u[:, 1].max()} | {uc.mean():.1f} / {uc.max()}"
                      + (f" ({len(uc)} pairs)" if sub > 1 else "") + " |", flush=True)


if __name__ == "__main__":
    main()
