"""SiLK model: named outputs, laziness, coordinates, extract(), input checks."""

import numpy as np
import pytest
import torch

from silk_keypoints import OUTPUT_NAMES, SiLK, SiLKConfig, SilkError
from silk_keypoints.model.backbone import (
    CONTRAST_FLOOR,
    CONTRAST_GAIN,
    CONTRAST_MEAN,
    box_mean,
    local_contrast,
)
from silk_keypoints.model.zoo import VARIANTS, variant_config


def count_calls(model: SiLK) -> dict:
    calls = {"backbone": 0, "keypoint_head": 0, "descriptor_head": 0}
    for name in calls:
        getattr(model, name).register_forward_hook(lambda *_, n=name: calls.__setitem__(n, calls[n] + 1))
    return calls


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return SiLK(variant_config("tiny")).eval()


@pytest.mark.parametrize(
    "names,expected",
    [
        (("dense_descriptors",), {"backbone": 1, "keypoint_head": 0, "descriptor_head": 1}),
        (("logits",), {"backbone": 1, "keypoint_head": 1, "descriptor_head": 0}),
        (("probability", "dense_positions", "sparse_positions"), {"backbone": 1, "keypoint_head": 1, "descriptor_head": 0}),
        (("features",), {"backbone": 1, "keypoint_head": 0, "descriptor_head": 0}),
        (OUTPUT_NAMES, {"backbone": 1, "keypoint_head": 1, "descriptor_head": 1}),
    ],
)
def test_only_needed_layers_run_once(tiny_model, names, expected):
    calls = count_calls(tiny_model)
    with torch.no_grad():
        tiny_model(torch.rand(1, 1, 48, 64), names)
    assert calls == expected


def test_outputs_in_the_order_asked(tiny_model):
    x = torch.rand(2, 1, 48, 64)
    with torch.no_grad():
        prob, logits = tiny_model(x, ("probability", "logits"))
        single = tiny_model(x, "logits")
    torch.testing.assert_close(prob, torch.sigmoid(logits))
    torch.testing.assert_close(single, logits)
    hf, wf = tiny_model.output_shape(48, 64)
    assert logits.shape == (2, 1, hf, wf)


def test_default_outputs_configurable():
    model = SiLK(variant_config("tiny"), default_outputs=("logits", "features")).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 1, 32, 32))
    assert len(out) == 2 and out[0].shape[1] == 1


def test_unknown_output_name(tiny_model):
    with pytest.raises(SilkError, match="unknown output names"):
        tiny_model(torch.rand(1, 1, 32, 32), ("logit",))


def test_shapes_and_parameters_of_vgg4():
    model = SiLK()
    assert sum(p.numel() for p in model.parameters()) == 942_147
    assert model.grid.stride == 1 and model.grid.offset == 9 and model.min_size == 19
    assert model.output_shape(120, 160) == (102, 142)


def test_batch_with_different_counts(tiny_model):
    x = torch.rand(2, 1, 64, 64)
    x[1] = 0.5
    with torch.no_grad():
        pos, desc = tiny_model(x, ("sparse_positions", "sparse_descriptors"), detection_threshold=0.5, max_keypoints=None)
    assert len(pos) == 2 and all(p.shape[0] == d.shape[0] for p, d in zip(pos, desc))
    out = tiny_model.extract(x, detection_threshold=0.5, max_keypoints=None)
    n = max(p.shape[0] for p in pos)
    assert out["keypoints"].shape == (2, n, 2)
    assert out["keypoint_mask"].sum(1).tolist() == [p.shape[0] for p in pos]


def impulse_model(config: SiLKConfig) -> SiLK:
    """Every conv passes its centre tap with weight 1: logits = the image, shifted by the net's offset."""
    model = SiLK(config).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.zero_()
                m.bias.zero_()
                k = m.kernel_size[0] // 2
                for c in range(min(m.in_channels, m.out_channels)):
                    m.weight[c, c, k, k] = 1.0
                if m.in_channels < m.out_channels:
                    m.weight[m.in_channels:, 0, k, k] = 1.0
    return model


