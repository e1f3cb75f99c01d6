"""Rendered 3-D training scenes: exact correspondences through depth (analytic, round trip, photometric),
occlusion and depth edges, and the labels and training pairs made from them."""

import json
from pathlib import Path

import numpy as np
import torch

from silk_keypoints.evaluation.testdata import random_texture
from silk_keypoints.training.glue import IGNORE, UNMATCHED, labels_from_warps, main
from silk_keypoints.training.scenes import project, random_planes, render_pair

IMAGES = Path(__file__).parent / "fixtures" / "images"
K = np.array([[100.0, 0, 47.5], [0, 100.0, 31.5], [0, 0, 1]])
SIDE = np.eye(4)
SIDE[0, 3] = -0.2  # camera 1 sits 0.2 m to the right of camera 0


def test_a_fronto_parallel_wall_shifts_by_the_disparity():
    depth = np.full((64, 96), 2.0, np.float32)
    p = torch.tensor([[40.3, 20.7], [10.0, 50.0], [5.0, 5.0]])
    q = project(p, depth, depth, K, SIDE)
    shift = 100.0 * 0.2 / 2.0  # f b / z = 10 px to the left
    torch.testing.assert_close(q[:2], p[:2] - torch.tensor([shift, 0.0]), atol=1e-4, rtol=0)
    assert torch.isinf(q[2]).all()  # x = 5 - 10: outside view 1


def test_occlusion_edges_and_missing_depth():
    depth0 = np.full((64, 96), 2.0, np.float32)
    depth1 = depth0.copy()
    depth1[:, 20:40] = 1.0  # a nearer surface in view 1 hides what lands there
    depth0[30:, 70:] = 0.0  # nothing hit
    depth0[10:20, 60] = 3.0  # a depth edge
    p = torch.tensor([[40.0, 20.0], [80.0, 40.0], [60.2, 15.0], [59.5, 15.0], [61.4, 15.0], [50.0, 5.0]])
    q = project(p, depth0, depth1, K, SIDE)
    assert torch.isinf(q[0]).all()  # lands at x = 30: hidden
    assert torch.isnan(q[1:4]).all()  # no depth; within a pixel of the edge
    assert torch.isfinite(q[4:]).all()


def test_rendered_pairs_have_consistent_correspondences():
    rng = np.random.default_rng(3)
    textures = [random_texture((96, 64), rng) for _ in range(5)]
    assert len(random_planes(rng, textures)) in (4, 5)  # wall, maybe a floor, three panels
    scene = render_pair(textures, (96, 64), rng)
    assert scene.image0.shape == (64, 96, 3) and scene.depth0.shape == (64, 96) and (scene.depth0 > 0).all()
    ys, xs = np.mgrid[0:64:2, 0:96:2]
    p = torch.tensor(np.stack([xs.ravel(), ys.ravel()], 1) + 0.3, dtype=torch.float32)
    q = project(p, scene.depth0, scene.depth1, scene.K, scene.T_0to1)
    seen = torch.isfinite(q).all(1)
    assert 0.3 < seen.float().mean() < 1.0 and torch.isinf(q).any()  # parallax moves parts out of view / behind
    back = project(q[seen], scene.depth1, scene.depth0, scene.K, np.linalg.inv(scene.T_0to1))
    ok = torch.isfinite(back).all(1)
    assert ok.float().mean() > 0.95
    torch.testing.assert_close(back[ok], p[seen][ok], atol=1e-3, rtol=0)
    shift = (q[seen] - p[seen]).norm(dim=1)
    assert shift.std() > 1.0  # not one translation: displacement depends on depth
    g0, g1 = scene.image0.mean(-1), scene.image1.mean(-1)
    a = g0[p[seen][:, 1].round().long(), p[seen][:, 0].round().long()]
    b = g1[q[seen][:, 1].round().long().clamp(0, 63), q[seen][:, 0].round().long().clamp(0, 95)]
    assert np.median(np.abs(a - b)) < 0.5 * np.median(np.abs(a - np.random.default_rng(0).permutation(b)))


def test_labels_leave_unknown_points_out():
    k0 = torch.tensor([[[10.0, 10], [30, 30], [50, 50], [70, 20]]])
    k1 = torch.tensor([[[11.0, 10], [31, 30], [51, 50], [90, 60]]])
    w0 = torch.tensor([[[11.0, 10], [torch.nan, torch.nan], [torch.inf, torch.inf], [70, 20]]])
    w1 = torch.tensor([[[10.0, 10], [30, 30], [50, 50], [90, 60]]])
    l0, l1 = labels_from_warps(k0, k1, w0, w1)
    assert l0.tolist() == [[0, IGNORE, UNMATCHED, UNMATCHED]]
    # view-1 point 1 lands on view-0 point 1, whose correspondence is unknown: left out, not unmatched
    assert l1.tolist() == [[0, IGNORE, UNMATCHED, UNMATCHED]]


def test_training_on_rendered_scenes(tmp_path, capsys):
    args = ["--images", str(IMAGES), "--out", str(tmp_path / "run"), "--extractor", "tiny", "--batch", "2",
            "--keypoints", "48", "--width", "16", "--heads", "2", "--layers", "1", "--log-every", "1",
            "--threads", "1", "--steps", "1", "--pairs", "hpatches", "--size", "128x96", "--scene-share", "1",
            "--scene-planes", "3"]
    assert main(args) == 0
    row = json.loads((tmp_path / "run" / "log.jsonl").read_text())
    assert row["loss"] == row["loss"] and row["matches"] > 0 and row["unmatched"] > 0
    assert main([*args[:-1], "2"]) == 2
    assert "--scene-planes must be at least 3" in capsys.readouterr().err
    assert main([*args[:-3], "1.5"]) == 2
    assert "shares in [0, 1]" in capsys.readouterr().err
