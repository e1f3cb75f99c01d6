"""SiLKGlue against the descriptor rules, on the same keypoints, on the honest validation's hard set and on
unrelated pairs.

The images are those of ``benchmarks/honest_validation.py --sets hard`` (HPatches-layout sequences from the
*validation* photos, never trained on; ``--strength 0.5 2``: rotations up to +-30 deg, scales 0.64-1.56, strong
perspective, strong photometric change), with the extractor's 2048 keypoints computed once per image and shared
by every matcher. Matchers: mutual nearest neighbours (``mnn``), the ratio test (``ratio``) and the double
softmax (``double-softmax``) with :class:`~silk_keypoints.matching.Matcher`'s defaults, and SiLKGlue (each
``--weights`` file at each ``--thresholds`` P). Points are not refined (the positions hloc and COLMAP get);
``--refine`` adds every matcher once more with the pair refinement; ``--positions extrema`` takes the keypoints at
the image's sub-pixel extrema instead of the cell centres (``SiLK.extract(positions=...)``).

Columns per matcher: matches per pair, correct ones within 1 / 3 px of the ground truth (count and share:
MMA), homography accuracy @1/3 px (mean corner error of the original's 3-px plain RANSAC fit, confidence 0.995)
and its AUC up to 1/3 px, the same AUC of the 3-px USAC_MAGSAC fit that ``silk match`` verifies with
(``magsac_auc``), and the matcher's own time per pair. Unrelated pairs: the reference images of two different
sequences (two different photos): matches, and inliers of a USAC_MAGSAC homography at 3 px (what ``silk match`` verifies), mean and max.
``--views DIR``: real multi-view photos (``benchmarks/fetch_views.sh``) through COLMAP's verification and
pycolmap's incremental mapper with each matcher (the ``colmap`` set of ``honest_validation.py``), next to
pycolmap's own SIFT: registered images, 3-D points, track length, reprojection error. ``--stereo``: the calibrated
stereo pairs of the same views (``benchmarks/stereo_epipolar.py``: the rig's calibration is the ground truth of a
real 3-D viewpoint change) with each matcher: correct matches within 0.5 / 1 / 3 px of their epipolar line, their
shares, the median error of those within 3 px, and the relative pose's accuracy / AUC.

    PYTHONPATH=$PWD python benchmarks/glue_validation.py --weights runs/glue-fast/last.safetensors \\
        --out runs/glue-fast/validation
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from honest_validation import colmap_set, colmap_table
from stereo_epipolar import evaluate as stereo_evaluate  # benchmarks/stereo_epipolar.py
from stereo_epipolar import header as stereo_header
from stereo_epipolar import stereo_set
from stereo_epipolar import tables as stereo_tables
from validation import add_set_args, validation_set  # the validation sets of benchmarks/validation.py

from silk_keypoints import Matcher, SiLK
from silk_keypoints.evaluation.extractors import ModelExtractor
from silk_keypoints.evaluation.hpatches import (
    evaluate_pair,
    get_protocol,
    load_for_protocol,
    read_hpatches,
    resized_homography,
    summarize,
)
from silk_keypoints.evaluation.report import format_table, write_json
from silk_keypoints.geometry import estimate_homography
from silk_keypoints.model.config import POSITIONS


def build_matchers(weights: list[str], thresholds: list[float], refine: bool) -> dict[str, Matcher]:
    """Every matcher of the table by row name; with ``refine`` each once more as ``<name>+pairref``."""
    out: dict[str, Matcher] = {}
    for suffix, ref in [("", False)] + ([("+pairref", True)] if refine else []):
        for rule in ("mnn", "ratio", "double-softmax"):
            out[rule + suffix] = Matcher(rule, refine=ref)
        for w, t in itertools.product(weights, thresholds):
            out[f"glue:{Path(w).stem}@{t:g}{suffix}"] = Matcher("glue", glue_weights=w, threshold=t, refine=ref)
    return out


def extract_sequences(model: SiLK, data: Path, max_keypoints: int, neighbours: bool,
                      positions: str | None = None) -> list[dict]:
    """Features of every image of every sequence (computed once) with the ground truth of each pair (1, k)."""
    protocol = get_protocol("d2net", max_keypoints=max_keypoints)
    o = protocol.pixel_offset
    out = []
    for seq in read_hpatches(data, protocol.exclude):
        loaded = [load_for_protocol(p, protocol) for p in seq.images]
        feats = [model.extract(img, max_keypoints=max_keypoints, neighbours=neighbours, positions=positions)
                 for img, _ in loaded]
        sizes = [(img.shape[1], img.shape[0]) for img, _ in loaded]
        s0 = loaded[0][1]
        Hs = [resized_homography(H, s0, s1, o) for (_, s1), H in zip(loaded[1:], seq.homographies)]
        out.append({"name": seq.name, "kind": seq.kind, "features": feats, "sizes": sizes, "homographies": Hs,
                    "pixel_offset": o, "ransac_threshold": protocol.ransac_threshold})
    return out


def related(sequences: list[dict], matchers: dict[str, Matcher], seed: int) -> dict:
    """Per matcher: the per-pair metrics of :func:`evaluate_pair` on every pair (1, k), and seconds per pair."""
    results = {}
    for name, matcher in matchers.items():
        pairs, seconds, index = [], 0.0, 0
        for seq in sequences:
            f, s = seq["features"], seq["sizes"]
            for k, H in enumerate(seq["homographies"], start=2):
                start = time.perf_counter()
                r = evaluate_pair(f[0], f[k - 1], H, s[0], s[k - 1], seq["pixel_offset"], seq["ransac_threshold"],
                                  seed + index, matcher=matcher, magsac=True)
                seconds += time.perf_counter() - start
                pairs.append({"sequence": seq["name"], "index": k, "kind": seq["kind"], **r})
                index += 1
        results[name] = {"summary": summarize(pairs), "seconds_per_pair": seconds / max(1, index), "pairs": pairs}
    return results


def related_table(results: dict, group: str, title: str) -> str:
    headers = ["matcher", "matches", "correct@1", "correct@3", "mma@1", "mma@3", "h_acc@1", "h_acc@3", "h_auc@1",
               "h_auc@3", "magsac_auc@1", "magsac_auc@3", "ms/pair"]
    rows = []
    for name, r in results.items():
        sel = [p for p in r["pairs"] if group == "all" or p["kind"] == group]
        s = r["summary"][group]
        rows.append([name, s["matches"], float(np.mean([p["matches"] * p["mma"][1] for p in sel])),
                     float(np.mean([p["matches"] * p["mma"][3] for p in sel])), s["mma"]["1"], s["mma"]["3"],
                     s["h_acc"]["1"], s["h_acc"]["3"], s["h_auc"]["1"], s["h_auc"]["3"],
                     s["h_auc_magsac"]["1"], s["h_auc_magsac"]["3"], 1000 * r["seconds_per_pair"]])
    return format_table(headers, rows, title)


def unrelated(sequences: list[dict], matchers: dict[str, Matcher], seed: int) -> dict:
    """Per matcher: matches and 3-px USAC_MAGSAC homography inliers of the reference images of every two
    different sequences (different photos)."""
    refs = [seq["features"][0] for seq in sequences]
    results = {}
    for name, matcher in matchers.items():
        counts, inliers = [], []
        for i, (a, b) in enumerate(itertools.combinations(range(len(refs)), 2)):
            out = matcher({"image0": refs[a], "image1": refs[b]})
            p0, p1 = (p[0].double().numpy() for p in (out["points0"], out["points1"]))
            counts.append(len(p0))
            fit = estimate_homography(p0, p1, 3.0, seed=seed + i)
            inliers.append(0 if fit.inliers is None else int(fit.inliers.sum()))
        results[name] = {"pairs": len(counts), "matches": float(np.mean(counts)), "inliers": float(np.mean(inliers)),
                         "max_inliers": int(max(inliers)), "per_pair_inliers": inliers}
    return results


def unrelated_table(results: dict, title: str) -> str:
    rows = [[name, r["matches"], r["inliers"], r["max_inliers"]] for name, r in results.items()]
    return format_table(["matcher", "matches", "ransac_inliers", "max_inliers"], rows, title)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_set_args(p)
    p.set_defaults(sequences=10, strength=(0.5, 2.0), viewpoint_light=1.0)  # honest_validation.py's hard set
    p.add_argument("--weights", nargs="+", required=True, help="SiLKGlue .safetensors files")
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.1], help="glue: keep P > T, each T")
    p.add_argument("--extractor", default="fast", help="shipped model name or weight file")
    p.add_argument("--refine", action="store_true", help="also every matcher with the pair refinement")
    p.add_argument("--positions", choices=POSITIONS, default=None, help="keypoint placement (default: the model's)")
    p.add_argument("--views", default=None, help="folder of real multi-view photos (benchmarks/fetch_views.sh)")
    p.add_argument("--max-views", type=int, default=13, help="at most this many views (evenly spaced by name)")
    p.add_argument("--stereo", action="store_true", help="also the calibrated stereo pairs of --views")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="folder for tables.txt and results.json")
    args = p.parse_args()
    if args.stereo and not args.views:
        p.error("--stereo needs --views DIR (benchmarks/fetch_views.sh makes one)")
    torch.set_num_threads(args.threads)
    model = (SiLK.from_checkpoint(args.extractor) if Path(args.extractor).is_file()
             else SiLK.from_pretrained(args.extractor)).eval()
    matchers = build_matchers(args.weights, args.thresholds, args.refine)
    with tempfile.TemporaryDirectory() as tmp:
        data, photos = validation_set(args, tmp)
        sequences = extract_sequences(model, data, args.max_keypoints, args.refine, args.positions)
    what = (f"{args.extractor}, {args.max_keypoints} keypoints at {args.positions or model.config.positions}, {photos} validation photos -> {args.sequences} "
            f"sequences of {args.size}, strength {args.strength[0]:g}-{args.strength[1]:g}, viewpoint light "
            f"{args.viewpoint_light:g}, seed {args.seed}, {args.threads} thread(s)")
    rel = related(sequences, matchers, args.seed)
    texts = [related_table(rel, group, f"Hard set, {group} pairs: {what}") for group in ("all", "viewpoint")]
    unrel = unrelated(sequences, matchers, args.seed)
    texts.append(unrelated_table(unrel, f"Unrelated pairs ({next(iter(unrel.values()))['pairs']} pairs of two "
                                        f"different photos): {what}"))
    if args.views:
        extractor = ModelExtractor(model, args.extractor, max_keypoints=args.max_keypoints, neighbours=args.refine,
                                    positions=args.positions)
        with tempfile.TemporaryDirectory() as tmp:
            views = colmap_set([extractor], Path(args.views), Path(tmp), args.threads, args.seed, args.max_views,
                               matchers, photos=args.photos)
        texts.append(f"Multi-view set: {args.views}, views {' '.join(views['views'])} (left out as training "
                     f"photos: {' '.join(views['left_out']) or 'none'})\n" + colmap_table(views))
    stereo = None
    if args.stereo:
        pairs = stereo_set(args.views, args.photos)
        extractor = ModelExtractor(model, args.extractor, max_keypoints=args.max_keypoints, neighbours=args.refine,
                                    positions=args.positions)
        features = {v: extractor(pairs["images"][v]) for n in pairs["moments"] for v in (n, n.replace("left", "right"))}
        stereo = {name: stereo_evaluate(features, pairs, m, args.seed) for name, m in matchers.items()}
        texts.append(f"{stereo_header(pairs)}; {what}\n\n" + stereo_tables(stereo, "Stereo pairs"))
    print("\n\n".join(texts))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "tables.txt").write_text("\n\n".join(texts) + "\n")
        write_json(out / "results.json", {"related": rel, "unrelated": unrel, "views": views if args.views else None,
                                          "stereo": stereo, "args": vars(args)})


if __name__ == "__main__":
    main()
