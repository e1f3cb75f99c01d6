"""Matching: parity with the original's matcher outputs, brute-force equality at any chunk size, bad input."""

from pathlib import Path

import numpy as np
import pytest
import torch

from silk_keypoints import Matcher, SilkError, match_descriptors
from silk_keypoints.matching import gate_passes, related_pair

CASE = Path(__file__).parent / "fixtures" / "parity" / "silk_matching_case.npz"

# fixture name -> our options (the original's configurations)
PARITY_CONFIGS = {
    "mnn": {"method": "mnn"},
    "ratio_test_0.6": {"method": "ratio", "ratio_threshold": 0.6},
    "ratio_test_0.8": {"method": "ratio", "ratio_threshold": 0.8},
    "double_softmax_0.6_t0.1": {"method": "double-softmax", "threshold": 0.6, "temperature": 0.1},
    "double_softmax_0.9_t0.1": {"method": "double-softmax", "threshold": 0.9, "temperature": 0.1},
    "double_softmax_0.99_t0.1": {"method": "double-softmax", "threshold": 0.99, "temperature": 0.1},
}


@pytest.fixture(scope="module")
def case() -> dict:
    with np.load(CASE) as f:
        return {k: f[k] for k in f.files}


def brute_force(d0, d1, method, ratio_threshold=0.6, temperature=0.1, threshold=0.6, mutual=True):
    """The rules written plainly on the full float64 matrix. Returns (matches, scores, margin), ``margin``
    being the smallest gap that decides a kept/dropped pair (best vs second best, score vs threshold)."""
    d0, d1 = np.asarray(d0, np.float64), np.asarray(d1, np.float64)
    if method == "ratio":
        d0 = d0 / np.linalg.norm(d0, axis=1, keepdims=True)
        d1 = d1 / np.linalg.norm(d1, axis=1, keepdims=True)
    sim = d0 @ d1.T
    if method == "double-softmax":
        s = sim / temperature
        p_rows = np.exp(s - s.max(1, keepdims=True))
        p_rows /= p_rows.sum(1, keepdims=True)
        p_cols = np.exp(s - s.max(0, keepdims=True))
        p_cols /= p_cols.sum(0, keepdims=True)
        sim = p_rows * p_cols
    dist = 1 - sim
    rows, cols = dist.argmin(1), dist.argmin(0)
    ii = np.arange(len(d0))
    keep = cols[rows] == ii if mutual else np.ones(len(d0), bool)
    sorted_rows = np.sort(dist, axis=1)
    sorted_cols = np.sort(dist, axis=0)
    margin = min(np.min(sorted_rows[:, 1] - sorted_rows[:, 0]) if dist.shape[1] > 1 else np.inf,
                 np.min(sorted_cols[1] - sorted_cols[0]) if dist.shape[0] > 1 else np.inf)
    best = dist[ii, rows]
    if method == "mnn":
        scores = 1 - best
    elif method == "ratio":
        second = sorted_rows[:, 1] if dist.shape[1] > 1 else np.full(len(d0), np.inf)
        ratio = best / np.where(second == 0, np.finfo(np.float64).eps, second)
        margin = min(margin, np.min(np.abs(ratio - ratio_threshold)))
        keep &= ratio < ratio_threshold
        scores = 1 - ratio
    else:
        margin = min(margin, np.min(np.abs(best - threshold)))
        keep &= best < threshold
        scores = 1 - best
    return np.stack([ii[keep], rows[keep]], axis=1), scores[keep], margin


def clear_data(n0, n1, dim, seed):
    """Descriptor sets where about half of desc0 are noisy copies of desc1 rows: real matches plus clutter."""
    rng = np.random.default_rng(seed)
    d1 = rng.normal(size=(n1, dim))
    d0 = rng.normal(size=(n0, dim))
    k = min(n0, n1) // 2
    d0[:k] = d1[rng.permutation(n1)[:k]] + 0.4 * rng.normal(size=(k, dim))
    d0 = d0[rng.permutation(n0)]
    d0 /= np.linalg.norm(d0, axis=1, keepdims=True)
    d1 /= np.linalg.norm(d1, axis=1, keepdims=True)
    return (d0 * 1.41).astype(np.float32), (d1 * 1.41).astype(np.float32)


