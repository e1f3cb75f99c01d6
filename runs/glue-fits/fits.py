"""Homography fits of each matcher's matches on the hard set by three estimators (docs/glue.md, "The estimator
and a 3x larger hard set"): the original's plain RANSAC (confidence 0.995, up to 2,000 iterations: it stops early
when most matches are inliers), plain RANSAC that runs all 2,000 iterations, and USAC_MAGSAC as `silk match`
fits. OpenCV's estimators are deterministic here, so each pair is fitted once.

    PYTHONPATH=$PWD python runs/glue-fits/fits.py --weights silk_keypoints/glue_weights/fast.safetensors \
        runs/glue-fast-strict/strict15-ema.safetensors --sequences 30 --seed 0 --positions cells --out OUT.json

Prints the tables; OUT.json holds per-pair counts and corner errors, OUT.json.<matcher>.npz the matched points.
"""
import argparse
import json
import sys
import tempfile

sys.path.insert(0, "benchmarks")
import numpy as np
import torch
import glue_validation as gv
from validation import add_set_args, validation_set
from silk_keypoints import Matcher, SiLK
from silk_keypoints.geometry import corner_error, estimate_homography, warp_points
from silk_keypoints.evaluation.metrics import error_auc

p = argparse.ArgumentParser(); add_set_args(p)
p.set_defaults(sequences=10, strength=(0.5, 2.0), viewpoint_light=1.0)
p.add_argument("--weights", nargs="+"); p.add_argument("--positions", default="cells"); p.add_argument("--out")
p.add_argument("--reselect", action="store_true", help="also glue and mnn with affine.py's re-selection")
p.add_argument("--refine", action="store_true", help="every matcher with the pair refinement (Matcher's default)")
args = p.parse_args(); torch.set_num_threads(1)
model = SiLK.from_pretrained("fast").eval()
matchers = {r: Matcher(r, refine=args.refine) for r in ("mnn", "ratio", "double-softmax")}
for w in args.weights:
    matchers["glue:" + w.split("/")[-1].split(".")[0]] = Matcher("glue", glue_weights=w, threshold=0.1, refine=args.refine)
if args.reselect:
    sys.path.insert(0, "runs/glue-fits")
    import affine  # noqa: F401  (patches Matcher.forward: matchers with resel_r > 0 re-select)
    extra = {"glue:" + w.split("/")[-1].split(".")[0] + "+resel": Matcher("glue", glue_weights=w, threshold=0.1,
                                                                          refine=args.refine) for w in args.weights}
    extra["mnn+resel"] = Matcher("mnn", refine=args.refine)
    for mm in extra.values():
        mm.resel_r = 3.0
    matchers.update(extra)
with tempfile.TemporaryDirectory() as tmp:
    data, photos = validation_set(args, tmp)
    seqs = gv.extract_sequences(model, data, 2048, args.refine, args.positions)
EST = {"ransac995": dict(confidence=0.995, max_iters=2000, method="ransac"),
       "ransac-2000it": dict(confidence=0.9999999, max_iters=2000, method="ransac"),
       "magsac": dict(confidence=0.999, max_iters=10000, method="magsac")}
res = {}
for name, m in matchers.items():
    rows = []; saved = []
    for seq in seqs:
        f, s, o = seq["features"], seq["sizes"], seq["pixel_offset"]
        for k, H in enumerate(seq["homographies"], start=2):
            out = m({"image0": f[0], "image1": f[k - 1]})
            p0, p1 = (q[0].double().numpy() + o for q in (out["points0"], out["points1"]))
            err = np.linalg.norm(warp_points(p0, H) - p1, axis=1) if len(p0) else np.zeros(0)
            row = {"H": np.asarray(H).tolist(), "size0": [int(v) for v in s[0]], "kind": seq["kind"], "n": len(p0), "c1": int((err <= 1).sum()), "c3": int((err <= 3).sum())}
            for e, kw in EST.items():
                Hm = estimate_homography(p0, p1, 3.0, seed=len(rows), **kw).model
                row[e] = corner_error(Hm, H, s[0])
            rows.append(row); saved.append((p0.astype(np.float32), p1.astype(np.float32)))
    res[name] = rows
    np.savez_compressed(args.out + '.' + name.replace(':', '_') + '.npz', **{f'p{i}_{j}': v for i, pts in enumerate(saved) for j, v in enumerate(pts)})
    print(name, "done", flush=True)
json.dump(res, open(args.out, "w"))
for group in ("all", "viewpoint"):
    print(f"\n{group} pairs ({args.sequences} sequences, seed {args.seed}, {args.positions}{', pair refinement' if args.refine else ''})")
    print(f"{'matcher':28s} {'matches':>8s} {'c@1':>7s} {'c@3':>7s} " + " ".join(f"{e+' @1':>16s} {'@3':>6s}" for e in EST))
    for name, rows in res.items():
        sel = [r for r in rows if group == "all" or r["kind"] == group]
        line = f"{name:28s} {np.mean([r['n'] for r in sel]):8.1f} {np.mean([r['c1'] for r in sel]):7.1f} {np.mean([r['c3'] for r in sel]):7.1f} "
        for e in EST:
            auc = error_auc([r[e] for r in sel], [1, 3])
            line += f"{auc[1]:16.3f} {auc[3]:6.3f} "
        print(line)
