"""Average two SiLKGlue weight files of the same architecture (a weight "soup"): soup.py A B OUT [--alpha a].

OUT = (1 - a) * A + a * B, parameter by parameter; the provenance of both goes into OUT's ``info``.
"""

import argparse
import json

import torch

from silk_keypoints.glue import _FORMAT, SiLKGlue
from silk_keypoints.model.checkpoint import read_safetensors

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("a")
parser.add_argument("b")
parser.add_argument("out")
parser.add_argument("--alpha", type=float, default=0.5)
args = parser.parse_args()
glue_a, glue_b = SiLKGlue.from_file(args.a), SiLKGlue.from_file(args.b)
assert glue_a.conf == glue_b.conf, (glue_a.conf, glue_b.conf)
info_a, info_b = (json.loads(read_safetensors(p, _FORMAT)[1]["info"]) for p in (args.a, args.b))
state_b = glue_b.state_dict()
with torch.no_grad():
    glue_a.load_state_dict({k: torch.lerp(v, state_b[k], args.alpha) for k, v in glue_a.state_dict().items()})
info = {**info_b, "soup": {"alpha": args.alpha, "a": args.a, "b": args.b, "info_a": info_a}}
print(glue_a.save(args.out, info))
