"""How many one-to-one keypoint correspondences within 1 / 2 / 3 px the hard set's pairs hold at all (mutual nearest
keypoints after the true warp; `fast`, 2048 cell keypoints, 10 sequences): the most any matcher can find.

    PYTHONPATH=$PWD python runs/glue-fits/ceiling.py [--seed 1]
"""
import sys, tempfile, argparse
sys.path.insert(0, "benchmarks")
import numpy as np, torch
import glue_validation as gv
from validation import add_set_args, validation_set
from silk_keypoints import SiLK
from silk_keypoints.geometry import warp_points
p = argparse.ArgumentParser(); add_set_args(p); p.set_defaults(sequences=10, strength=(0.5, 2.0), viewpoint_light=1.0)
args = p.parse_args(); torch.set_num_threads(1)
model = SiLK.from_pretrained("fast").eval()
with tempfile.TemporaryDirectory() as tmp:
    data, _ = validation_set(args, tmp)
    seqs = gv.extract_sequences(model, data, 2048, False, "cells")
res = {"illumination": [], "viewpoint": []}
for seq in seqs:
    f, o = seq["features"], seq["pixel_offset"]
    k0 = f[0].keypoints[0].double().numpy() + o
    for k, H in enumerate(seq["homographies"], start=2):
        k1 = f[k - 1].keypoints[0].double().numpy() + o
        w = warp_points(k0, H)
        d = np.linalg.norm(w[:, None] - k1[None], axis=2)
        nn01, nn10 = d.argmin(1), d.argmin(0)
        mutual = nn10[nn01] == np.arange(len(k0))
        row = [int((mutual & (d.min(1) <= t)).sum()) for t in (1, 2, 3)]
        res[seq["kind"]].append(row)
for kind, rows in res.items():
    print(kind, "one-to-one keypoint correspondences within 1/2/3 px:", np.mean(rows, 0))
print("all", np.mean(res["illumination"] + res["viewpoint"], 0))