@pytest.mark.parametrize("chunk_size", [None, 100])
@pytest.mark.parametrize("name", list(PARITY_CONFIGS))
def test_parity_with_original(case, name, chunk_size):
    matches, scores = match_descriptors(case["descriptors0"], case["descriptors1"], chunk_size=chunk_size,
                                        **PARITY_CONFIGS[name])
    np.testing.assert_array_equal(matches, case[f"matches_{name}"])
    distances = case[f"distances_{name}"]
    if not name.startswith("ratio"):  # the original returns inf for every ratio-test distance
        np.testing.assert_allclose(1 - scores, distances, atol=1e-5)


@pytest.mark.parametrize("mutual", [True, False])
@pytest.mark.parametrize(
    "method, options",
    [("mnn", {}), ("ratio", {"ratio_threshold": 0.8}), ("double-softmax", {"threshold": 0.9, "temperature": 0.1})],
)
def test_equals_brute_force_at_any_chunk_size(method, options, mutual):
    d0, d1 = clear_data(203, 157, 32, seed=3)
    ref, ref_scores, margin = brute_force(d0, d1, method, mutual=mutual, **options)
    assert margin > 1e-5, "test data must not have near-ties"
    assert 10 < len(ref) <= len(d0)
    for chunk_size in (9, 64, None):  # uneven splits of 203 rows, and a single block
        matches, scores = match_descriptors(torch.from_numpy(d0), torch.from_numpy(d1), method, mutual=mutual,
                                            chunk_size=chunk_size, **options)
        assert matches.dtype == torch.int64 and scores.dtype == torch.float32
        np.testing.assert_array_equal(matches.numpy(), ref)
        # float32 rounding of S (~20 for T = 0.1) limits P to ~1e-5 relative, as in the original
        np.testing.assert_allclose(scores.numpy(), ref_scores, rtol=5e-5, atol=2e-6)


def test_non_mutual_keeps_more(case):
    d0, d1 = case["descriptors0"], case["descriptors1"]
    mutual, _ = match_descriptors(d0, d1)
    one_way, _ = match_descriptors(d0, d1, mutual=False)
    assert len(one_way) == len(d0) > len(mutual)
    assert {tuple(m) for m in mutual} <= {tuple(m) for m in one_way}


def test_max_distance_filters_by_cosine_distance():
    d0, d1 = clear_data(120, 100, 16, seed=5)
    matches, scores = match_descriptors(d0, d1)
    cos = np.sum(d0[matches[:, 0]] * d1[matches[:, 1]], axis=1) / 1.41**2
    limit = float(np.median(1 - cos))
    kept, kept_scores = match_descriptors(d0, d1, max_distance=limit)
    np.testing.assert_array_equal(kept, matches[1 - cos <= limit])
    np.testing.assert_array_equal(kept_scores, scores[1 - cos <= limit])


def test_ratio_with_single_candidate_and_duplicates():
    d0 = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    only, s = match_descriptors(d0, d0[:1], "ratio")  # no second best: ratio 0, as the original
    np.testing.assert_array_equal(only, [[0, 0]])
    np.testing.assert_allclose(s, [1.0])
    twice = np.array([[0.6, 0.8], [0.6, 0.8]], np.float32)
    tie, _ = match_descriptors(d0[:1], twice, "ratio")  # second best as good as the best: ratio 1
    assert len(tie) == 0
    same, s = match_descriptors(twice[:1], twice, "ratio")  # both distances 0: 0 / eps, kept (the original)
    np.testing.assert_array_equal(same, [[0, 0]])


