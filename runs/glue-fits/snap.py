"""Re-selection by descriptor (docs/glue.md, "The estimator and a 3x larger hard set"; not shipped): each glue match
moves to the keypoint within r px of its partner whose raw SiLK descriptor is most similar, then the same on the
other side; clashes keep the higher P. Runs benchmarks/glue_validation.py with glue@0.1+snap<r> rows added:

    PYTHONPATH=$PWD python runs/glue-fits/snap.py 2.9,4.3 --weights silk_keypoints/glue_weights/fast.safetensors \
        --thresholds 0.1 --positions cells --threads 1 [--seed 1] --out DIR
"""
import sys, time, tempfile, itertools
sys.path.insert(0, "benchmarks")
import torch, torch.nn.functional as F
import glue_validation as gv
from silk_keypoints import Matcher, SiLK
from silk_keypoints.features import Features

def snap(kp0, kp1, d0, d1, m, s, r):
    if len(m) == 0 or r <= 0:
        return m, s
    i, j = m[:, 0], m[:, 1]
    near1 = torch.cdist(kp1[j], kp1) <= r
    sim1 = (d0[i] @ d1.T).masked_fill(~near1, -2)
    j = sim1.argmax(1)
    near0 = torch.cdist(kp0[i], kp0) <= r
    sim0 = (d1[j] @ d0.T).masked_fill(~near0, -2)
    i = sim0.argmax(1)
    order = s.argsort(descending=True)
    seen0, seen1, keep = set(), set(), []
    for k in order.tolist():
        a, b = int(i[k]), int(j[k])
        if a in seen0 or b in seen1:
            continue
        seen0.add(a); seen1.add(b); keep.append(k)
    keep = torch.tensor(sorted(keep), dtype=torch.long)
    return torch.stack([i[keep], j[keep]], 1), s[keep]

orig = Matcher._glue_matches
def patched(self, data, out):
    orig(self, data, out)
    r = getattr(self, "snap_r", 0)
    if r <= 0:
        return
    f0 = Features.from_mapping(data["image0"], "image0"); f1 = Features.from_mapping(data["image1"], "image1")
    for b in range(len(out["matches"])):
        m, s = snap(f0.keypoints[b].float(), f1.keypoints[b].float(), F.normalize(f0.descriptors[b].float(), dim=-1),
                    F.normalize(f1.descriptors[b].float(), dim=-1), out["matches"][b], out["scores"][b], r)
        out["matches"][b], out["scores"][b] = m, s
        out["matches0"][b].fill_(-1); out["matches1"][b].fill_(-1)
        out["matching_scores0"][b].zero_(); out["matching_scores1"][b].zero_()
        out["matches0"][b, m[:, 0]] = m[:, 1]; out["matches1"][b, m[:, 1]] = m[:, 0]
        out["matching_scores0"][b, m[:, 0]] = s; out["matching_scores1"][b, m[:, 1]] = s
Matcher._glue_matches = patched

radii = [float(x) for x in sys.argv[1].split(",")]
def build(weights, thresholds, refine):
    out = {r: Matcher(r, refine=False) for r in ("mnn", "ratio")}
    for w, t in itertools.product(weights, thresholds):
        out[f"glue@{t:g}"] = Matcher("glue", glue_weights=w, threshold=t, refine=False)
        for r in radii:
            mm = Matcher("glue", glue_weights=w, threshold=t, refine=False); mm.snap_r = r
            out[f"glue@{t:g}+snap{r:g}"] = mm
    return out
gv.build_matchers = build
sys.argv = [sys.argv[0]] + sys.argv[2:]
gv.main()
