"""SiLKGlue: shapes, padding, permutation equivariance, weights, ONNX parity, the Matcher and CLI wiring."""

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from silk_keypoints import SiLK
from silk_keypoints import glue as glue_module
from silk_keypoints.cli import main
from silk_keypoints.ecosystem.hloc import matcher_input, matcher_provenance
from silk_keypoints.errors import SilkError
from silk_keypoints.evaluation.testdata import paste_view, rotation_about
from silk_keypoints.geometry import estimate_homography, homography_errors
from silk_keypoints.glue import GlueConfig, SiLKGlue, available_glue, mutual_matches, normalise_keypoints
from silk_keypoints.io import load_image
from silk_keypoints.matching import Matcher
from silk_keypoints.model.checkpoint import read_safetensors
from silk_keypoints.pair import DEMO_PAIR

SIZE = torch.tensor([[320.0, 240.0]])
IMAGES = Path(__file__).parent / "fixtures" / "images"


def small_glue(**kw) -> SiLKGlue:
    torch.manual_seed(0)
    return SiLKGlue(**{"descriptor_dim": 16, "width": 16, "heads": 2, "layers": 2, **kw}).eval()


def inputs(n0: int, n1: int, b: int = 1, dim: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    k0, k1 = (torch.rand(b, n, 2, generator=g) * SIZE[:, None] for n in (n0, n1))
    d0, d1 = (F.normalize(torch.randn(b, n, dim, generator=g), dim=-1) for n in (n0, n1))
    return k0, k1, d0, d1, SIZE.expand(b, 2), SIZE.expand(b, 2)


def test_config_merges_kwargs_and_checks_values():
    assert SiLKGlue(GlueConfig(width=32, heads=2), layers=1).conf == GlueConfig(width=32, heads=2, layers=1)
    with pytest.raises(SilkError, match="unknown SiLKGlue options"):
        SiLKGlue(depth=3)
    with pytest.raises(SilkError, match="heads"):
        GlueConfig(width=30, heads=4)
    with pytest.raises(SilkError, match="16-D"):
        small_glue().log_assignment(*inputs(3, 4, dim=8))


def test_normalised_positions_are_centred_and_scaled_by_the_long_side():
    kpts = torch.tensor([[[0.0, 0.0], [320.0, 240.0], [160.0, 120.0]]])
    assert torch.allclose(normalise_keypoints(kpts, SIZE), torch.tensor([[[-1.0, -0.75], [1.0, 0.75], [0.0, 0.0]]]))


def test_shapes_and_match_consistency():
    out = small_glue(match_threshold=0.0)(*inputs(7, 5, b=2))
    assert out["matches0"].shape == (2, 7) and out["matches1"].shape == (2, 5)
    assert out["matching_scores0"].shape == (2, 7) and out["log_assignment"].shape == (2, 7, 5)
    assert out["matches0"].dtype == torch.long
    for b in range(2):
        for i, j in enumerate(out["matches0"][b].tolist()):
            if j >= 0:
                assert out["matches1"][b, j] == i and out["matching_scores1"][b, j] == out["matching_scores0"][b, i]
    assert (out["matches0"] >= 0).any()  # threshold 0: every mutual maximum is a match


def test_padded_keypoints_change_nothing_and_are_never_matched():
    glue = small_glue(match_threshold=0.0)
    k0, k1, d0, d1, s0, s1 = inputs(6, 4, seed=1)
    ref = glue(k0, k1, d0, d1, s0, s1)
    pad = 3  # image 0 padded with 3 garbage points, image 1 with 2
    pk0 = torch.cat([k0, torch.full((1, pad, 2), 50.0)], 1)
    pd0 = torch.cat([d0, torch.ones(1, pad, 16)], 1)
    pk1 = torch.cat([k1, torch.zeros(1, 2, 2)], 1)
    pd1 = torch.cat([d1, -torch.ones(1, 2, 16)], 1)
    m0 = torch.tensor([[True] * 6 + [False] * pad])
    m1 = torch.tensor([[True] * 4 + [False] * 2])
    out = glue(pk0, pk1, pd0, pd1, s0, s1, m0, m1)
    assert torch.allclose(out["log_assignment"][:, :6, :4], ref["log_assignment"], atol=1e-5)
    assert torch.equal(out["matches0"][:, :6], ref["matches0"]) and (out["matches0"][:, 6:] == -1).all()
    assert (out["matches1"][:, 4:] == -1).all()


def test_batch_of_unequal_counts_equals_one_image_at_a_time():
    glue = small_glue()
    a, b = inputs(5, 6, seed=2), inputs(3, 6, seed=3)
    k0 = torch.cat([a[0], torch.cat([b[0], torch.zeros(1, 2, 2)], 1)])
    d0 = torch.cat([a[2], torch.cat([b[2], torch.zeros(1, 2, 16)], 1)])
    mask0 = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    out = glue(k0, torch.cat([a[1], b[1]]), d0, torch.cat([a[3], b[3]]), SIZE.expand(2, 2), SIZE.expand(2, 2), mask0)
    one = glue(*b)
    assert torch.allclose(out["log_assignment"][1, :3], one["log_assignment"][0], atol=1e-5)


def test_outputs_are_permutation_equivariant():
    glue = small_glue()
    k0, k1, d0, d1, s0, s1 = inputs(8, 6, seed=4)
    p0, p1 = torch.randperm(8), torch.randperm(6)
    ref = glue.log_assignment(k0, k1, d0, d1, s0, s1)
    perm = glue.log_assignment(k0[:, p0], k1[:, p1], d0[:, p0], d1[:, p1], s0, s1)
    assert torch.allclose(perm[0], ref[0][:, p0][:, :, p1], atol=1e-5)
    assert torch.allclose(perm[1], ref[1][:, p0], atol=1e-5) and torch.allclose(perm[2], ref[2][:, p1], atol=1e-5)


def test_mutual_matches_threshold():
    log_p = torch.log(torch.tensor([[[0.8, 0.1], [0.05, 0.05]]]))
    m0, m1, s0, _ = mutual_matches(log_p, 0.5)
    assert m0.tolist() == [[0, -1]] and m1.tolist() == [[0, -1]] and s0[0, 0] == pytest.approx(0.8)
    assert mutual_matches(log_p, 0.9)[0].tolist() == [[-1, -1]]


def test_save_load_round_trip_and_refusals(tmp_path, monkeypatch):
    glue = small_glue()
    path = glue.save(tmp_path / "g.safetensors", info={"step": 3})
    back = SiLKGlue.from_file(path)
    assert back.conf == glue.conf
    x = inputs(4, 5)
    assert torch.equal(back.log_assignment(*x)[0], glue.log_assignment(*x)[0])
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(SilkError, match="corrupt"):
        SiLKGlue.from_file(tmp_path / "bad.safetensors")
    monkeypatch.setattr(glue_module, "WEIGHTS_DIR", tmp_path / "none")
    assert available_glue() == []
    with pytest.raises(SilkError, match="no SiLKGlue weights shipped for the 'fast' extractor"):
        SiLKGlue.from_pretrained("fast")


def test_matcher_glue_matches_like_the_module(tmp_path):
    glue = small_glue(match_threshold=0.0)
    path = glue.save(tmp_path / "g.safetensors")
    k0, k1, d0, d1, s0, s1 = inputs(6, 5, seed=5)
    matcher = Matcher("glue", glue_weights=str(path), threshold=0.0)
    out = matcher({"image0": {"keypoints": k0, "descriptors": d0 * 2, "image_size": s0},
                   "image1": {"keypoints": k1, "descriptors": d1, "image_size": s1}})
    ref = glue(k0, k1, d0, d1, s0, s1)
    assert torch.equal(out["matches0"], ref["matches0"])
    assert torch.equal(out["matches"][0][:, 1], ref["matches0"][0][ref["matches0"][0] >= 0])
    assert torch.equal(out["points0"][0], k0[0, out["matches"][0][:, 0]])
    with pytest.raises(SilkError, match="needs data\\['image0'\\]\\['keypoints'\\]"):
        matcher({"image0": {"descriptors": d0}, "image1": {"descriptors": d1}})
    with pytest.raises(SilkError, match="image_size"):
        matcher({"image0": {"keypoints": k0, "descriptors": d0}, "image1": {"keypoints": k1, "descriptors": d1}})
    with pytest.raises(SilkError, match="glue_weights is an option of the 'glue' matcher"):
        Matcher("mnn", glue_weights="fast")
    for option in ({"max_distance": 0.2}, {"ratio_threshold": 0.8}, {"mutual": False}):  # refused, not ignored
        with pytest.raises(SilkError, match=f"{next(iter(option))}: options of the descriptor rules"):
            Matcher("glue", glue_weights=str(path), **option)
    # matches.h5 provenance names the weights: other weights are another matcher
    first = matcher_provenance(matcher)["matcher"]
    other = small_glue(match_threshold=0.0)
    torch.nn.init.zeros_(other.input.weight)
    other.save(tmp_path / "h.safetensors")
    assert matcher_provenance(Matcher("glue", glue_weights=str(tmp_path / "h.safetensors"), threshold=0.0))["matcher"] != first
    assert json.loads(first)["glue_weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_matcher_input_of_an_hloc_feature_dict():
    feats = {"keypoints": np.zeros((3, 2)), "descriptors": np.zeros((3, 8)), "image_size": np.array([4, 5]),
             "scores": np.ones(3)}
    out = matcher_input(feats)
    assert set(out) == {"keypoints", "descriptors", "image_size"} and out["image_size"].dtype == torch.float32


def test_cli_refuses_glue_without_shipped_weights(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(glue_module, "WEIGHTS_DIR", tmp_path)
    box, scene = (str(p) for p in DEMO_PAIR)
    assert main(["match", box, scene, "--model", "tiny", "--matcher", "glue", "--out", str(tmp_path / "m.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "error: no SiLKGlue weights shipped for the 'tiny' extractor" in err[-1]
    assert main(["match", box, scene, "--glue-weights", "fast", "--out", str(tmp_path / "m.png")]) == 2
    assert "--glue-weights needs --matcher glue" in capsys.readouterr().err


def test_onnx_equals_torch(tmp_path):
    pytest.importorskip("onnxruntime")
    from silk_keypoints.ecosystem.onnx import export_glue_onnx, glue_example, run_glue_onnx

    glue = small_glue(layers=1, match_threshold=0.0)
    path = export_glue_onnx(glue, tmp_path / "glue.onnx", keypoints=(12, 9))
    x = list(glue_example(16, (12, 9), seed=1))
    x[7] = torch.tensor([[True] * 7 + [False] * 2])  # padding through the graph too
    got = run_glue_onnx(path, x)
    with torch.no_grad():
        ref = glue(*x)
    real = x[7][0]
    assert np.abs(got["log_assignment"][..., real.numpy()] - ref["log_assignment"][..., real].numpy()).max() < 1e-4
    assert np.array_equal(got["matches0"], ref["matches0"].numpy())
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta["silk.glue_config"])["width"] == 16


def zoomed_view_of_a_real_photo():
    """A real photo, its 0.8x zoom-out turned by 10° pasted on another photo, that other photo, and the homography."""
    photo = load_image(IMAGES / "opencv_left.jpg")
    h, w = photo.shape[:2]
    H = rotation_about((w, h), 10.0, 0.8)
    clutter = cv2.resize(load_image(IMAGES / "opencv_box.jpg"), (w, h))
    return photo, paste_view(photo, clutter, H), clutter, H


def correct_matches(matcher, f0, f1, H) -> tuple[int, int]:
    """(matches, matches within 3 px of the homography H) of ``matcher`` on two feature sets."""
    out = matcher({"image0": f0, "image1": f1})
    errors = homography_errors(out["points0"][0].double(), out["points1"][0].double(), H)
    return len(errors), int((errors < 3).sum())


def unrelated_inliers(matcher, f0, f1) -> int:
    """Inliers of a 3-px homography fit to ``matcher``'s matches of two unrelated photos (0 if none fits)."""
    out = matcher({"image0": f0, "image1": f1})
    fit = estimate_homography(out["points0"][0].double().numpy(), out["points1"][0].double().numpy(), 3.0, seed=0)
    return 0 if fit.inliers is None else int(fit.inliers.sum())


def test_shipped_tiny_weights_drop_mutual_nn_errors_on_a_real_photo(capsys, tmp_path):
    assert "tiny" in available_glue()
    _, meta = read_safetensors(glue_module.WEIGHTS_DIR / "tiny.safetensors", "silk-keypoints-glue")
    assert json.loads(meta["config"])["descriptor_dim"] == 64 and json.loads(meta["info"])["extractor"] == "tiny"
    model = SiLK.from_pretrained("tiny").eval()
    photo, view, clutter, H = zoomed_view_of_a_real_photo()
    glue, mnn = Matcher("glue", glue_weights="tiny"), Matcher("mnn")
    for positions in ("cells", "extrema"):
        f0, f1 = (model.extract(x, max_keypoints=1024, positions=positions) for x in (photo, view))
        (n, ok), (n_mnn, ok_mnn) = counts = [correct_matches(m, f0, f1, H) for m in (glue, mnn)]
        # about as many correct matches, and under 70 % of mutual NN's wrong ones
        assert ok >= 0.95 * ok_mnn and ok / n > 0.9 and n - ok < 0.7 * (n_mnn - ok_mnn), (positions, counts)
        other = model.extract(clutter, max_keypoints=1024, positions=positions)
        assert unrelated_inliers(glue, f0, other) <= 10, positions
    box, scene = (str(p) for p in DEMO_PAIR)
    assert main(["match", box, scene, "--model", "tiny", "--matcher", "glue", "--out", str(tmp_path / "m.png")]) == 0
    assert "inliers" in capsys.readouterr().out


def test_shipped_weights_beat_mutual_nn_on_a_real_photo_and_refuse_an_unrelated_one(capsys, tmp_path):
    assert "fast" in available_glue()
    glue = SiLKGlue.from_pretrained("fast")
    _, meta = read_safetensors(glue_module.WEIGHTS_DIR / "fast.safetensors", "silk-keypoints-glue")
    assert glue.conf.descriptor_dim == 128 and set(json.loads(meta["info"])["positions"]) == {"cells", "extrema"}
    model = SiLK.from_pretrained("fast").eval()
    photo, view, clutter, H = zoomed_view_of_a_real_photo()
    for positions in ("cells", "extrema"):
        f0, f1 = (model.extract(x, max_keypoints=1024, positions=positions) for x in (photo, view))
        n, ok = correct_matches(Matcher("glue"), f0, f1, H)
        n_mnn, ok_mnn = correct_matches(Matcher("mnn"), f0, f1, H)
        assert ok >= ok_mnn and ok / n > 0.9 > ok_mnn / n_mnn, (positions, n, ok, n_mnn, ok_mnn)
        other = model.extract(clutter, max_keypoints=1024, positions=positions)
        assert unrelated_inliers(Matcher("glue"), f0, other) <= 10, positions  # unrelated photos: (almost) nothing
    box, scene = (str(p) for p in DEMO_PAIR)
    assert main(["match", box, scene, "--matcher", "glue", "--out", str(tmp_path / "m.png")]) == 0
    assert "inliers" in capsys.readouterr().out