def test_input_kinds_and_dtypes(case):
    d0, d1 = case["descriptors0"], case["descriptors1"]
    m_np, s_np = match_descriptors(d0, d1)
    assert isinstance(m_np, np.ndarray) and m_np.dtype == np.int64 and s_np.dtype == np.float32
    m64, _ = match_descriptors(torch.from_numpy(d0).double(), torch.from_numpy(d1).half())
    np.testing.assert_array_equal(m64.numpy(), m_np)
    m_mixed, _ = match_descriptors(torch.from_numpy(d0), d1)  # one numpy: tensors out
    assert isinstance(m_mixed, torch.Tensor)


@pytest.mark.parametrize("method", ["mnn", "ratio", "double-softmax"])
def test_empty_sets_give_empty_results(method):
    for a, b in [(np.zeros((0, 8), np.float32), np.ones((5, 8), np.float32)),
                 (np.ones((5, 8), np.float32), np.zeros((0, 8), np.float32)),
                 (np.zeros((0, 8), np.float32), np.zeros((0, 3), np.float32))]:
        matches, scores = match_descriptors(a, b, method)
        assert matches.shape == (0, 2) and matches.dtype == np.int64 and scores.shape == (0,)


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        ((np.ones((3, 4)), np.ones((3, 5))), {}, "descriptor sizes differ"),
        ((np.full((3, 4), np.nan), np.ones((3, 4))), {}, "NaN"),
        ((np.ones((3, 4)), np.array([[1, 2, np.inf, 4.0]])), {}, "desc1 contains NaN or inf"),
        ((np.ones(4), np.ones((3, 4))), {}, "must be (N, D)"),
        ((np.ones((3, 4), int), np.ones((3, 4))), {}, "floating point"),
        (([[1.0]], np.ones((3, 1))), {}, "torch.Tensor or numpy"),
        ((np.ones((3, 4)), np.ones((3, 4))), {"method": "nn"}, "unknown matching method"),
        ((np.ones((3, 4)), np.ones((3, 4))), {"temperature": 0}, "temperature"),
        ((np.ones((3, 4)), np.ones((3, 4))), {"ratio_threshold": -1}, "ratio_threshold"),
        ((np.ones((3, 4)), np.ones((3, 4))), {"threshold": 0}, "threshold"),
        ((np.ones((3, 4)), np.ones((3, 4))), {"max_distance": -0.5}, "max_distance"),
        ((np.ones((3, 4)), np.ones((3, 4))), {"chunk_size": 0}, "chunk_size"),
    ],
)
def test_bad_input_is_a_silk_error(args, kwargs, message):
    with pytest.raises(SilkError, match=message.replace("(", r"\(").replace(")", r"\)")):
        match_descriptors(*args, **kwargs)


def extract_like(desc: np.ndarray, pad: int = 0) -> dict:
    """An extract()-style dict (unit descriptors, batch of 1) with ``pad`` zero rows masked out."""
    d = torch.from_numpy(desc) / torch.from_numpy(desc).norm(dim=1, keepdim=True)
    mask = torch.ones(len(d) + pad, dtype=torch.bool)
    mask[len(d):] = False
    d = torch.cat([d, torch.zeros(pad, d.shape[1])])
    return {"descriptors": d[None], "keypoint_mask": mask[None]}


@pytest.mark.parametrize("name", ["mnn", "ratio_test_0.8", "double_softmax_0.9_t0.1"])
def test_matcher_on_unit_descriptors_reproduces_original(case, name):
    """extract() gives unit descriptors; the Matcher's temperature is in the original's units (norm 1.41)."""
    options = dict(PARITY_CONFIGS[name])
    matcher = Matcher(options.pop("method"), max_distance=None, **options)  # the original's rules: no gate
    out = matcher({"image0": extract_like(case["descriptors0"], pad=3), "image1": extract_like(case["descriptors1"])})
    ref = case[f"matches_{name}"]
    np.testing.assert_array_equal(out["matches"][0].numpy(), ref)
    m0 = out["matches0"][0]
    assert m0.shape == (504,) and (m0[ref[:, 0]].numpy() == ref[:, 1]).all()
    assert int((m0 >= 0).sum()) == len(ref) and (m0[501:] == -1).all()
    m1 = out["matches1"][0]
    assert (m1[ref[:, 1]].numpy() == ref[:, 0]).all() and int((m1 >= 0).sum()) == len(ref)
    np.testing.assert_allclose(out["matching_scores0"][0, ref[:, 0]].numpy(), out["scores"][0].numpy())
    assert (out["matching_scores0"][0][m0 < 0] == 0).all()


