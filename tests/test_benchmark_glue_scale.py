"""benchmarks/glue_scale.py: the zoom/turn ground truth and its counting."""

import sys
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from glue_scale import count, similarity, zoomed_view

from silk_keypoints import Matcher, SiLK
from silk_keypoints.io import load_image

IMAGES = Path(__file__).parent / "fixtures" / "images"


def test_similarity_turns_and_scales_about_the_centre():
    H = similarity((101, 51), 0.5, 90.0)
    centre, right = cv2.perspectiveTransform(np.array([[[50.0, 25.0], [60.0, 25.0]]]), H)[0]
    np.testing.assert_allclose(centre, [50, 25], atol=1e-9)
    np.testing.assert_allclose(right, [50, 20], atol=1e-9)  # 10 px right -> 5 px up (OpenCV: counter-clockwise)


def test_zoomed_view_keeps_the_clutter_outside_and_counts_correct_matches():
    photo = load_image(IMAGES / "opencv_left.jpg")[:240, :320].copy()
    clutter = np.zeros_like(photo)
    H = similarity((320, 240), 0.5, 0.0)
    view = zoomed_view(photo, clutter, H)
    assert (view[:40] == 0).all() and (view[:, :60] == 0).all()  # the photo shrunk to the middle half
    np.testing.assert_array_equal(view[70:170, 90:230], cv2.warpPerspective(photo, H, (320, 240))[70:170, 90:230])
    model = SiLK.from_pretrained("tiny").eval()
    torch.manual_seed(0)
    f = model.extract(photo, max_keypoints=256)
    n, ok = count(Matcher("mnn"), f, f, np.eye(3))
    assert n == ok == 256
    n, ok = count(Matcher("mnn"), f, f, similarity((320, 240), 0.5, 30.0))  # a wrong truth: nothing is correct
    assert n == 256 and ok < 10
