"""Re-selection by local geometry (docs/glue.md, "The estimator and a 3x larger hard set"; not shipped): each match's
partner becomes the keypoint within 3 px of it nearest to where an affine fit of the 12 nearest matches (one pass
dropping neighbours off by > 2 px) puts it; then the other side; clashes keep the higher P. Used by ``fits.py --reselect``
(rows ``glue:fast+resel``, ``mnn+resel``): affine-cells-seed0.txt (10 sequences, seed 0).
"""
import sys
sys.path.insert(0, "benchmarks")
import torch
from silk_keypoints import Matcher
from silk_keypoints.features import Features

def local_predict(a, b, nbrs):
    """For each k: affine from a[nbrs[k]] -> b[nbrs[k]], evaluated at a[k]. a, b (K, 2); nbrs (K, n)."""
    A = a[nbrs] - a[:, None]  # centred at a_k
    X = torch.cat([A, torch.ones_like(A[..., :1])], -1)  # (K, n, 3)
    Y = b[nbrs]
    sol = torch.linalg.lstsq(X.double(), Y.double()).solution  # (K, 3, 2)
    res = (X.double() @ sol - Y.double()).norm(dim=-1)
    w = (res < 2.0).double()  # one robust pass: drop neighbours off by > 2 px
    Xw = X.double() * w[..., None]; Yw = Y.double() * w[..., None]
    sol2 = torch.linalg.lstsq(Xw, Yw).solution
    ok = w.sum(1) >= 6
    sol = torch.where(ok[:, None, None], sol2, sol)
    return sol[:, 2].float()  # value at the centre a_k

def reselect_side(a, b, kp_b, s, radius, n):
    K = len(a)
    if K < n + 1:
        return None
    d = torch.cdist(a, a); d.fill_diagonal_(float("inf"))
    nbrs = d.topk(n, largest=False).indices
    q = local_predict(a, b, nbrs)
    near = torch.cdist(b, kp_b) <= radius
    dq = torch.cdist(q, kp_b).masked_fill(~near, float("inf"))
    return dq.argmin(1)

def reselect(kp0, kp1, m, s, radius, n=12):
    if len(m) <= n:
        return m, s
    i, j = m[:, 0].clone(), m[:, 1].clone()
    new_j = reselect_side(kp0[i], kp1[j], kp1, s, radius, n)
    j = new_j
    new_i = reselect_side(kp1[j], kp0[i], kp0, s, radius, n)
    i = new_i
    order = s.argsort(descending=True)
    seen0, seen1, keep = set(), set(), []
    for k in order.tolist():
        a_, b_ = int(i[k]), int(j[k])
        if a_ in seen0 or b_ in seen1:
            continue
        seen0.add(a_); seen1.add(b_); keep.append(k)
    keep = torch.tensor(sorted(keep), dtype=torch.long)
    return torch.stack([i[keep], j[keep]], 1), s[keep]

_orig_fwd = Matcher.forward
def fwd(self, data):
    out = _orig_fwd(self, data)
    r = getattr(self, "resel_r", 0)
    if r <= 0:
        return out
    f0 = Features.from_mapping(data["image0"], "image0"); f1 = Features.from_mapping(data["image1"], "image1")
    for b in range(len(out["matches"])):
        m, s = reselect(f0.keypoints[b].float(), f1.keypoints[b].float(), out["matches"][b], out["scores"][b], r)
        out["matches"][b], out["scores"][b] = m, s
        out["points0"][b], out["points1"][b] = f0.keypoints[b][m[:, 0]], f1.keypoints[b][m[:, 1]]
    return out
Matcher.forward = fwd
