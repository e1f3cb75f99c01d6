"""Of each matcher's matches 1-3 px off (`fast`, cells, the viewpoint pairs of 4 hard-set sequences), how many had a
partner within 1 px available (for the image-0 keypoint, for the image-1 keypoint, either): the share a perfect
choice among neighbours could still make exact.

    PYTHONPATH=$PWD python runs/glue-fits/choice.py
"""
import sys, tempfile, argparse
sys.path.insert(0, "benchmarks")
import numpy as np, torch
import glue_validation as gv
from validation import add_set_args, validation_set
from silk_keypoints import SiLK, Matcher
from silk_keypoints.geometry import warp_points
import torch.nn.functional as F
p = argparse.ArgumentParser(); add_set_args(p); p.set_defaults(sequences=4, strength=(0.5, 2.0), viewpoint_light=1.0)
args = p.parse_args(); torch.set_num_threads(1)
model = SiLK.from_pretrained("fast").eval()
with tempfile.TemporaryDirectory() as tmp:
    data, _ = validation_set(args, tmp)
    seqs = gv.extract_sequences(model, data, 2048, False, "cells")
tot = {}
for name in ("glue", "mnn"):
    m = Matcher(name, threshold=0.1, refine=False) if name == "glue" else Matcher("mnn", refine=False)
    c = np.zeros(6)
    for seq in seqs:
        if seq["kind"] != "viewpoint": continue
        f, o = seq["features"], seq["pixel_offset"]
        for k, H in enumerate(seq["homographies"], start=2):
            out = m({"image0": f[0], "image1": f[k-1]})
            mt = out["matches"][0]; kp0 = f[0].keypoints[0].double(); kp1 = f[k-1].keypoints[0].double()
            gt = torch.from_numpy(warp_points(kp0.numpy() + o, H) - o)
            e = (kp1[mt[:, 1]] - gt[mt[:, 0]]).norm(dim=1)
            mid = (e > 1) & (e <= 3)
            dall = torch.cdist(gt[mt[:, 0]], kp1)
            alt1 = (dall <= 1).any(1)
            # alternative in image 0: a kp0 whose warp is within 1 px of the chosen kp1
            d0 = torch.cdist(kp1[mt[:, 1]], gt)
            alt0 = (d0 <= 1).any(1)
            c += [len(e), int((e <= 1).sum()), int(mid.sum()), int((mid & alt1).sum()), int((mid & alt0).sum()), int((mid & (alt0 | alt1)).sum())]
    print(name, "matches, c@1, in 1-3px, of which a <=1px partner exists for kp0 / for kp1 / either:", c)
