"""Features: the one container from extraction to matching, files and pictures."""

import numpy as np
import pytest
import torch

from silk_keypoints import SiLK, SilkError
from silk_keypoints.features import Features
from silk_keypoints.matching import Matcher
from silk_keypoints.model.zoo import variant_config


def two_images() -> Features:
    kpts = [torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[5.0, 6.0]])]
    scores = [torch.tensor([0.9, 0.5]), torch.tensor([0.7])]
    desc = [torch.eye(3)[:2], torch.eye(3)[2:]]
    around = [torch.ones(2, 9, 3), torch.ones(1, 9, 3)]
    return Features.from_lists(kpts, scores, desc, (40, 30), around, 2.0)


def test_from_lists_pads_and_masks():
    f = two_images()
    assert f.keypoints.shape == (2, 2, 2) and f.descriptors.shape == (2, 2, 3)
    assert f.keypoint_mask.tolist() == [[True, True], [True, False]]
    assert (f.keypoints[1, 1] == 0).all() and f.image_size.tolist() == [[40, 30], [40, 30]]
    assert f.neighbour_spacing.tolist() == [2.0, 2.0] and f.neighbour_descriptors.shape == (2, 2, 9, 3)


def test_is_a_read_only_mapping_of_the_present_keys():
    f = two_images()
    assert set(f) == {"keypoints", "keypoint_scores", "descriptors", "image_size", "keypoint_mask",
                      "neighbour_descriptors", "neighbour_spacing"}
    assert "neighbour_descriptors" not in f.without_neighbours() and len(f.without_neighbours()) == 5
    assert f["keypoints"] is f.keypoints and dict(f)["descriptors"] is f.descriptors
    with pytest.raises(KeyError):
        f.without_neighbours()["neighbour_spacing"]
    with pytest.raises(TypeError):
        f["keypoints"] = torch.zeros(1)  # type: ignore[index]


def test_image_and_unbatch_drop_the_padding():
    one, two = two_images().unbatch()
    assert one.keypoints.shape == (1, 2, 2) and two.keypoints.shape == (1, 1, 2)
    assert two.keypoint_scores.tolist() == [[pytest.approx(0.7)]] and two.neighbour_descriptors.shape == (1, 1, 9, 3)
    assert two.image_size.tolist() == [[40, 30]] and two.neighbour_spacing.tolist() == [2.0]


def test_rescaled_maps_pixel_centres_back_to_the_original():
    f = two_images().image(0)
    big = f.rescaled((0.5, 0.25), (80, 120))
    torch.testing.assert_close(big.keypoints[0], torch.tensor([[2.5, 9.5], [6.5, 17.5]]))  # (x + .5) / s - .5
    assert big.image_size.tolist() == [[80, 120]] and big.neighbour_spacing.tolist() == [pytest.approx(2 / 0.375)]
    assert f.rescaled((1.0, 1.0), (40, 30)) is f


def test_to_numpy_uses_hloc_names():
    out = two_images().to_numpy(1)
    assert out["keypoints"].dtype == np.float32 and out["keypoints"].tolist() == [[5.0, 6.0]]
    assert out["scores"].shape == (1,) and out["image_size"].tolist() == [40, 30]
    assert out["image_size"].dtype == np.int64 and out["neighbour_spacing"] == np.float32(2.0)


def test_from_mapping_accepts_one_image_numpy_and_checks():
    f = Features.from_mapping({"keypoints": np.zeros((3, 2)), "descriptors": np.ones((3, 4)), "scores": [1, 2, 3]})
    assert f.keypoints.shape == (1, 3, 2) and f.keypoint_scores.tolist() == [[1, 2, 3]]
    assert f.keypoint_mask.all() and f.image_size.tolist() == [[0, 0]]
    assert Features.from_mapping(f) is f
    assert Features.from_mapping({"keypoints": np.zeros((1, 2)), "descriptors": np.ones((1, 4))},
                                 image_size=(7, 5)).image_size.tolist() == [[7, 5]]
    with pytest.raises(SilkError, match="mine must have 'keypoints' and 'descriptors'"):
        Features.from_mapping({"keypoints": np.zeros((3, 2))}, "mine")
    with pytest.raises(SilkError, match="3 keypoints but descriptors"):
        Features.from_mapping({"keypoints": np.zeros((3, 2)), "descriptors": np.ones((2, 4))})
    with pytest.raises(SilkError, match="NaN"):
        Features.from_mapping({"keypoints": np.full((1, 2), np.inf), "descriptors": np.ones((1, 4))})
    with pytest.raises(SilkError, match="neighbour_descriptors must be"):
        Features.from_mapping({"keypoints": np.zeros((1, 2)), "descriptors": np.ones((1, 4)),
                               "neighbour_descriptors": np.ones((1, 8, 4)), "neighbour_spacing": 1})


def test_to_device_keeps_every_key():
    f = two_images().to("cpu")
    assert set(f) == set(two_images())


def test_extract_returns_features_the_matcher_takes():
    torch.manual_seed(0)  # random weights can give two keypoints the same descriptor: fixed, not left to test order
    model = SiLK(variant_config("tiny")).eval()
    x = torch.rand(2, 1, 64, 80, generator=torch.Generator().manual_seed(0))
    feats = model.extract(x, max_keypoints=20, neighbours=True)
    assert isinstance(feats, Features) and feats.batch_size == 2
    out = Matcher(refine=False)({"image0": feats, "image1": feats})
    refined = Matcher()({"image0": feats, "image1": feats})
    for i in range(2):
        n = int(feats.keypoint_mask[i].sum())
        assert len(out["matches"][i]) == n  # an image matches itself one to one
        torch.testing.assert_close(out["points0"][i], feats.keypoints[i, :n])
        assert refined["points0"][i].shape == (n, 2)
