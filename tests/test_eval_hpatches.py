"""HPatches: reader, bad input, protocols, resizing, per-pair metrics and the whole pipeline on generated data."""

import shutil

import cv2
import numpy as np
import pytest
import torch

from silk_keypoints import Matcher, SilkError
from silk_keypoints.evaluation import hpatches
from silk_keypoints.evaluation.extractors import CallableExtractor, ModelExtractor, OpenCVExtractor
from silk_keypoints.evaluation.hpatches import (
    LARGE_SEQUENCES,
    evaluate_hpatches,
    evaluate_pair,
    get_protocol,
    protocol_size,
    read_homography,
    read_hpatches,
    scale_matrix,
    summarize,
)
from silk_keypoints.evaluation.testdata import make_hpatches
from silk_keypoints.model import SiLK
from silk_keypoints.model.zoo import variant_config

SMALL = {"short_side": 0, "max_keypoints": 300}  # 0: no resize


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_hpatches(tmp_path_factory.mktemp("hp") / "hpatches", sequences=2, size=(160, 120), seed=1)


@pytest.fixture
def copy(root, tmp_path):
    return shutil.copytree(root, tmp_path / "hp")


def test_read_hpatches(root):
    seqs = read_hpatches(root)
    assert [s.name for s in seqs] == ["i_synth00", "v_synth01"]
    assert [s.kind for s in seqs] == ["illumination", "viewpoint"]
    assert [p.name for p in seqs[0].images] == [f"{k}.ppm" for k in range(1, 7)]
    assert len(seqs[1].homographies) == 5 and seqs[1].homographies[0][2, 2] == 1
    assert [s.name for s in read_hpatches(root, exclude=["i_synth00"])] == ["v_synth01"]


def test_bad_input_is_reported(copy, tmp_path):
    (copy / "i_synth00" / "3.ppm").unlink()
    (copy / "v_synth01" / "H_1_4").write_text("1 0 0\n0 1\n")
    with pytest.raises(SilkError) as e:
        read_hpatches(copy)
    assert "i_synth00: missing 3.ppm" in str(e.value) and "malformed homography file" in str(e.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SilkError, match="no i_\\*/v_\\* sequence folders"):
        read_hpatches(empty)
    with pytest.raises(SilkError, match="not found"):
        read_hpatches(tmp_path / "nowhere")
    with pytest.raises(SilkError, match="excluded"):
        read_hpatches(tmp_path / "hp", exclude=["v_synth01", "i_synth00"])


@pytest.mark.parametrize("text", ["a b c\n1 2 3\n4 5 6\n", "1 0 0\n0 1 0\n", "0 0 0\n0 0 0\n0 0 0\n", "1 0 0\n0 1 0\n0 0 nan\n"])
def test_read_homography_rejects_malformed(tmp_path, text):
    path = tmp_path / "H_1_2"
    path.write_text(text)
    with pytest.raises(SilkError, match="malformed homography"):
        read_homography(path)


def test_read_homography_normalises(tmp_path):
    path = tmp_path / "H_1_2"
    path.write_text("2 0 4\n0 2 6\n0 0 2\n")  # HPatches files use spaces; extra spaces are fine
    np.testing.assert_allclose(read_homography(path), [[1, 0, 2], [0, 1, 3], [0, 0, 1]])


def test_protocols():
    assert get_protocol("silk").short_side == 480 and get_protocol("silk").pixel_offset == 0.5
    d2 = get_protocol("d2net")
    assert d2.exclude == LARGE_SEQUENCES and len(LARGE_SEQUENCES) == 8 and d2.short_side is None
    assert get_protocol("silk", short_side=240, max_keypoints=None).short_side == 240
    assert not get_protocol("silk").refine and d2.refine  # the original matched on the cell grid
    assert get_protocol("silk", refine=True).refine and not get_protocol("d2net", refine=False).refine
    with pytest.raises(SilkError, match="unknown HPatches protocol"):
        get_protocol("nope")


def test_protocol_size():
    assert protocol_size(640, 480, 480, 8) == (640, 480)
    assert protocol_size(1000, 750, 480, 8) == (640, 480)
    assert protocol_size(850, 567, 480, 8) == (720, 480)  # 719.6 -> 719 -> 720
    assert protocol_size(101, 50, None, 8) == (104, 56)


def test_scale_matrix_follows_pixel_conventions():
    # a bright pixel at (10, 10) lands at (20.5, 20.5) after a 2x upscale (pixel centres at integers)
    img = np.zeros((40, 40), np.float32)
    img[10, 10] = 1
    up = cv2.resize(img, (80, 80), interpolation=cv2.INTER_LINEAR)
    ys, xs = np.nonzero(up > up.max() * 0.5)
    np.testing.assert_allclose([xs.mean(), ys.mean()], [20.5, 20.5])
    np.testing.assert_allclose(scale_matrix(2, 2) @ [10, 10, 1], [20.5, 20.5, 1])
    # in the original's +0.5 frame the same resize is a pure scaling: 10.5 -> 21 = 20.5 + 0.5
    np.testing.assert_allclose(scale_matrix(2, 2, 0.5), np.diag([2, 2, 1]))


