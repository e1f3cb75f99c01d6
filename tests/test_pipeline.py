"""The one extraction pipeline (model/pipeline.py), run over a small hand-made network."""

import pytest
import torch
import torch.nn.functional as F

from silk_keypoints import SiLKConfig, SilkError
from silk_keypoints.model.coords import GridMap
from silk_keypoints.model.pipeline import check_images, detection_options, extract_features, images_per_pass
from silk_keypoints.model.sparse import interpolated_descriptors


class Toy:
    """A stride-2 "network": probability and descriptors are fixed maps; optional constant offsets."""

    def __init__(self, offsets: torch.Tensor | None = None) -> None:
        self.grid = GridMap(2.0, 0.5)
        g = torch.Generator().manual_seed(0)
        self.prob = torch.rand(1, 1, 6, 8, generator=g)
        self.desc = F.normalize(torch.randn(48, 5, generator=g), dim=1)
        self.offsets = offsets
        self.passed = []

    def passes(self, images):
        for chunk in images.split(1):
            self.passed.append(len(chunk))
            yield chunk

    def probability(self, state):
        return self.prob.expand(len(state), -1, -1, -1)

    def descriptors_at(self, state, image, cells):
        return self.desc[cells]

    def offsets_at(self, state, image, cells):
        return None if self.offsets is None else self.offsets.expand(len(cells), 2)


OPTS = {"max_keypoints": 5, "detection_threshold": 0.0, "nms_radius": 0, "remove_borders": 0, "positions": "cells"}


def test_keypoints_on_cell_centres_without_offsets():
    net = Toy()
    f = extract_features(net, torch.zeros(3, 1, 12, 16), OPTS, neighbours=True)
    assert net.passed == [1, 1, 1] and f.keypoints.shape == (3, 5, 2)
    best = net.prob.flatten().topk(5).indices
    torch.testing.assert_close(f.keypoints[0], torch.stack([best % 8, best // 8], 1).float() * 2 + 0.5)
    torch.testing.assert_close(f.descriptors[0], net.desc[best])
    assert f.neighbour_descriptors.shape == (3, 5, 9, 5) and f.neighbour_spacing.tolist() == [2.0] * 3
    torch.testing.assert_close(f.neighbour_descriptors[0, :, 4], net.desc[best])


def test_offsets_move_keypoints_and_descriptors_are_sampled_there():
    shift = torch.tensor([[0.5, -0.25]])
    plain = extract_features(Toy(), torch.zeros(1, 1, 12, 16), OPTS)
    net = Toy(shift)
    moved = extract_features(net, torch.zeros(1, 1, 12, 16), OPTS)
    torch.testing.assert_close(moved.keypoints, plain.keypoints + shift)
    expected = interpolated_descriptors(lambda c: net.desc[c], net.grid.to_cells(moved.keypoints[0]), 6, 8)
    torch.testing.assert_close(moved.descriptors[0], expected)
    assert moved.keypoint_scores.equal(plain.keypoint_scores)
    around = extract_features(net, torch.zeros(1, 1, 12, 16), OPTS, neighbours=True).neighbour_descriptors[0]
    torch.testing.assert_close(around[:, 4], expected)  # the centre of the 3x3 is the keypoint itself
    right = net.grid.to_cells(moved.keypoints[0]) + torch.tensor([1.0, 0.0])
    inside = right[:, 0] <= 7.5
    torch.testing.assert_close(around[inside, 5], interpolated_descriptors(lambda c: net.desc[c], right[inside], 6, 8))
    assert (around[~inside, 5] == 0).all()


def test_detection_options_merge_and_refuse_unknown_keys():
    config = SiLKConfig(max_keypoints=100)
    opts = detection_options(config, {"max_keypoints": 7, "nms_radius": None})
    assert opts["max_keypoints"] == 7 and opts["nms_radius"] == config.nms_radius
    with pytest.raises(SilkError, match="unknown detection options"):
        detection_options(config, {"top_k": 3})
    assert detection_options(SiLKConfig(max_keypoints=None), {})["max_keypoints"] is None


@pytest.mark.parametrize("key, value, phrase", [
    ("max_keypoints", -5, "max_keypoints must be an integer >= 1, got -5"),
    ("max_keypoints", 0, "max_keypoints must be an integer >= 1, got 0"),
    ("max_keypoints", 2.5, "max_keypoints must be an integer >= 1, got 2.5"),
    ("max_keypoints", True, "max_keypoints must be an integer >= 1, got True"),
    ("nms_radius", -3, "nms_radius must be an integer >= 0, got -3"),
    ("remove_borders", -4, "remove_borders must be an integer >= 0, got -4"),
    ("remove_borders", 1.5, "remove_borders must be an integer >= 0"),
    ("detection_threshold", 1.5, r"detection_threshold must be a number in \[0, 1\)"),
    ("detection_threshold", float("nan"), "detection_threshold must be a number in"),
    ("detection_threshold", -0.1, "detection_threshold must be a number in"),
    ("detection_threshold", "0.5", "detection_threshold must be a number in"),
])
def test_detection_options_refuse_values_that_select_nothing_or_crash(key, value, phrase):
    with pytest.raises(SilkError, match=phrase):
        detection_options(SiLKConfig(), {key: value})


def test_check_images_and_passes():
    config = SiLKConfig()
    check_images(torch.zeros(1, 1, 40, 40), config, 19)
    with pytest.raises(SilkError, match="empty batch"):
        check_images(torch.zeros(0, 1, 40, 40), config, 19)
    with pytest.raises(SilkError, match="too small"):
        check_images(torch.zeros(1, 1, 10, 40), config, 19)
    with pytest.raises(SilkError, match="NaN"):
        check_images(torch.full((1, 1, 40, 40), float("nan")), config, 19)
    assert images_per_pass(torch.zeros(9, 1, 100, 100), 25_000) == 2
    assert images_per_pass(torch.zeros(9, 1, 100, 100), 10) == 1
