"""The fast inference path (BN folding, fused network, caching, batched top-k) equals the exact path."""

import copy
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import FIXTURES, original_to_ours
from torch import nn

from silk_keypoints import SiLK, SiLKConfig, SilkError, load_image
from silk_keypoints.model import fused as fast
from silk_keypoints.model.coords import GridMap
from silk_keypoints.model.fused import (
    FusedConv,
    FusedSiLK,
    bn_affine,
    fold_input_affine,
    fold_output_affine,
    inplace_conv_available,
)
from silk_keypoints.model.sparse import select_keypoints
from silk_keypoints.model.zoo import available_pretrained, variant_config

DENSE = ("features", "logits", "probability", "raw_descriptors", "dense_descriptors", "dense_positions")


def same_keypoints(a: np.ndarray, b: np.ndarray, tie_tol: float) -> np.ndarray:
    """Assert two (N, 3) ``(x, y, score)`` top-k sets are equal except for cells scored within ``tie_tol`` of
    the cut (the lowest kept score); return the index pairs (into a, into b) of the common keypoints."""
    key_a = {(x, y): i for i, (x, y) in enumerate(a[:, :2].tolist())}
    key_b = {(x, y): i for i, (x, y) in enumerate(b[:, :2].tolist())}
    cut = min(a[:, 2].min(), b[:, 2].min())
    for only, rows in ((set(key_a) - set(key_b), a), (set(key_b) - set(key_a), b)):
        index = key_a if rows is a else key_b
        scores = np.array([rows[index[k], 2] for k in only])
        assert np.all(scores <= cut + tie_tol), f"{len(only)} keypoints differ away from the top-k cut"
    common = sorted(set(key_a) & set(key_b))
    return np.array([(key_a[k], key_b[k]) for k in common]).reshape(-1, 2)


