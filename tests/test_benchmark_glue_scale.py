"""benchmarks/glue_scale.py: counting correct matches against the zoom/turn ground truth."""

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from glue_scale import count

from silk_keypoints import Matcher, SiLK
from silk_keypoints.evaluation.testdata import rotation_about
from silk_keypoints.io import load_image

IMAGES = Path(__file__).parent / "fixtures" / "images"


def test_count_compares_matches_with_the_truth():
    photo = load_image(IMAGES / "opencv_left.jpg")[:240, :320].copy()
    model = SiLK.from_pretrained("tiny").eval()
    torch.manual_seed(0)
    f = model.extract(photo, max_keypoints=256)
    n, ok = count(Matcher("mnn"), f, f, np.eye(3))
    assert n == ok == 256
    n, ok = count(Matcher("mnn"), f, f, rotation_about((320, 240), 30.0, 0.5))  # a wrong truth: nothing is correct
    assert n == 256 and ok < 10