@pytest.mark.parametrize("x,y", [(30, 20), (9, 9), (51, 40)])
def test_keypoint_lands_on_the_bright_pixel(x, y):
    """Unpadded VGG-4 layout: the 9-px offset is applied, centre of the top-left pixel is (0, 0)."""
    config = SiLKConfig(channels=(2, 2, 2, 2), batch_norm=False, head_channels=2, descriptor_dim=2)
    model = impulse_model(config)
    image = torch.zeros(1, 1, 50, 61)
    image[0, 0, y, x] = 1.0
    out = model.extract(image, max_keypoints=1)
    assert out["keypoints"][0, 0].tolist() == [x, y]
    assert out["image_size"][0].tolist() == [61, 50]


def test_keypoint_position_on_strided_grid():
    """Padded + pooled layout: the keypoint is the centre of the 2x2 cell holding the bright pixel."""
    config = SiLKConfig(channels=(2, 2), padding=1, pool_after=(0,), batch_norm=False, head_kernel=1,
                        head_channels=2, descriptor_dim=2)
    model = impulse_model(config)
    image = torch.zeros(1, 1, 40, 40)
    image[0, 0, 21, 12] = 1.0
    kp = model.extract(image, max_keypoints=1)["keypoints"][0, 0].tolist()
    assert kp == [12.5, 20.5]  # cell (row 10, col 6) covers pixels 20..21 x 12..13


def test_nms_and_borders(tiny_model):
    x = torch.rand(1, 1, 96, 96)
    with torch.no_grad():
        all_pos = tiny_model(x, "sparse_positions", max_keypoints=None)[0]
        nms_pos = tiny_model(x, "sparse_positions", max_keypoints=None, nms_radius=2)[0]
        border_pos = tiny_model(x, "sparse_positions", max_keypoints=None, remove_borders=20)[0]
    assert 0 < nms_pos.shape[0] < all_pos.shape[0]
    assert border_pos[:, :2].min() >= 20 and border_pos[:, :2].max() <= 95 - 20


def test_extract_input_forms(tiny_model):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (40, 56), dtype=np.uint8)
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    ref = tiny_model.extract(torch.from_numpy(gray).float()[None] / 255)
    for image in (gray, rgb, torch.from_numpy(gray).float()[None, None] / 255, torch.from_numpy(rgb).permute(2, 0, 1).float() / 255):
        out = tiny_model.extract(image, max_keypoints=50)
        assert set(out) >= {"keypoints", "keypoint_scores", "descriptors", "image_size"}
        # RGB->gray rounding can swap near-tied scores: compare the scores and the point sets
        torch.testing.assert_close(out["keypoint_scores"], ref["keypoint_scores"][:, :50], atol=1e-6, rtol=0)
        common = {tuple(p) for p in out["keypoints"][0].tolist()} & {tuple(p) for p in ref["keypoints"][0].tolist()}
        assert len(common) >= 48
        torch.testing.assert_close(out["descriptors"].norm(dim=-1), torch.ones(1, 50))


def test_rgb_model_takes_gray_images():
    model = SiLK(variant_config("tiny").replace(in_channels=3)).eval()
    out = model.extract(np.zeros((32, 32), dtype=np.uint8) + 128, max_keypoints=4)
    assert out["keypoints"].shape == (1, 4, 2)


@pytest.mark.parametrize(
    "image,message",
    [
        (torch.rand(1, 1, 18, 40), "too small"),
        (torch.full((1, 1, 32, 32), float("nan")), "NaN"),
        (torch.rand(1, 2, 32, 32), "1 or 3 channels"),
        (torch.rand(1, 1, 1, 32, 32), "shape"),
        (torch.zeros(1, 1, 32, 32, dtype=torch.int32), "float"),
        (np.zeros((32, 32), dtype=np.int64), "dtype"),
        ("image.png", "torch.Tensor or numpy"),
    ],
)
def test_bad_images_are_refused_clearly(image, message):
    model = SiLK().eval()
    with pytest.raises(SilkError, match=message):
        model.extract(image)