def test_matcher_batch_with_masks_and_an_image_without_keypoints(case):
    d0, d1 = case["descriptors0"], case["descriptors1"]
    a, b = extract_like(d0[:300], pad=201), extract_like(d0)
    c, d = extract_like(d1), extract_like(d1)
    d["keypoint_mask"][:] = False  # second pair: image 1 has no keypoints
    data = {
        "image0": {k: torch.cat([a[k], b[k]]) for k in a},
        "image1": {k: torch.cat([c[k], d[k]]) for k in c},
    }
    out = Matcher("mnn", max_distance=None)(data)
    ref, _ = match_descriptors(d0[:300], d1)
    np.testing.assert_array_equal(out["matches"][0].numpy(), ref)
    assert out["matches"][1].shape == (0, 2) and (out["matches0"][1] == -1).all()
    assert out["matches0"].shape == (2, 501) and out["matches1"].shape == (2, 501)


def test_matcher_accepts_unbatched_numpy_and_rejects_bad_input(case):
    out = Matcher(max_distance=None)({"image0": {"descriptors": case["descriptors0"]},
                                      "image1": {"descriptors": case["descriptors1"]}})
    np.testing.assert_array_equal(out["matches"][0].numpy(), case["matches_mnn"])
    with pytest.raises(SilkError, match="unknown matcher options"):
        Matcher(ratio=0.8)
    with pytest.raises(SilkError, match="unknown matching method"):
        Matcher("superglue")
    with pytest.raises(SilkError, match="descriptor_scale"):
        Matcher(descriptor_scale=0)
    with pytest.raises(SilkError, match=r"data\['image1'\]"):
        Matcher()({"image0": {"descriptors": case["descriptors0"]}})
    with pytest.raises(SilkError, match="batch sizes"):
        Matcher()({"image0": {"descriptors": np.ones((2, 3, 4), np.float32)},
                   "image1": {"descriptors": np.ones((1, 3, 4), np.float32)}})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("method", ["mnn", "ratio", "double-softmax"])
def test_gpu_matches_cpu(method):
    d0, d1 = clear_data(2000, 1500, 64, seed=11)
    cpu, _ = match_descriptors(torch.from_numpy(d0), torch.from_numpy(d1), method, threshold=0.9)
    gpu, scores = match_descriptors(torch.from_numpy(d0).cuda(), torch.from_numpy(d1).cuda(), method, threshold=0.9)
    assert gpu.is_cuda and scores.is_cuda
    np.testing.assert_array_equal(gpu.cpu().numpy(), cpu.numpy())


def test_unrelated_pairs_gate_of_pair_lists():
    """related_pair: matches a homography explains pass; chance matches, too few matches or too small a share
    of them do not (gate_passes is the rule)."""
    rng = np.random.default_rng(0)
    p0 = rng.uniform(0, 640, (400, 2))
    h = np.array([[0.9, 0.1, 20.0], [-0.05, 1.1, -10.0], [1e-4, 0.0, 1.0]])
    q = np.c_[p0, np.ones(len(p0))] @ h.T
    p1 = q[:, :2] / q[:, 2:]
    wrong = rng.uniform(0, 640, (400, 2))
    assert related_pair(p0, p1) and related_pair(torch.from_numpy(p0), torch.from_numpy(p1))
    assert not related_pair(p0, wrong)  # unrelated: chance agreement only
    mixed = np.where((np.arange(400) < 80)[:, None], p1, wrong)  # 80 true of 400: 20 %
    assert related_pair(p0, mixed) and not related_pair(p0, mixed, min_inlier_ratio=0.25)
    assert not related_pair(p0[:10], p1[:10])  # fewer matches than the 15 inliers needed
    assert gate_passes(15, 300) and not gate_passes(14, 100) and not gate_passes(20, 1000)
