"""The keypoint-offset head (model/offsets.py) inside SiLK: named outputs, extraction on every path."""

import pytest
import torch
from test_fused import make_model

from silk_keypoints import SiLK, SilkError
from silk_keypoints.model.sparse import interpolated_descriptors
from silk_keypoints.model.zoo import variant_config
from silk_keypoints.training.offsets import OffsetLossConfig, detection_weight, offset_loss, offset_stats


def with_random_head(name: str, **changes) -> SiLK:
    model = make_model(variant_config(name).replace(offset_hidden=16, **changes))
    torch.manual_seed(1)
    torch.nn.init.normal_(model.offset_head.out.weight, std=0.5)  # the trained output layer starts at zero
    return model.eval()


def assert_same_features(a, b, tol: float = 1e-4) -> None:
    """Same keypoints (up to order among near-equal scores), descriptors and neighbours, image by image; keypoints
    whose score is within ``tol`` of the top-k cut may be swapped for others."""
    for i in range(a.batch_size):
        ka, kb = a.keypoints[i][a.keypoint_mask[i]], b.keypoints[i][b.keypoint_mask[i]]
        dist, j = torch.cdist(ka.double(), kb.double()).min(dim=1)
        cut = min(a.keypoint_scores[i].min(), b.keypoint_scores[i].min())
        paired = dist < tol
        assert bool((a.keypoint_scores[i][~paired] <= cut + tol).all()), "keypoints differ away from the cut"
        for key in ("descriptors", "neighbour_descriptors"):
            if key in a:
                torch.testing.assert_close(a[key][i][paired], b[key][i][j[paired]], atol=tol, rtol=0)


@pytest.fixture(scope="module", params=["fast", "tiny"])
def model(request):
    return with_random_head(request.param)


def test_dense_and_sparse_head_agree(model):
    x = torch.rand(1, 1, 70, 93, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        feats = model(x, "features")
        dense = model.offset_head(feats, x)[0].flatten(1).t()
        hf, wf = feats.shape[-2:]
        index = torch.tensor([0, wf - 1, (hf - 1) * wf, hf * wf - 1, wf + 1, hf * wf // 2])
        torch.testing.assert_close(model.offset_head.at_cells(feats[0], x[0], index), dense[index], atol=1e-5, rtol=0)
    bound = model.config.offset_bound * model.grid.stride
    assert 0 < dense.abs().max() <= bound + 1e-6


def test_named_outputs_move_keypoints_and_sample_descriptors_there(model):
    x = torch.rand(1, 1, 64, 80, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        offsets, positions, desc, raw = model(x, ("keypoint_offsets", "sparse_positions", "sparse_descriptors",
                                                  "raw_descriptors"), max_keypoints=40)
        plain = SiLK(model.config.replace(offset_hidden=0))
        plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("offset_head")})
        centres = plain.eval()(x, "sparse_positions", max_keypoints=40)[0]
    cells = model.grid.to_cells(centres[:, :2]).round().long()
    moved = offsets[0, :, cells[:, 1], cells[:, 0]].t()
    torch.testing.assert_close(positions[0][:, :2], centres[:, :2] + moved, atol=1e-5, rtol=0)
    hf, wf = raw.shape[-2:]
    table = torch.nn.functional.normalize(raw[0].flatten(1).t(), dim=1)
    expected = interpolated_descriptors(lambda c: table[c], model.grid.to_cells(positions[0][:, :2]), hf, wf)
    torch.testing.assert_close(desc[0], expected * model.config.descriptor_scale, atol=1e-5, rtol=0)


def test_extract_exact_equals_fused_and_the_named_outputs(model):
    x = torch.rand(2, 1, 64, 80, generator=torch.Generator().manual_seed(3))
    exact = model.extract(x, max_keypoints=30, exact=True, neighbours=True)
    assert_same_features(model.extract(x, max_keypoints=30, neighbours=True), exact)
    with torch.no_grad():
        positions = model(x, "sparse_positions", max_keypoints=30)
    torch.testing.assert_close(exact.keypoints[1], positions[1][:, :2])
    assert not torch.equal(exact.keypoints % model.grid.stride, torch.full_like(exact.keypoints, 0.5))  # off-grid


def test_onnx_runner_equals_torch(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from silk_keypoints.ecosystem.onnx import OnnxSiLK, export_onnx

    # the same graph code for fast; tiny exports in half the time. With a local contrast normalisation too
    # (fast's input layer), so that one export covers both
    model = with_random_head("tiny", contrast_window=15)
    runner = OnnxSiLK(export_onnx(model, tmp_path / "m.onnx", example_size=(64, 80)))
    assert runner.outputs[-1] == "offsets"
    x = torch.rand(1, 1, 72, 88, generator=torch.Generator().manual_seed(4))
    ours, ref = runner.extract(x, max_keypoints=30, neighbours=True), model.extract(x, max_keypoints=30, neighbours=True)
    assert_same_features(ours, ref)


def test_config_refuses_an_offset_head_without_a_strided_grid():
    with pytest.raises(SilkError, match="offset head"):
        variant_config("vgg4").replace(offset_hidden=8)
    assert SiLK(variant_config("vgg4")).offset_head is None


def test_pixel_window_is_invariant_to_gain_and_offset_of_the_light():
    model = with_random_head("tiny")
    x = torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(5)) * 0.5
    with torch.no_grad():
        feats = model(x, "features")  # the same features: only the pixel part sees the change
        a, b = model.offset_head(feats, x), model.offset_head(feats, 0.3 + 1.5 * x)
    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1))  # border windows see the zero padding
    assert (a[inner] - b[inner]).abs().max() < 0.05 * model.config.offset_bound * model.grid.stride


