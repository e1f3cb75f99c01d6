"""The two seeds of fits.py pooled (300 pairs): correct@1 / @3 and H AUC@1 / @3 per estimator.

    PYTHONPATH=$PWD python runs/glue-fits/pool.py SEED0.json SEED1.json
"""
import json
import sys

import numpy as np

from silk_keypoints.evaluation.metrics import error_auc

data = [json.load(open(path)) for path in sys.argv[1:]]
for name in data[0]:
    rows = [r for d in data for r in d[name]]
    line = f"{name:22s} pairs {len(rows)}  c@1 {np.mean([r['c1'] for r in rows]):7.1f}  c@3 {np.mean([r['c3'] for r in rows]):7.1f}"
    for e in ("ransac995", "ransac-2000it", "magsac"):
        errors = [r[e][0] if isinstance(r[e], list) else r[e] for r in rows]  # early files: one-item lists
        auc = error_auc(errors, [1, 3])
        line += f"  {e} {auc[1]:.3f} / {auc[3]:.3f}"
    print(line)
