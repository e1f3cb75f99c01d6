"""The LightGlue-style extractor and the kornia-style local feature: interfaces, shapes, resizing, padding,
masks, and use with this package's Matcher and kornia's LocalFeatureMatcher."""

import kornia
import kornia.feature as KF
import numpy as np
import pytest
import torch

from silk_keypoints import SilkError
from silk_keypoints.ecosystem.kornia import SiLKFeature
from silk_keypoints.ecosystem.lightglue import SiLKExtractor
from silk_keypoints.matching import Matcher
from silk_keypoints.model import SiLK
from silk_keypoints.model.zoo import variant_config


@pytest.fixture(scope="module")
def model() -> SiLK:
    torch.manual_seed(0)
    return SiLK(variant_config("tiny")).eval()


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    """(3, H, W) float in [0, 1], as LightGlue's load_image returns."""
    g = torch.Generator().manual_seed(0)
    small = torch.rand(3, 12, 16, generator=g)
    return torch.nn.functional.interpolate(small[None], size=(90, 120), mode="bilinear")[0]


# --- LightGlue ---------------------------------------------------------------------------------------------
def test_extractor_has_lightglue_interface(model):
    extractor = SiLKExtractor(model, max_num_keypoints=64)
    assert extractor.conf.max_num_keypoints == 64 and extractor.conf.detection_threshold is None
    assert {"resize", "side", "interpolation", "align_corners", "antialias"} <= set(
        SiLKExtractor.preprocess_conf
    )
    assert SiLKExtractor.preprocess_conf["resize"] == 1024 and SiLKExtractor.required_data_keys == ["image"]
    assert extractor.model is model and not extractor.training


def test_extract_without_resize_equals_the_model(model, image):
    feats = SiLKExtractor(model, max_num_keypoints=50).extract(image, resize=None)
    ref = model.extract(image, max_keypoints=50)
    assert feats["keypoints"].shape == (1, 50, 2) and feats["descriptors"].shape == (1, 50, 64)
    assert feats["keypoint_scores"].shape == (1, 50)
    torch.testing.assert_close(feats["keypoints"], ref["keypoints"])
    torch.testing.assert_close(feats["descriptors"], ref["descriptors"])
    assert feats["image_size"].dtype == torch.float32 and feats["image_size"].tolist() == [[120.0, 90.0]]


def test_extract_resizes_long_side_and_maps_back(model, image):
    extractor = SiLKExtractor(model, max_num_keypoints=40)
    feats = extractor.extract(image, resize=60)  # 120 x 90 -> 60 x 45
    small = kornia.geometry.transform.resize(image[None], 60, side="long", antialias=True)
    assert small.shape[-2:] == (45, 60)
    ref = model.extract(small, max_keypoints=40)
    torch.testing.assert_close(feats["keypoints"], (ref["keypoints"] + 0.5) * 2 - 0.5)  # LightGlue's mapping
    assert feats["image_size"].tolist() == [[120.0, 90.0]]
    up = extractor.extract(image, resize=240)  # like LightGlue, resize also enlarges
    assert up["keypoints"][..., 0].max() <= 119.5 and up["keypoints"].min() >= -0.5


def test_extract_accepts_lightglue_image_forms(model, image):
    extractor = SiLKExtractor(model, max_num_keypoints=20)
    gray = image.mean(0, keepdim=True)
    for img in (image, image[None], gray, (image * 255).to(torch.uint8)):
        assert extractor.extract(img, resize=None)["keypoints"].shape == (1, 20, 2)
    batch = extractor({"image": torch.stack([image, image.flip(-1)])})
    assert batch["keypoints"].shape == (2, 20, 2)


def test_extractor_bad_input(model, image, tmp_path):
    with pytest.raises(SilkError, match="unknown SiLKExtractor options"):
        SiLKExtractor(model, max_keypoints=5)
    extractor = SiLKExtractor(model)
    with pytest.raises(SilkError, match="unknown preprocessing options"):
        extractor.extract(image, size=3)
    with pytest.raises(SilkError, match="one image"):
        extractor.extract(torch.stack([image, image]))
    with pytest.raises(SilkError, match="needs data"):
        extractor({"img": image[None]})
    with pytest.raises(SilkError, match="no shipped weights named 'nope'"):
        SiLKExtractor(weights="nope")
    path = tmp_path / "m.safetensors"
    model.save(path)
    loaded = SiLKExtractor(weights=str(path), max_num_keypoints=10)
    expected = model.extract(image, max_keypoints=10)["keypoints"]
    torch.testing.assert_close(loaded.extract(image, resize=None)["keypoints"], expected)


def test_lightglue_style_matching(model, image):
    """LightGlue's demo flow, with this package's Matcher in place of LightGlue (no SiLK weights for it)."""
    extractor = SiLKExtractor(model, max_num_keypoints=100)
    feats0 = extractor.extract(image, resize=None)
    feats1 = extractor.extract(image.flip(-1), resize=None)
    matches01 = Matcher("mnn")({"image0": feats0, "image1": feats1})
    m = matches01["matches"][0]
    assert matches01["matches0"].shape == (1, 100) and len(m) > 0
    points0, points1 = feats0["keypoints"][0][m[:, 0]], feats1["keypoints"][0][m[:, 1]]
    assert points0.shape == points1.shape == (len(m), 2)