def test_offset_loss_is_zero_for_identity_and_follows_a_sub_cell_shift():
    grid = SiLK(variant_config("fast")).grid
    b, hf, wf = 1, 24, 24
    zeros = torch.zeros(b, 2, hf, wf, requires_grad=True)
    prob = torch.rand(b, 1, hf, wf, generator=torch.Generator().manual_seed(6))
    cfg = OffsetLossConfig(centring=0.0)
    same = offset_loss(zeros, zeros, prob, prob, torch.eye(3, dtype=torch.float64)[None], grid, (48, 48), cfg)
    assert float(same["loss"].detach()) == 0.0
    shift = torch.tensor([[[1.0, 0.0, 0.7], [0.0, 1.0, 0.3], [0.0, 0.0, 1.0]]], dtype=torch.float64)
    other = torch.zeros(b, 2, hf, wf, requires_grad=True)
    moved = offset_loss(zeros, other, prob, prob, shift, grid, (48, 48), cfg)
    assert float(moved["err"].detach()) == pytest.approx((0.7**2 + 0.3**2) ** 0.5, abs=1e-4)
    moved["loss"].backward()
    assert zeros.grad.abs().sum() > 0 and other.grad.abs().sum() > 0
    follow = torch.zeros(b, 2, hf, wf)  # view 1's points 0.7, 0.3 px further: both directions exact
    follow[:, 0], follow[:, 1] = 0.7, 0.3
    assert float(offset_loss(torch.zeros(b, 2, hf, wf), follow, prob, prob, shift, grid, (48, 48), cfg)["err"]) < 1e-4


def test_offset_statistics_and_weights():
    prob = torch.arange(16.0).reshape(1, 1, 4, 4) / 16
    w = detection_weight(prob, OffsetLossConfig(top_fraction=0.25))
    assert w.sum() == 4 and bool((w[0, -4:] == 1).all())
    offsets = torch.zeros(1, 2, 4, 4)
    offsets[0, 0, 3, 3] = 1.0  # dx at the bound of a 1-px bound
    stats = offset_stats(offsets, w, bound=1.0)
    assert stats["at_bound"] == pytest.approx(1 / 8) and stats["near_zero"] == pytest.approx(3 / 4)