def features(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return {"keypoints": rng.uniform(10, 100, (n, 2)), "descriptors": np.eye(n, dtype=np.float32)}


def test_evaluate_pair_identity_and_known_offset():
    f = features()
    r = evaluate_pair(f, f, np.eye(3), (120, 110), (120, 110))
    assert r["matches"] == 40 and r["keypoints0"] == 40
    assert all(v == 1.0 for v in r["mma"].values()) and all(v == 1.0 for v in r["repeatability"].values())
    assert r["corner_error"] == pytest.approx(0, abs=1e-4)
    # the truth says every point moved by (3, 4), the matches say nothing moved: corner error 5, MMA 0 below 5
    shifted = np.array([[1, 0, 3], [0, 1, 4], [0, 0, 1.0]])
    r = evaluate_pair(f, f, shifted, (120, 110), (120, 110))
    assert r["corner_error"] == pytest.approx(5.0, abs=1e-4)
    assert r["mma"][4] == 0.0 and r["mma"][6] == 1.0
    # too few matches: estimation fails, counted as an infinite error
    few = {"keypoints": f["keypoints"][:3], "descriptors": f["descriptors"][:3, :3]}
    assert evaluate_pair(few, few, np.eye(3), (120, 110), (120, 110))["corner_error"] == np.inf


def test_evaluate_pair_magsac_fit_beside_the_original():
    f = features()
    shifted = np.array([[1, 0, 3], [0, 1, 4], [0, 0, 1.0]])
    assert "corner_error_magsac" not in evaluate_pair(f, f, np.eye(3), (120, 110), (120, 110))
    r = evaluate_pair(f, f, np.eye(3), (120, 110), (120, 110), magsac=True)
    assert r["corner_error_magsac"] == pytest.approx(0, abs=1e-4)
    r = evaluate_pair(f, f, shifted, (120, 110), (120, 110), magsac=True)
    assert r["corner_error_magsac"] == pytest.approx(5.0, abs=1e-4) and r["corner_error"] == pytest.approx(5.0, abs=1e-4)
    few = {"keypoints": f["keypoints"][:3], "descriptors": f["descriptors"][:3, :3]}
    assert evaluate_pair(few, few, np.eye(3), (120, 110), (120, 110), magsac=True)["corner_error_magsac"] == np.inf


def test_evaluate_pair_with_another_matcher():
    f0 = features()
    # ten more points in image 1 whose descriptors nearly repeat those of points 0-9: ambiguous for a ratio test
    d = f0["descriptors"]
    d1 = np.concatenate([d[:10] * 0.98 + d[20:30] * 0.2, d[10:], d[:10] * 0.98 + d[10:20] * 0.2])
    f1 = {"keypoints": np.concatenate([f0["keypoints"], f0["keypoints"][:10] + 30]), "descriptors": d1}
    plain = evaluate_pair(f0, f1, np.eye(3), (120, 110), (120, 110))
    ratio = evaluate_pair(f0, f1, np.eye(3), (120, 110), (120, 110), matcher=Matcher("ratio", refine=False))
    assert plain["matches"] == 40 and ratio["matches"] == 30  # the ratio test drops the ambiguous ten
    assert ratio["mma"][1] == 1.0 and ratio["repeatability"] == plain["repeatability"]


def test_summarize_groups_and_failures():
    def pair(kind, err, mma):
        return {"kind": kind, "keypoints0": 10, "keypoints1": 20, "matches": 5, "corner_error": err,
                "repeatability": {1: 0.5}, "mma": {1: mma}}

    s = summarize([pair("illumination", 0.5, 1.0), pair("viewpoint", np.inf, 0.0), pair("viewpoint", 2.5, 0.5)])
    assert s["illumination"]["pairs"] == 1 and s["viewpoint"]["pairs"] == 2 and s["all"]["pairs"] == 3
    assert s["viewpoint"]["failures"] == 1 and s["all"]["keypoints"] == 15
    assert s["all"]["mma"] == {"1": 0.5}
    assert s["all"]["h_acc"]["1"] == pytest.approx(1 / 3) and s["all"]["h_acc"]["3"] == pytest.approx(2 / 3)
    assert "illumination" not in summarize([pair("viewpoint", 1.0, 1.0)])
    assert "h_auc_magsac" not in s["all"]  # only when every pair has the MAGSAC fit
    both = summarize([{**pair("viewpoint", 0.5, 1.0), "corner_error_magsac": 0.2},
                      {**pair("viewpoint", 2.5, 1.0), "corner_error_magsac": 0.4}])["all"]
    assert both["h_acc"]["1"] == 0.5 and both["h_acc_magsac"]["1"] == 1.0
    assert both["h_auc_magsac"]["1"] == pytest.approx(0.8)  # trapezoids through (0.2, 0.5), (0.4, 1), (1, 1)
    mixed = summarize([{**pair("viewpoint", 0.5, 1.0), "corner_error_magsac": 0.1}, pair("viewpoint", 0.5, 1.0)])
    assert "h_auc_magsac" not in mixed["all"]


def test_identical_images_give_perfect_scores(root, tmp_path):
    seq = tmp_path / "same" / "i_same"
    seq.mkdir(parents=True)
    for k in range(1, 7):
        shutil.copy(root / "v_synth01" / "1.ppm", seq / f"{k}.ppm")
    for k in range(2, 7):
        np.savetxt(seq / f"H_1_{k}", np.eye(3))
    r = evaluate_hpatches(tmp_path / "same", [OpenCVExtractor("sift", 300)], get_protocol("silk", **SMALL),
                          progress=False)
    s = r["methods"]["sift"]["summary"]["all"]
    assert s["pairs"] == 5 and s["failures"] == 0
    assert set(s["mma"].values()) == {1.0} and set(s["repeatability"].values()) == {1.0}
    assert set(s["h_acc"].values()) == {1.0} and min(s["h_auc"].values()) > 0.999


def test_pipeline_on_generated_data(root):
    torch.manual_seed(0)
    tiny = ModelExtractor(SiLK(variant_config("tiny")).eval(), "tiny", max_keypoints=300)
    sift = OpenCVExtractor("sift", 300)
    calls = []

    def user(img):
        calls.append(img.shape)
        return sift(img)

    extractors = [tiny, sift, CallableExtractor(user, "user")]
    r = evaluate_hpatches(root, extractors, get_protocol("d2net", max_keypoints=300), seed=3, progress=False)
    assert list(r["methods"]) == ["tiny", "sift", "user"] and r["protocol"]["name"] == "d2net"
    s = r["methods"]["sift"]["summary"]
    assert set(s) == {"illumination", "viewpoint", "all"} and s["all"]["pairs"] == 10
    assert s["viewpoint"]["mma"]["3"] > 0.6 and s["viewpoint"]["h_acc"]["5"] > 0.5  # the generated H are right
    assert r["methods"]["user"]["summary"] == s and len(calls) == 12  # 6 images per sequence
    assert len(r["methods"]["tiny"]["pairs"]) == 10 and r["methods"]["tiny"]["seconds_per_image"] > 0
    pair = r["methods"]["tiny"]["pairs"][0]
    assert pair["sequence"] == "i_synth00" and pair["index"] == 2 and set(pair["mma"]) == {str(t) for t in range(1, 11)}
    # reproducible: the same seed gives the same numbers
    again = evaluate_hpatches(root, [sift], get_protocol("d2net", max_keypoints=300), seed=3, progress=False)
    assert again["methods"]["sift"]["summary"] == s


def test_silk_protocol_resizes_and_dense_mode(root):
    torch.manual_seed(0)
    tiny = ModelExtractor(SiLK(variant_config("tiny")).eval(), "tiny", max_keypoints=200)
    seen = []
    tiny_seen = CallableExtractor(lambda img: seen.append(img.shape) or tiny(img), "sizes")
    one = read_hpatches(root)[1:]
    evaluate_hpatches(one, [tiny_seen], get_protocol("silk", short_side=64), progress=False)
    assert set(seen) == {(64, 88, 3)}  # 160x120 -> short side 64 -> 85 -> 88 (multiple of 8)
    r = evaluate_hpatches(one, [tiny], get_protocol("silk", short_side=64), dense=True, progress=False)
    assert r["dense"] and r["methods"]["tiny"]["summary"]["all"]["keypoints"] == np.prod(tiny.model.output_shape(64, 88))
    with pytest.raises(SilkError, match="no dense"):
        evaluate_hpatches(root, [OpenCVExtractor("sift")], dense=True, progress=False)
    with pytest.raises(SilkError, match="no extractor"):
        evaluate_hpatches(root, [], progress=False)


def test_half_pixel_convention_difference():
    f = features()
    H = np.diag([1.5, 1.5, 1.0])  # a truth defined for pixel centres at integers
    f1 = {**f, "keypoints": f["keypoints"] * 1.5}
    ours = evaluate_pair(f, f1, H, (120, 110), (180, 165), pixel_offset=0.0)
    assert ours["corner_error"] == pytest.approx(0, abs=1e-4)
    # the original applies the same H to +0.5 centres: off by 0.5 * (scale - 1) = 0.25 px per axis
    orig = evaluate_pair(f, f1, H, (120, 110), (180, 165), pixel_offset=0.5)
    assert orig["corner_error"] == pytest.approx(0.25 * np.sqrt(2), abs=1e-4)
    assert orig["mma"][1] == 1.0 and hpatches.MMA_THRESHOLDS == tuple(range(1, 11))