def _backward_through(feats) -> None:
    """What LightGlue's matcher does outside no_grad: layers with weights on the features, then backward."""
    layer = torch.nn.Linear(2 + feats["descriptors"].shape[-1], 4)
    x = torch.cat([feats["keypoints"], feats["descriptors"]], -1)
    (layer(x).sum() + (feats["keypoint_scores"] * layer.bias.sum()).sum()).backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


def test_extract_outputs_are_ordinary_tensors(model, image):
    """Outputs of every public extraction path are usable by autograd code (no inference tensors)."""
    outputs = [
        model.extract(image),
        model.extract(image, neighbours=True, exact=True),
        SiLKExtractor(model, max_num_keypoints=30).extract(image),
        SiLKExtractor(model)({"image": image[None]}),
    ]
    for feats in outputs:
        assert not any(v.is_inference() for v in feats.values())
        assert not feats["descriptors"].requires_grad
        _backward_through(feats)
    lafs, responses, descs = SiLKFeature(model, max_keypoints=30)(image[None])
    assert not (lafs.is_inference() or responses.is_inference() or descs.is_inference())


def test_extractor_follows_lightglue_conf(model, image):
    stride = model.grid.stride
    extractor = SiLKExtractor(model, max_num_keypoints=25, nms_radius=2 * stride, descriptor_dim=256,
                              force_num_keypoints=True)
    ref = model.extract(image, max_keypoints=25, nms_radius=2)  # LightGlue's pixels -> SiLK's cells
    feats = extractor.extract(image, resize=None)
    torch.testing.assert_close(feats["keypoints"], ref["keypoints"])
    assert set(SiLKExtractor.ignored_conf) >= {"descriptor_dim", "force_num_keypoints"}
    assert SiLKExtractor.preprocess_conf["grayscale"] is False
    gray = SiLKExtractor(model, max_num_keypoints=25).extract(image, resize=None, grayscale=True)
    torch.testing.assert_close(gray["keypoints"], model.extract(image, max_keypoints=25)["keypoints"])
    rgb = SiLK(variant_config("tiny").replace(in_channels=3)).eval()
    as_gray = SiLKExtractor(rgb, max_num_keypoints=25).extract(image, resize=None, grayscale=True)
    gray3 = image.mul(torch.tensor([0.299, 0.587, 0.114])[:, None, None]).sum(0, keepdim=True)
    torch.testing.assert_close(as_gray["keypoints"], rgb.extract(gray3, max_keypoints=25)["keypoints"])


# --- kornia ------------------------------------------------------------------------------------------------
def test_kornia_feature_conventions(model, image):
    feature = SiLKFeature(model, max_keypoints=30, laf_scale=6.0)
    lafs, responses, descs = feature(image[None])
    assert lafs.shape == (1, 30, 2, 3) and responses.shape == (1, 30) and descs.shape == (1, 30, 64)
    ref = model.extract(image, max_keypoints=30)
    torch.testing.assert_close(KF.get_laf_center(lafs), ref["keypoints"])
    torch.testing.assert_close(KF.get_laf_scale(lafs), torch.full((1, 30, 1, 1), 6.0), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(KF.get_laf_orientation(lafs), torch.zeros(1, 30, 1))
    torch.testing.assert_close(responses, ref["keypoint_scores"])
    torch.testing.assert_close(descs.norm(dim=-1), torch.ones(1, 30))


def test_kornia_mask_and_batch_padding(model, image):
    feature = SiLKFeature(model, max_keypoints=200)
    full = KF.get_laf_center(feature(image[None])[0])[0]
    mask = torch.ones(2, 1, 90, 120)
    mask[1, :, :, :60] = 0  # image 1: detect on the right half only
    lafs, responses, descs = feature(torch.stack([image, image]), mask)
    filled = KF.laf_is_filled(lafs)
    right = int((full[:, 0].round() >= 60).sum())
    assert filled.sum(1).tolist() == [200, right] and 0 < right < 200
    assert filled[1, :right].all()  # filled slots first, best response first
    assert (KF.get_laf_center(lafs)[1, :right, 0] >= 59.5).all()
    assert (responses[~filled] == 0).all() and (descs[~filled] == 0).all() and (lafs[~filled] == 0).all()
    with pytest.raises(SilkError, match="mask must be"):
        feature(image[None], torch.ones(1, 90, 121))


def test_kornia_local_feature_matcher(model, image):
    feature = SiLKFeature(model, max_keypoints=100)
    matcher = KF.LocalFeatureMatcher(feature, KF.DescriptorMatcher("mnn"))
    gray0, gray1 = image.mean(0)[None, None], image.mean(0).flip(-1)[None, None]
    out = matcher({"image0": gray0, "image1": gray1})
    (lafs0, _, d0), (lafs1, _, d1) = feature(gray0), feature(gray1)
    _, idx = KF.DescriptorMatcher("mnn")(d0[0], d1[0])
    assert len(idx) > 0 and out["lafs0"].shape == (1, len(idx), 2, 3)
    torch.testing.assert_close(out["keypoints0"], KF.get_laf_center(lafs0)[0][idx[:, 0]])
    torch.testing.assert_close(out["keypoints1"], KF.get_laf_center(lafs1)[0][idx[:, 1]])


def test_kornia_feature_bad_options(model):
    with pytest.raises(SilkError, match="laf_scale"):
        SiLKFeature(model, laf_scale=0)
    with pytest.raises(SilkError, match="unknown SiLKFeature options"):
        SiLKFeature(model, max_num_keypoints=3)
    assert np.isclose(SiLKFeature(model).laf_scale, 8.0)
