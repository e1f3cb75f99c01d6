"""The extractor interface: SiLK models, OpenCV baselines, user callables, validation, timing, matching."""

import numpy as np
import pytest
import torch

from silk_keypoints import SilkError
from silk_keypoints.evaluation.extractors import (
    CallableExtractor,
    ModelExtractor,
    OpenCVExtractor,
    build_extractors,
    check_features,
    check_image,
    match_features,
)
from silk_keypoints.evaluation.testdata import random_texture
from silk_keypoints.matching import Matcher
from silk_keypoints.model import SiLK
from silk_keypoints.model.zoo import variant_config


@pytest.fixture(scope="module")
def image():
    return random_texture((160, 120), np.random.default_rng(0))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return SiLK(variant_config("tiny")).eval()


def test_silk_extractor_sparse_and_dense(image, tiny):
    e = ModelExtractor(tiny, "tiny", max_keypoints=100)
    f = e(image).to_numpy()
    assert f["keypoints"].shape == (100, 2) and f["descriptors"].shape == (100, 64) and f["scores"].shape == (100,)
    assert (f["keypoints"] >= 0).all() and (f["keypoints"][:, 0] <= 159).all() and (f["keypoints"][:, 1] <= 119).all()
    np.testing.assert_allclose(np.linalg.norm(f["descriptors"], axis=1), 1, atol=1e-5)
    d = e.dense(image).to_numpy()
    hf, wf = tiny.output_shape(120, 160)
    assert d["keypoints"].shape == (hf * wf, 2)
    np.testing.assert_allclose(np.linalg.norm(d["descriptors"], axis=1), 1, atol=1e-5)
    assert len(e.seconds) == 2 and e.seconds_per_image > 0
    # same features as SiLK.extract on the same image (gray or RGB input both accepted)
    ref = tiny.extract(image, max_keypoints=100)
    np.testing.assert_allclose(f["keypoints"], ref["keypoints"][0].numpy())


@pytest.mark.parametrize("method", ["sift", "orb"])
def test_opencv_baselines(image, method):
    e = OpenCVExtractor(method, max_keypoints=200)
    f = e(image).to_numpy()
    assert f["image_size"].tolist() == [160, 120]
    n = len(f["keypoints"])
    assert 20 < n <= 200 + 20  # SIFT may add a few orientations at the same location
    assert f["descriptors"].shape == (n, 128 if method == "sift" else 256)
    np.testing.assert_allclose(np.linalg.norm(f["descriptors"], axis=1), 1, atol=1e-5)
    assert len(e(image[:, :, 0])["keypoints"]) > 0  # gray input
    with pytest.raises(SilkError, match="no dense"):
        e.dense(image)


def test_orb_dot_product_is_hamming(image):
    import cv2

    orb = cv2.ORB_create(nfeatures=50)
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    _, raw = orb.detectAndCompute(gray, None)
    f = OpenCVExtractor("orb", 50)(image).to_numpy()
    hamming = np.unpackbits(raw[0] ^ raw[1]).sum()
    assert f["descriptors"][0] @ f["descriptors"][1] == pytest.approx(1 - 2 * hamming / 256)


def test_callable_extractor_converts_and_validates(image):
    def fn(img):
        xy = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])  # batch of 1, torch
        return {"keypoints": xy, "descriptors": torch.eye(2)[None]}

    f = CallableExtractor(fn, "mine")(image).to_numpy()
    assert f["keypoints"].shape == (2, 2) and f["descriptors"].shape == (2, 2)
    np.testing.assert_array_equal(f["scores"], [1.0, 1.0])
    with pytest.raises(SilkError, match="not callable"):
        CallableExtractor(None, "bad")
    with pytest.raises(SilkError, match="must return a dict"):
        CallableExtractor(lambda img: (1, 2), "bad")(image)
    with pytest.raises(SilkError, match="3 keypoints but descriptors"):
        CallableExtractor(lambda img: {"keypoints": np.zeros((3, 2)), "descriptors": np.zeros((2, 4))}, "x")(image)
    with pytest.raises(SilkError, match=r"\(N, 2\)"):
        check_features({"keypoints": np.zeros((3, 3)), "descriptors": np.zeros((3, 4))}, "x")
    with pytest.raises(SilkError, match="NaN"):
        check_features({"keypoints": np.full((1, 2), np.nan), "descriptors": np.zeros((1, 4))}, "x")
    with pytest.raises(SilkError, match="features of one image"):
        check_features({"keypoints": np.zeros((2, 3, 2)), "descriptors": np.zeros((2, 3, 4))}, "x")