def test_huge_image_refused_before_any_work():
    model = SiLK().eval()
    calls = count_calls(model)
    huge = torch.zeros(1, 1, 1, 1).expand(1, 1, 10000, 10000)
    with pytest.raises(SilkError, match="max_pixels"):
        model(huge, "logits")
    assert calls["backbone"] == 0


def test_config_validation_and_printing():
    with pytest.raises(ValueError, match="padding"):
        SiLKConfig(padding=2)
    with pytest.raises(ValueError, match="unknown keys"):
        SiLKConfig.from_dict({"chanels": [1]})
    cfg = SiLKConfig()
    assert SiLKConfig.from_dict(cfg.to_dict()) == cfg and "channels" in repr(cfg)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variants_build_and_run(name):
    model = SiLK(variant_config(name)).eval()
    out = model.extract(torch.rand(1, 1, 64, 80), max_keypoints=16)
    assert out["keypoints"].shape == (1, 16, 2)
    assert out["descriptors"].shape[-1] == model.config.descriptor_dim
    kp = out["keypoints"][0]
    assert kp[:, 0].min() >= 0 and kp[:, 0].max() <= 79 and kp[:, 1].min() >= 0 and kp[:, 1].max() <= 63


def _local_contrast_reference(x: torch.Tensor, window: int) -> torch.Tensor:
    """Pixel by pixel: the box clipped to the image, its mean and (population) standard deviation."""
    r = window // 2
    out = torch.empty_like(x)
    h, w = x.shape[-2:]
    for i in range(h):
        for j in range(w):
            box = x[..., max(0, i - r): i + r + 1, max(0, j - r): j + r + 1].flatten(-2)
            mean, std = box.mean(-1), box.var(-1, unbiased=False).sqrt()
            out[..., i, j] = CONTRAST_MEAN + CONTRAST_GAIN * (x[..., i, j] - mean) / (std + CONTRAST_FLOOR)
    return out


def test_local_contrast_equals_the_pixelwise_definition():
    x = torch.rand(2, 3, 11, 14, dtype=torch.float64)
    torch.testing.assert_close(local_contrast(x, 5), _local_contrast_reference(x, 5))


def test_local_contrast_ignores_offsets_and_flat_images():
    x = torch.rand(1, 1, 40, 50, dtype=torch.float64)
    torch.testing.assert_close(local_contrast(x + 0.3, 9), local_contrast(x, 9))
    torch.testing.assert_close(local_contrast(torch.full((1, 1, 20, 20), 0.7), 9), torch.full((1, 1, 20, 20), 0.5))
    # a gain of the light changes the result only through the floor added to the standard deviation
    a, b = local_contrast(x, 9), local_contrast(2 * x, 9)
    assert (a - 0.5).abs().mean() < (b - 0.5).abs().mean() < 1.2 * (a - 0.5).abs().mean()


def test_contrast_window_runs_first_in_the_backbone():
    torch.manual_seed(0)
    model = SiLK(variant_config("tiny").replace(contrast_window=7)).eval()
    plain = SiLK(variant_config("tiny")).eval()
    plain.load_state_dict(model.state_dict())
    x = torch.rand(1, 1, 48, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x, "logits"), plain(local_contrast(x, 7), "logits"))


@pytest.mark.parametrize("window", [1, 4, -3])
def test_contrast_window_must_be_odd(window):
    with pytest.raises(SilkError, match="contrast_window"):
        SiLKConfig(contrast_window=window)


@pytest.mark.parametrize("window", [3, 7, 13])
def test_box_mean_equals_average_pooling_inside_the_image(window):
    x = torch.rand(2, 2, 13, 29, dtype=torch.float64)
    pooled = torch.nn.functional.avg_pool2d(x, window, 1, window // 2, count_include_pad=False)
    torch.testing.assert_close(box_mean(x, window), pooled)


def test_box_mean_of_a_window_larger_than_the_image_is_the_image_mean():
    x = torch.rand(2, 2, 13, 29, dtype=torch.float64)
    torch.testing.assert_close(box_mean(x, 63), x.mean((-2, -1), keepdim=True).expand_as(x))
