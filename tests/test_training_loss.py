"""The SiLK loss: parity with the original's values and gradients, blockwise == unblocked, cell subsets."""

from pathlib import Path

import numpy as np
import pytest
import torch

from silk_keypoints.training.loss import (
    LossConfig,
    mutual_only,
    pair_loss,
    sample_cells,
    silk_loss,
    similarity_stats,
)

CASE = Path(__file__).parent / "fixtures" / "loss" / "silk_loss_subset.npz"


@pytest.fixture(scope="module")
def case() -> dict:
    with np.load(CASE) as f:
        return {k: torch.from_numpy(f[k]) for k in f.files}


def _run(case: dict, prefix: str, block_size):
    leaves = [case[prefix + k][0].clone().requires_grad_() for k in ("desc_0", "desc_1", "logits_0", "logits_1")]
    out = pair_loss(*leaves, case[prefix + "corr_0"][0], case[prefix + "corr_1"][0], block_size=block_size)
    out["loss"].backward()
    return out, [x.grad for x in leaves]


@pytest.mark.parametrize("block_size", [None, 100, 1024])
def test_parity_with_original(case, block_size):
    out, (g0, g1, gl0, gl1) = _run(case, "", block_size)
    for ours, ref in [("desc_loss", "desc_loss"), ("kp_loss", "kp_loss"), ("loss", "total_loss"),
                      ("precision", "precision"), ("recall", "recall")]:
        assert float(out[ours].detach()) == pytest.approx(float(case[ref]), rel=1e-5), ours
    for k in ("argmax_0", "argmax_1", "mutual_0", "mutual_1"):
        assert torch.equal(out[k.replace("_", "")], case[k][0]), k
    torch.testing.assert_close(out["lse0"], case["lse_0"][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["lse1"], case["lse_1"][0], rtol=1e-5, atol=1e-5)
    rows = case["grad_rows"]
    torch.testing.assert_close(g0[rows], case["grad_desc_0"][0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(g1[rows], case["grad_desc_1"][0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gl0, case["grad_logits_0"][0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gl1, case["grad_logits_1"][0], rtol=1e-5, atol=1e-7)


def test_parity_small_case(case):
    out, grads = _run(case, "small_", 4)
    assert float(out["desc_loss"].detach()) == pytest.approx(float(case["small_desc_loss"]), rel=1e-5)
    assert float(out["kp_loss"].detach()) == pytest.approx(float(case["small_kp_loss"]), rel=1e-5)
    assert float(out["precision"]) == 1.0 and float(out["recall"]) == 1.0
    for g, k in zip(grads, ("desc_0", "desc_1", "logits_0", "logits_1")):
        torch.testing.assert_close(g, case[f"small_grad_{k}"][0], rtol=1e-5, atol=5e-6)


@pytest.mark.parametrize("scale", [0.5, 4.0])  # |S| <= 40: one shared shift; larger: per-row/column maxima
def test_blockwise_equals_unblocked_float64(scale):
    g = torch.Generator().manual_seed(0)
    d0 = torch.randn(37, 5, generator=g, dtype=torch.float64) * scale
    d1 = torch.randn(29, 5, generator=g, dtype=torch.float64) * scale
    bound = float(d0.norm(dim=1).max() * d1.norm(dim=1).max())
    assert (bound <= 40) == (scale < 1)
    w0, w1 = torch.randn(37, generator=g, dtype=torch.float64), torch.randn(29, generator=g, dtype=torch.float64)

    def objective(a, b, block):
        s = similarity_stats(a, b, block)
        return (s["lse0"] * w0[: a.shape[0]]).sum() + (s["lse1"] * w1[: b.shape[0]]).sum()

    ref = similarity_stats(d0, d1, None)
    for block in (1, 8, 64):
        out = similarity_stats(d0, d1, block)
        torch.testing.assert_close(out["lse0"], ref["lse0"])
        torch.testing.assert_close(out["lse1"], ref["lse1"])
        assert torch.equal(out["argmax0"], ref["argmax0"]) and torch.equal(out["argmax1"], ref["argmax1"])
        a, b = d0.clone().requires_grad_(), d1.clone().requires_grad_()
        torch.testing.assert_close(torch.autograd.grad(objective(a, b, block), (a, b)),
                                   torch.autograd.grad(objective(a, b, None), (a, b)))
    small = (d0[:7].clone().requires_grad_(), d1[:6].clone().requires_grad_())
    assert torch.autograd.gradcheck(lambda a, b: objective(a, b, 3), small)


def test_mutual_only():
    c0 = torch.tensor([1, 0, 2, -1])
    c1 = torch.tensor([1, 0, 3, 2])
    m0, m1 = mutual_only(c0, c1)
    assert m0.tolist() == [1, 0, -1, -1]
    assert m1.tolist() == [1, 0, -1, -1]


def test_batch_mean_and_empty_pairs(case):
    d0, d1 = case["desc_0"], case["desc_1"]
    l0, l1, c0, c1 = case["logits_0"], case["logits_1"], case["corr_0"], case["corr_1"]
    none = torch.full_like(c0, -1)
    out = silk_loss(torch.cat([d0, d0]), torch.cat([d1, d1]), torch.cat([l0, l0]), torch.cat([l1, l1]),
                    torch.cat([c0, none]), torch.cat([c1, none]))
    assert torch.isfinite(out["loss"])  # a pair without correspondences contributes 0, not NaN
    assert float(out["desc_loss"]) == pytest.approx(float(case["desc_loss"]) / 2, rel=1e-5)


def test_sample_cells_keeps_positives(case):
    c0, c1 = case["corr_0"][0], case["corr_1"][0]
    g = torch.Generator().manual_seed(0)
    idx0, idx1, sub0, sub1 = sample_cells(c0, c1, 500, g)
    assert idx0.shape == (500,) and idx1.shape == (500,)
    has = sub0 >= 0
    assert int(has.sum()) == int((c0[idx0] >= 0).sum())  # every sampled positive survives
    assert torch.equal(idx1[sub0[has]], c0[idx0[has]])
    back = sub1 >= 0
    assert torch.equal(idx0[sub1[back]], c1[idx1[back]])
    out = silk_loss(case["desc_0"], case["desc_1"], case["logits_0"], case["logits_1"], case["corr_0"],
                    case["corr_1"], LossConfig(cells=500), g)
    assert torch.isfinite(out["loss"]) and 0 < float(out["desc_loss"]) < float(case["desc_loss"])