def test_old_name_of_the_model_extractor_warns():
    from silk_keypoints.evaluation import extractors

    with pytest.warns(DeprecationWarning, match="ModelExtractor"):
        assert extractors.SiLKExtractor is ModelExtractor


def test_check_image():
    assert check_image(np.zeros((4, 5), np.uint8)).shape == (4, 5)
    with pytest.raises(SilkError, match="uint8"):
        check_image(np.zeros((4, 5), np.float32))
    with pytest.raises(SilkError, match="shape"):
        check_image(np.zeros((4, 5, 4), np.uint8))


def test_build_extractors_names_and_errors(tmp_path, tiny):
    path = tmp_path / "tiny.safetensors"
    tiny.save(path)
    es = build_extractors(checkpoints=[str(path), str(path)], baselines=["sift", " ORB "], max_keypoints=50)
    assert [e.name for e in es] == ["tiny", "tiny#2", "sift", "orb"]
    assert es[0].options == {"neighbours": True, "max_keypoints": 50}
    with pytest.raises(SilkError, match="unknown baseline"):
        build_extractors(baselines=["surf"])
    with pytest.raises(SilkError, match="no shipped weights"):
        build_extractors(models=["no-such-model"])


def test_match_features_mutual_nearest_neighbours():
    d = np.eye(4, dtype=np.float32)
    k = np.arange(8, dtype=np.float64).reshape(4, 2)
    f0 = {"keypoints": k, "descriptors": d}
    f1 = {"keypoints": k[[2, 0, 3, 1]] + 100, "descriptors": d[[2, 0, 3, 1]]}
    m, p0, p1 = match_features(f0, f1, Matcher("mnn"))
    assert m.tolist() == [[0, 1], [1, 3], [2, 0], [3, 2]]
    # no neighbour descriptors: the matched points are the keypoints
    np.testing.assert_array_equal(p0, k)
    np.testing.assert_array_equal(p1, k + 100)
    m, p0, _ = match_features({"keypoints": k[:0], "descriptors": d[:0]}, f1, Matcher("mnn"))
    assert m.shape == (0, 2) and p0.shape == (0, 2)


def test_match_features_refines_with_neighbour_descriptors():
    """Image 1's neighbour at +1 cell in x holds image 0's descriptor: the point moves there."""
    d = np.eye(4, dtype=np.float32)
    k = np.zeros((4, 2))
    around = np.zeros((4, 9, 4), dtype=np.float32)
    around[:, 4] = np.roll(d, 1, axis=0)  # the centre cells look like other keypoints
    around[:, 5] = d
    f0 = {"keypoints": k, "descriptors": d}
    f1 = {"keypoints": k, "descriptors": d, "neighbour_descriptors": around, "neighbour_spacing": 2.0}
    _, p0, p1 = match_features(f0, f1, Matcher("mnn"))
    np.testing.assert_array_equal(p0, k)
    np.testing.assert_allclose(p1[:, 0], 2.0, atol=1e-6)  # one 2-px cell (only image 1 has neighbours)
    np.testing.assert_allclose(p1[:, 1], 0.0, atol=1e-3)
    _, _, p1 = match_features(f0, f1, Matcher("mnn", refine=False))
    np.testing.assert_array_equal(p1, k)
