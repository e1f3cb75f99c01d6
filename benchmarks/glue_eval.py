"""SiLKGlue against mutual NN on held-out homography pairs and on unrelated pairs, on the same keypoints.

Pairs: crops of the *validation* photos (``split_train_val``) and their views through random homographies
(default: the training ranges; ``hard``: zoom 1.25-2x, tilts up to 0.9 rad, in-plane rotation up to 0.7 rad),
photometric augmentation, features of the frozen extractor computed once and shared by both matchers.
Reported per matcher: matches per pair, correct ones (``|H p0 - p1| < 3 px``), precision, and the
homography estimated from the matches (USAC MAGSAC, 3 px): mean corner error and accuracy at 3 / 5 px.
Unrelated pairs: crops of two different validation photos; matches and RANSAC inliers per pair.

    PYTHONPATH=$PWD python benchmarks/glue_eval.py --weights runs/glue-fast/last.safetensors --pairs 300
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from silk_keypoints.geometry import estimate_homography, warp_points_torch
from silk_keypoints.glue import SiLKGlue, mutual_matches
from silk_keypoints.io import list_images
from silk_keypoints.matching import match_descriptors
from silk_keypoints.model import SiLK
from silk_keypoints.training.data import ImageCrops, split_train_val
from silk_keypoints.training.glue import Pair, make_pairs
from silk_keypoints.training.homography import HomographyConfig

SETS = {
    "default": HomographyConfig(),
    "hard": HomographyConfig(scale=(0.5, 0.8), rotate_x=(-0.9, 0.9), rotate_y=(-0.9, 0.9), rotate_z=(-0.7, 0.7)),
}


def build_pairs(extractor: SiLK, crops: ImageCrops, count: int, hom: HomographyConfig, keypoints: int,
                seed: int, unrelated: bool = False) -> list[Pair]:
    g = torch.Generator().manual_seed(seed)
    pairs: list[Pair] = []
    n = len(crops)
    for start in range(0, count, 8):
        k = min(8, count - start)
        items = [crops[(start + i) % n, 1000 + (start + i) // n] for i in range(k)]
        made = make_pairs(extractor, torch.stack(items), keypoints, hom, "silk", g)
        if unrelated:  # view 1 of another photo: no true correspondence at all
            others = [crops[(start + i + 1 + (start + i) % (n - 1)) % n, 2000 + start + i] for i in range(k)]
            views = make_pairs(extractor, torch.stack(others), keypoints, hom, "silk", g)
            made = [Pair(a.keypoints0, a.descriptors0, b.keypoints1, b.descriptors1, a.homography, a.size)
                    for a, b in zip(made, views)]
        pairs.extend(made)
    return pairs


def corner_error(H_est: np.ndarray | None, H: torch.Tensor, size: tuple[int, int]) -> float:
    if H_est is None:
        return float("inf")
    w, h = size
    corners = torch.tensor([[0.0, 0.0], [w - 1, 0.0], [0.0, h - 1], [w - 1, h - 1]], dtype=torch.float64)
    a = warp_points_torch(corners, H.double())[0]
    b = warp_points_torch(corners, torch.from_numpy(H_est))[0]
    return float((a - b).norm(dim=1).mean())


def run_matchers(pair: Pair, glue: SiLKGlue, thresholds: list[float]) -> dict[str, tuple[torch.Tensor, float]]:
    """Mutual NN and SiLKGlue at each of ``thresholds`` (one network pass) -> name: (matches (K, 2), seconds)."""
    d0, d1 = pair.descriptors0.float(), pair.descriptors1.float()
    out = {}
    t = time.perf_counter()
    m, _ = match_descriptors(d0, d1, "mnn")
    out["mnn"] = (m, time.perf_counter() - t)
    size = torch.tensor([pair.size], dtype=torch.float32)
    t = time.perf_counter()
    with torch.no_grad():
        log_p = glue.log_assignment(pair.keypoints0[None], pair.keypoints1[None], d0[None], d1[None], size, size)[0]
    secs = time.perf_counter() - t
    for threshold in thresholds:
        m0 = mutual_matches(log_p, threshold)[0][0]
        rows = (m0 >= 0).nonzero()[:, 0]
        out[f"glue P>{threshold:g}"] = (torch.stack([rows, m0[rows]], 1), secs)
    return out


def evaluate(pairs: list[Pair], glue: SiLKGlue, unrelated: bool, thresholds: list[float]) -> dict[str, dict[str, float]]:
    stats: dict[str, dict[str, list[float]]] = {}
    for i, pair in enumerate(pairs):
        for name, (m, secs) in run_matchers(pair, glue, thresholds).items():
            s = stats.setdefault(name, {})
            p0, p1 = pair.keypoints0[m[:, 0]].double(), pair.keypoints1[m[:, 1]].double()
            est = estimate_homography(p0.numpy(), p1.numpy(), threshold=3.0, seed=i)
            s.setdefault("matches", []).append(len(m))
            s.setdefault("inliers", []).append(float(est.inliers.sum()))
            s.setdefault("seconds", []).append(secs)
            if not unrelated:
                err = (warp_points_torch(p0, pair.homography.double())[0] - p1).norm(dim=1)
                correct = float((err < 3).sum())
                s.setdefault("correct", []).append(correct)
                s.setdefault("precision", []).append(correct / max(len(m), 1))
                ce = corner_error(est.model, pair.homography, pair.size)
                s.setdefault("corner_error_px", []).append(min(ce, 100.0))
                s.setdefault("H_acc@3", []).append(float(ce < 3))
                s.setdefault("H_acc@5", []).append(float(ce < 5))
    return {name: {k: float(np.mean(v)) for k, v in s.items()} for name, s in stats.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", required=True, help="SiLKGlue .safetensors")
    p.add_argument("--images", default="../shared/data/train-photos")
    p.add_argument("--extractor", default="fast")
    p.add_argument("--pairs", type=int, default=300, help="pairs per set")
    p.add_argument("--unrelated", type=int, default=100)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--keypoints", type=int, default=512)
    p.add_argument("--sets", nargs="+", default=["hard", "default"], choices=list(SETS))
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.1, 0.02], help="glue: keep P > T, each T")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--cache", help="keep the pairs' features in this file and reuse them (same settings)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    extractor = SiLK.from_pretrained(a.extractor).eval()
    glue = SiLKGlue.from_file(a.weights)
    _, val = split_train_val(list_images(a.images))
    crops = ImageCrops(val, crop=a.crop, seed=12345)
    print(f"{len(val)} validation photos, crops {a.crop} px, {a.keypoints} keypoints, extractor {a.extractor}, "
          f"glue {a.weights} ({glue.conf})")
    settings = [a.extractor, a.pairs, a.unrelated, a.crop, a.keypoints, a.sets]
    cached = torch.load(a.cache, weights_only=True) if a.cache and Path(a.cache).is_file() else {}
    if cached.get("settings") == settings:
        sets = {name: [Pair(**p) for p in pairs] for name, pairs in cached["sets"].items()}
    else:
        sets = {name: build_pairs(extractor, crops, a.pairs, SETS[name], a.keypoints, seed=k)
                for k, name in enumerate(a.sets)}
        sets["unrelated"] = build_pairs(extractor, crops, a.unrelated, SETS["default"], a.keypoints, seed=99,
                                        unrelated=True)
        if a.cache:
            plain = {name: [asdict(p) for p in pairs] for name, pairs in sets.items()}
            torch.save({"settings": settings, "sets": plain}, a.cache)
    results = {name: evaluate(pairs, glue, name == "unrelated", a.thresholds) for name, pairs in sets.items()}
    for name, res in results.items():
        n = a.unrelated if name == "unrelated" else a.pairs
        print(f"\n{name} ({n} pairs)")
        keys = list(next(iter(res.values())))
        print("| matcher | " + " | ".join(keys) + " |")
        print("|---" * (len(keys) + 1) + "|")
        for matcher, vals in res.items():
            print(f"| {matcher} | " + " | ".join(f"{vals[k]:.3g}" for k in keys) + " |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"settings": vars(a), "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
