"""Multi-view keypoint adjustment (``silk colmap --adjust-keypoints``) on the honest hard set, in one run.

Each sequence of the hard set (``benchmarks/honest_validation.py``'s: the *validation* photos, strength
0.5-2, 2048 keypoints) is treated as a small multi-view set, the way COLMAP and hloc see a scene: every model
extracts the six images, matches all 15 pairs with plain mutual nearest neighbours, keeps the inliers of a
3-px USAC-MAGSAC homography per pair (the images are views of one plane) and adjusts the keypoints on those
tracks (:func:`silk_keypoints.refinement.adjust_keypoints`): one position per keypoint and image. The protocol
then scores the pairs (1, k) as the honest validation does (mutual NN, plain RANSAC homography, seed per pair),
for three rows per model:

* ``<m>``: the keypoints of ``extract()`` (cell centres);
* ``<m>+adjust``: the adjusted keypoints (same descriptors, so the same matches);
* ``<m>+pairref``: the pair refinement of ``Matcher`` (positions per pair; COLMAP / hloc files cannot hold it);
* ``<m>+adjust+pairref``: the pair refinement on top of the adjusted keypoints (their neighbour descriptors
  sampled one cell apart around the moved positions from the model's descriptor map): what it still adds.

    for s in 0 1 2; do python benchmarks/keypoint_adjustment.py --models fast tiny --threads 1 --seed $s \\
        --out runs/keypoint-adjustment/hard-seed$s; done
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from honest_validation import COLUMNS  # benchmarks/honest_validation.py
from validation import add_set_args, validation_set  # the same validation set

from silk_keypoints import SiLK
from silk_keypoints.evaluation.extractors import ModelExtractor
from silk_keypoints.evaluation.hpatches import evaluate_pair, get_protocol, read_hpatches, summarize
from silk_keypoints.evaluation.report import format_table, hpatches_table, write_json
from silk_keypoints.features import Features
from silk_keypoints.geometry import estimate_homography
from silk_keypoints.io import load_image, to_batch
from silk_keypoints.matching import match_descriptors
from silk_keypoints.model.sparse import gather_descriptors, interpolated_neighbours
from silk_keypoints.refinement import adjust_keypoints


def verified_matches(feats: list[Features], seed: int) -> tuple[list[tuple[int, int, torch.Tensor]], int]:
    """Mutual-NN matches of every pair of ``feats`` that fit a 3-px USAC-MAGSAC homography, and their count."""
    out, total = [], 0
    for a in range(len(feats)):
        for b in range(a + 1, len(feats)):
            m = match_descriptors(feats[a].descriptors[0], feats[b].descriptors[0], "mnn")[0]
            p0, p1 = feats[a].keypoints[0][m[:, 0]], feats[b].keypoints[0][m[:, 1]]
            fit = estimate_homography(p0.double().numpy(), p1.double().numpy(), 3.0, seed=seed)
            if fit.success:
                kept = m[torch.from_numpy(np.asarray(fit.inliers, dtype=bool))]
                out.append((a, b, kept))
                total += len(kept)
    return out, total


def neighbours_at(model: SiLK, image, keypoints: torch.Tensor) -> torch.Tensor:
    """Unit descriptors (N, 9, D) one cell apart around ``keypoints`` (N, 2) of ``image``, bilinear in the
    model's descriptor map (as ``extract(neighbours=True)`` samples them around moved keypoints)."""
    with torch.no_grad():
        raw = model(to_batch(image, model.config.in_channels), outputs="raw_descriptors")[0]
    hf, wf = raw.shape[-2:]
    return interpolated_neighbours(lambda c: gather_descriptors(raw, c), model.grid.to_cells(keypoints.float()), hf, wf)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_set_args(p)
    p.set_defaults(sequences=10, strength=(0.5, 2.0), viewpoint_light=1.0)  # the honest hard set
    p.add_argument("--models", nargs="*", default=["fast", "tiny"], help="shipped model names or weight files")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="folder for the text table and JSON results")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    protocol = get_protocol("d2net", max_keypoints=args.max_keypoints, table=COLUMNS, refine=True)
    rows: dict[str, list[dict]] = {}
    seconds: dict[str, float] = {}
    moved_rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root, photos = validation_set(args, tmp)
        sequences = read_hpatches(root)
        for name in args.models:
            model = (SiLK.from_checkpoint(name) if Path(name).is_file() else SiLK.from_pretrained(name)).eval()
            label = Path(name).stem
            extractor = ModelExtractor(model, label, max_keypoints=args.max_keypoints, neighbours=True)
            keys = (label, f"{label}+adjust", f"{label}+pairref", f"{label}+adjust+pairref")
            for key in keys:
                rows[key] = []
            shifts, matched = [], 0
            for s, seq in enumerate(sequences):
                images = [load_image(path) for path in seq.images]
                feats = [extractor(image) for image in images]
                edges, count = verified_matches(feats, args.seed + s)
                matched += count
                adjusted = adjust_keypoints(feats, edges)
                shifts += [(k - f.keypoints[0]).norm(dim=1) for f, k in zip(feats, adjusted)]
                plain = [f.without_neighbours() for f in feats]
                moved = [replace(f, keypoints=k[None]) for f, k in zip(plain, adjusted)]
                both = [replace(f, keypoints=k[None], neighbour_descriptors=neighbours_at(model, image, k)[None])
                        for f, k, image in zip(feats, adjusted, images)]
                size0 = tuple(int(v) for v in feats[0].image_size[0])
                for k in range(1, len(feats)):
                    size1 = tuple(int(v) for v in feats[k].image_size[0])
                    H = seq.homographies[k - 1]
                    pair_seed = args.seed + s * 5 + k - 1
                    for key, f0, f1 in zip(keys, (plain[0], moved[0], feats[0], both[0]),
                                           (plain[k], moved[k], feats[k], both[k])):
                        r = evaluate_pair(f0, f1, H, size0, size1, 0.0, protocol.ransac_threshold, pair_seed)
                        rows[key].append({"sequence": seq.name, "index": k + 1, "kind": seq.kind, **r})
            for key in keys:
                seconds[key] = extractor.seconds_per_image
            shift = torch.cat(shifts)
            moved_rows.append([label, matched / len(sequences), float((shift > 0).double().mean()),
                               float(shift[shift > 0].mean()) if (shift > 0).any() else 0.0])
    result = {"protocol": {"name": protocol.name, "table": list(COLUMNS)}, "dense": False,
              "methods": {k: {"summary": summarize(v), "seconds_per_image": seconds[k], "pairs": v}
                          for k, v in rows.items()}}
    head = (f"Keypoint adjustment on the hard set: {photos} validation photos -> {args.sequences} sequences of "
            f"{args.size}, strength {args.strength[0]:g}-{args.strength[1]:g}, {args.max_keypoints} keypoints, "
            f"tracks of the verified mutual-NN matches of all 15 pairs of each sequence, seed {args.seed}\n")
    moved = format_table(["model", "verified matches/seq", "moved share", "mean move px"], moved_rows,
                         "Keypoints moved by the adjustment")
    text = head + hpatches_table(result) + "\n\n" + moved
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "hard.txt").write_text(text + "\n")
        write_json(out / "hard.json", result)


if __name__ == "__main__":
    main()