def randomise_batchnorm(model: SiLK, seed: int = 0) -> SiLK:
    """Non-trivial BN statistics and affine parameters, so that folding them really matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.05)
                m.weight.copy_(torch.rand(n, generator=g) * 3 - 1.5)  # negative scales too
                m.bias.copy_(torch.randn(n, generator=g) * 0.3)
    return model.eval()


def make_model(config: SiLKConfig, seed: int = 0) -> SiLK:
    torch.manual_seed(seed)
    return randomise_batchnorm(SiLK(config), seed)


# -------------------------------------------------------------------------------- folding helpers
def test_fold_helpers_are_exact_in_float64():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 5, 3).double()
    bn = randomise_batchnorm_module(nn.BatchNorm2d(5).double())
    x = torch.randn(2, 4, 9, 11, dtype=torch.float64)
    w, b = fold_output_affine(conv.weight, conv.bias, bn_affine(bn))
    torch.testing.assert_close(F.conv2d(x, w, b), bn(conv(x)), rtol=1e-12, atol=1e-12)
    bn_in = randomise_batchnorm_module(nn.BatchNorm2d(4).double())
    w, b = fold_input_affine(conv.weight, conv.bias, bn_affine(bn_in))
    torch.testing.assert_close(F.conv2d(x, w, b), conv(bn_in(x)), rtol=1e-12, atol=1e-12)
    assert bn_affine(nn.Identity()) is None


def randomise_batchnorm_module(bn: nn.BatchNorm2d) -> nn.BatchNorm2d:
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.1, 2)
        bn.weight.uniform_(-2, 2)
        bn.bias.normal_()
    return bn.eval()


@pytest.mark.parametrize("padding", [0, 1])
def test_single_channel_conv_as_matrix_product(padding):
    torch.manual_seed(0)
    w, b = torch.randn(8, 1, 3, 3), torch.randn(8)
    conv = FusedConv(w, b, padding, relu=True, dtype=torch.float32, channels_last=True)
    assert conv.im2col
    x = torch.rand(2, 1, 13, 17)
    out = conv(x)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, F.relu(F.conv2d(x, w, b, padding=padding)), rtol=1e-5, atol=1e-5)


# -------------------------------------------------------------------------------- fast == exact
@pytest.fixture(scope="module")
def parity_outputs(parity_model, parity_ref):
    image = torch.from_numpy(parity_ref["image"])
    with torch.inference_mode():
        exact = dict(zip(DENSE, parity_model(image, DENSE)))
        fast = dict(zip(DENSE, parity_model(image, DENSE, exact=False)))
    return exact, fast


@pytest.mark.parametrize("name", DENSE)
def test_fast_dense_outputs_within_2e4_of_exact_on_parity_fixture(parity_outputs, name):
    exact, fast = parity_outputs
    assert fast[name].shape == exact[name].shape
    torch.testing.assert_close(fast[name], exact[name], rtol=0, atol=2e-4)


def test_fast_path_is_the_folded_network(parity_outputs):
    _, fast = parity_outputs
    assert fast["raw_descriptors"].is_contiguous(memory_format=torch.channels_last)
    assert fast["logits"].dtype == torch.float32


@pytest.mark.parametrize("k,tie_tol", [(501, 0.0), (10001, 5e-5)])
def test_fast_extract_keypoints_equal_exact_and_original(parity_model, parity_ref, k, tie_tol):
    image = torch.from_numpy(parity_ref["image"])
    fast = parity_model.extract(image, max_keypoints=k)
    exact = parity_model.extract(image, max_keypoints=k, exact=True)
    rows = [
        torch.cat([o["keypoints"][0], o["keypoint_scores"][0, :, None]], 1).numpy() for o in (fast, exact)
    ]
    pairs = same_keypoints(rows[0], rows[1], tie_tol)
    assert len(pairs) >= k - 2
    np.testing.assert_allclose(rows[0][pairs[:, 0], 2], rows[1][pairs[:, 1], 2], atol=2e-5)
    d_fast, d_exact = fast["descriptors"][0].numpy(), exact["descriptors"][0].numpy()
    np.testing.assert_allclose(d_fast[pairs[:, 0]], d_exact[pairs[:, 1]], atol=1e-5)
    ref_name = "sparse_positions_image" if k == 501 else "sparse_positions_image_top10000"
    original = original_to_ours(parity_ref[ref_name])
    same_keypoints(rows[0], original, tie_tol)


VARIANT_CONFIGS = {
    **{name: variant_config(name) for name in ("vgg4", "fast", "tiny")},
    # BN after the ReLU with zero padding and pooling: BNs that cannot fold stay explicit affines
    "relu-bn-padded-pooled": SiLKConfig(
        channels=(8, 16), padding=1, pool_after=(0,), head_channels=16, descriptor_dim=8
    ),
    "rgb-no-bn": SiLKConfig(
        in_channels=3, channels=(8, 8), batch_norm=False, head_channels=8, descriptor_dim=8
    ),
    "local-contrast": variant_config("tiny").replace(contrast_window=15),
}


@pytest.mark.parametrize("name", sorted(VARIANT_CONFIGS))
def test_every_variant_fast_equals_exact(name):
    model = make_model(VARIANT_CONFIGS[name])
    x = torch.rand(2, model.config.in_channels, 64, 80)
    with torch.inference_mode():
        exact = model(x, DENSE)
        fast = model(x, DENSE, exact=False)
    for n, a, b in zip(DENSE, fast, exact):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-5, msg=lambda m, n=n: f"{n}: {m}")


@pytest.mark.parametrize("name", ["vgg4", "fast", "tiny"])
def test_trained_weights_fast_equals_exact(name):
    if name not in available_pretrained():
        pytest.skip(f"no shipped {name} weights")
    model = SiLK.from_pretrained(name)
    image = load_image(FIXTURES / "images" / "opencv_box.jpg", gray=True)[:128, :176]  # a crop: vgg4 is slow
    fast, exact = model.extract(image, max_keypoints=500), model.extract(image, max_keypoints=500, exact=True)
    rows = [
        torch.cat([o["keypoints"][0], o["keypoint_scores"][0, :, None]], 1).numpy() for o in (fast, exact)
    ]
    pairs = same_keypoints(rows[0], rows[1], tie_tol=1e-5)
    assert len(pairs) >= 498
    np.testing.assert_allclose(
        fast["descriptors"][0, pairs[:, 0]], exact["descriptors"][0, pairs[:, 1]], atol=1e-5
    )


def test_unfoldable_batchnorm_stays_an_explicit_affine():
    model = make_model(VARIANT_CONFIGS["relu-bn-padded-pooled"])
    kinds = [type(m).__name__ for m in FusedSiLK(model).backbone]
    assert kinds == [
        "FusedConv",
        "ChannelAffine",
        "FusedConv",
        "ChannelAffine",
        "MaxPool",
        "FusedConv",
        "ChannelAffine",
        "FusedConv",
        "ChannelAffine",
    ]
    assert [type(m).__name__ for m in FusedSiLK(make_model(variant_config("vgg4"))).backbone] == [
        "FusedConv"
    ] * 8


def test_single_head_outputs_run_only_that_head():
    model = make_model(variant_config("tiny"))
    x = torch.rand(1, 1, 48, 64)
    fused = model.fused_network()
    with torch.inference_mode():
        out = fused.trunk(x)
        logits, raw = fused.heads(out)
        only_logits, none = fused.heads(out, descriptors=False)
        none2, only_raw = fused.heads(out, logits=False)
    assert none is None and none2 is None
    torch.testing.assert_close(only_logits, logits)
    torch.testing.assert_close(only_raw, raw)


# -------------------------------------------------------------------------------- when the fast path runs
def count_backbone_calls(model: SiLK) -> list:
    calls = []
    model.backbone.register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_fast_path_only_in_eval_mode_without_gradients():
    model = make_model(variant_config("tiny"))
    calls = count_backbone_calls(model)
    x = torch.rand(1, 1, 48, 64)
    model.extract(x)
    assert calls == []  # extract: fused network
    with torch.no_grad():
        model(x, "logits")
    assert len(calls) == 1  # named outputs: exact by default
    model(x, "logits", exact=False)  # gradients on: exact
    assert len(calls) == 2
    model.train()
    with torch.no_grad():
        model(x, "logits", exact=False)
    assert len(calls) == 3 and model._fused is None
    model.eval().extract(x, exact=True)
    assert len(calls) == 4
    model.set_inference("exact").extract(x)
    assert len(calls) == 5


def test_set_inference_validates_mode():
    with pytest.raises(SilkError, match="unknown inference mode"):
        SiLK(variant_config("tiny")).set_inference("fp8")


def test_fast_network_rebuilt_when_weights_change():
    model = make_model(variant_config("tiny"))
    x = torch.rand(1, 1, 48, 64)
    first = model.extract(x, max_keypoints=50)
    fused = model.fused_network()
    assert model.fused_network() is fused  # cached
    with torch.no_grad():
        model.descriptor_head.out.conv.weight.mul_(-1)  # an optimizer step would do the same
    assert model.fused_network() is not fused
    changed = model.extract(x, max_keypoints=50)
    torch.testing.assert_close(
        changed["descriptors"], model.extract(x, max_keypoints=50, exact=True)["descriptors"]
    )
    assert not torch.allclose(changed["descriptors"], first["descriptors"])
    model.load_state_dict(make_model(variant_config("tiny"), seed=1).state_dict())
    reloaded = model.extract(x, max_keypoints=50)
    torch.testing.assert_close(
        reloaded["keypoint_scores"], model.extract(x, max_keypoints=50, exact=True)["keypoint_scores"]
    )


def test_bf16_mode_is_close_and_returns_float32():
    model = make_model(variant_config("fast"))
    x = torch.rand(1, 1, 64, 80)
    with torch.inference_mode():
        exact_logits, exact_desc = model(x, ("logits", "dense_descriptors"))
        model.set_inference("bf16")
        logits, desc = model(x, ("logits", "dense_descriptors"), exact=False)
    assert logits.dtype == torch.float32 and model.fused_network().dtype == torch.bfloat16
    assert (logits - exact_logits).abs().max() < 0.5
    assert (desc - exact_desc).norm(dim=-1).max() < 0.15  # descriptors have norm 1.41
    assert model.extract(x, max_keypoints=20)["descriptors"].dtype == torch.float32


# -------------------------------------------------------------------------------- batched sparse selection
def reference_selection(prob: torch.Tensor, k, threshold, nms, border, grid, size):
    """Per image, with a full sort: the rules of select_keypoints written the slow, obvious way."""
    out = []
    h, w = prob.shape[-2:]
    for p in prob[:, 0]:
        keep = p > threshold
        if nms:
            keep &= p == F.max_pool2d(p[None, None], 2 * nms + 1, 1, nms)[0, 0]
        if border:
            xs = torch.arange(w) * grid.stride + grid.offset
            ys = torch.arange(h) * grid.stride + grid.offset
            keep &= ((ys >= border) & (ys <= size[1] - 1 - border))[:, None]
            keep &= ((xs >= border) & (xs <= size[0] - 1 - border))[None, :]
        idx = torch.nonzero(keep.flatten()).squeeze(1)
        order = torch.sort(p.flatten()[idx], descending=True, stable=True).indices
        out.append(set(idx[order][: k or len(idx)].tolist()))
    return out


@pytest.mark.parametrize(
    "k,threshold,nms,border",
    [(40, 0.0, 0, 0), (None, 0.6, 0, 0), (25, 0.2, 2, 0), (1000, 0.0, 1, 12), (3, 0.99, 0, 0)],
)
def test_batched_selection_matches_reference(k, threshold, nms, border):
    torch.manual_seed(0)
    prob = torch.rand(3, 1, 20, 30)
    prob[1] *= 0.7  # different counts per image
    grid = GridMap(2.0, 4.5)
    size = (64, 48)
    pos, idx = select_keypoints(
        prob, grid, size, max_keypoints=k, threshold=threshold, nms_radius=nms, remove_borders=border
    )
    expected = reference_selection(prob, k, threshold, nms, border, grid, size)
    for p, i, e, pr in zip(pos, idx, expected, prob[:, 0]):
        assert set(i.tolist()) == e
        assert torch.all(p[:-1, 2] >= p[1:, 2])  # best first
        torch.testing.assert_close(p[:, 2], pr.flatten()[i])
        torch.testing.assert_close(p[:, 0], (i % 30).float() * 2 + 4.5)
        torch.testing.assert_close(p[:, 1], (i // 30).float() * 2 + 4.5)


# -------------------------------------------------------------------------------- CPU workspace
def test_workspace_is_reused_and_gives_the_same_result(monkeypatch):
    monkeypatch.setattr(fast, "WORKSPACE_MIN_BYTES", 0)  # use it even for these small activations
    model = make_model(variant_config("vgg4"))
    x = torch.rand(3, 1, 40, 52)
    first = model.extract(x, max_keypoints=64)
    fused = model.fused_network()
    if not inplace_conv_available():
        pytest.skip("oneDNN in-place conv not available: no workspace")
    held = fused.workspace_bytes()
    assert held > 0
    again = model.extract(x, max_keypoints=64)
    assert fused.workspace_bytes() == held  # same buffers, nothing re-allocated
    with fused._lock:  # another caller holds the workspace: this call allocates fresh memory instead
        fresh = model.extract(x, max_keypoints=64)
    one_by_one = [model.extract(x[i : i + 1], max_keypoints=64) for i in range(3)]
    for out in (again, fresh):
        for key in first:
            torch.testing.assert_close(out[key], first[key])
    for i, single in enumerate(one_by_one):
        torch.testing.assert_close(single["descriptors"][0], first["descriptors"][i])
    fused.release_workspace()
    assert fused.workspace_bytes() == 0


def test_model_with_a_fast_network_can_be_copied_and_pickled():
    model = make_model(variant_config("tiny"))
    x = torch.rand(1, 1, 48, 64)
    expected = model.extract(x, max_keypoints=30)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert clone._fused is None
        torch.testing.assert_close(clone.extract(x, max_keypoints=30), expected)
    fused = pickle.loads(pickle.dumps(model.fused_network()))
    assert fused.workspace_bytes() == 0


def test_workspace_works_in_and_out_of_inference_mode():
    model = make_model(variant_config("fast")).eval()
    x = torch.rand(1, 1, 480, 640, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        first = model.extract(x, max_keypoints=20)
    second = model.extract(x, max_keypoints=20)  # buffers made in inference mode are not written outside it
    torch.testing.assert_close(second.keypoints, first.keypoints)
