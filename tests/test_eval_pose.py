"""Relative pose: pair readers (JSON, CSV, LoFTR npz), bad input, pose errors, AUC, the IMC2022 writer."""

import csv
import json
import shutil

import numpy as np
import pytest

from silk_keypoints import SilkError
from silk_keypoints.evaluation.extractors import CallableExtractor, OpenCVExtractor
from silk_keypoints.evaluation.pose import (
    FeatureCache,
    PosePair,
    evaluate_pose,
    evaluate_pose_pair,
    extract_original,
    get_protocol,
    imc2022_submission,
    read_imc2022_test,
    read_pose_file,
    read_pose_pairs,
    safe_load_npz,
    summarize_pose,
    write_imc2022_submission,
)
from silk_keypoints.evaluation.testdata import intrinsics, make_pose_dataset, make_rgbd_dataset
from silk_keypoints.geometry import epipolar_errors
from silk_keypoints.matching import Matcher


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_pose_dataset(tmp_path_factory.mktemp("pose") / "pose", views=3, size=(200, 150), seed=2)


def test_plain_and_loftr_formats_agree(data):
    ref = read_pose_pairs(data / "pairs.json")
    assert len(ref) == 3 and ref[0].image0 == data / "images/view0.jpg" and ref[0].image1.name == "view1.jpg"
    for name in ("pairs.csv", "scene_info.npz"):
        other = read_pose_pairs(data / name)
        for a, b in zip(ref, other):
            assert (a.image0, a.image1) == (b.image0, b.image1)
            np.testing.assert_allclose(a.T_0to1, b.T_0to1, atol=1e-9)
            np.testing.assert_allclose(a.K0, b.K0)
    T = ref[0].T_0to1
    np.testing.assert_allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3), atol=1e-9)


def test_scannet_index(tmp_path):
    root = make_rgbd_dataset(tmp_path / "scannet", frames=3, size=(64, 48), seed=0)
    pairs = read_pose_pairs(root / "test.npz")
    assert [p.name for p in pairs] == ["scene0000_00 0 20", "scene0000_00 20 40"]
    assert pairs[0].image1 == root / "scene0000_00/color/20.jpg"
    pose0 = np.loadtxt(root / "scene0000_00/pose/0.txt")
    pose1 = np.loadtxt(root / "scene0000_00/pose/20.txt")
    np.testing.assert_allclose(pairs[0].T_0to1, np.linalg.inv(pose1) @ pose0)
    np.testing.assert_allclose(pairs[0].K0, intrinsics((64, 48)))
    shutil.move(root / "intrinsics.npz", tmp_path / "K.npz")
    with pytest.raises(SilkError, match="intrinsics file not found"):
        read_pose_pairs(root / "test.npz")
    assert len(read_pose_pairs(root / "test.npz", intrinsics=tmp_path / "K.npz")) == 2


def test_json_variants_and_root(data, tmp_path):
    rows = json.loads((data / "pairs.json").read_text())["pairs"]
    flat = [{**r, "K0": np.ravel(r["K0"]).tolist(), "T_0to1": np.asarray(r["T_0to1"])[:3].tolist()} for r in rows]
    (tmp_path / "list.json").write_text(json.dumps(flat))
    pairs = read_pose_pairs(tmp_path / "list.json", root=data)  # a bare list; 9 numbers; a 3x4 pose
    np.testing.assert_allclose(pairs[1].T_0to1, rows[1]["T_0to1"])
    (tmp_path / "rooted.json").write_text(json.dumps({"root": str(data), "pairs": rows}))
    assert read_pose_pairs(tmp_path / "rooted.json")[0].image0 == data / "images/view0.jpg"


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("p.json", "{not json", "not valid JSON"),
        ("p.json", '{"pairs": [{"image0": "a.jpg"}]}', "missing field"),
        ("p.json", '{"pairs": [{"image0": "a", "image1": "b", "K0": [1, 2], "K1": [], "T_0to1": []}]}', "K0: expected 3x3"),
        ("p.json", '{"pairs": []}', "no pairs"),
        ("p.json", '{"pairs": 3}', "expected"),
        ("p.csv", "image0,image1\n", "header must name"),
        ("p.csv", "image0,image1,K0,K1,T_0to1\na,b,1 x 3,1,1\n", "space-separated numbers"),
        ("p.txt", "", "header must name"),
        ("p.yaml", "", "unknown pair file type"),
        ("p.npz", "not a zip", "cannot read"),
    ],
)
def test_malformed_pair_files(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(SilkError, match=message):
        read_pose_pairs(path)


def test_missing_images_and_files(data, tmp_path):
    rows = json.loads((data / "pairs.json").read_text())["pairs"]
    rows[0]["image1"] = "images/gone.jpg"
    (tmp_path / "p.json").write_text(json.dumps({"pairs": rows}))
    with pytest.raises(SilkError, match="1 images not found.*gone.jpg"):
        read_pose_pairs(tmp_path / "p.json", root=data)
    with pytest.raises(SilkError, match="pair file not found"):
        read_pose_pairs(tmp_path / "nope.json")
    np.savez(tmp_path / "odd.npz", something=np.zeros(3))
    with pytest.raises(SilkError, match="unknown .npz pair file"):
        read_pose_pairs(tmp_path / "odd.npz")


class Exploit:
    def __reduce__(self):
        return (print, ("pwned",))


def test_read_pose_file(tmp_path):
    (tmp_path / "0.txt").write_text("1 0 0 0\n0 1 0 0\n0 0 1 0\n-inf -inf -inf -inf\n")
    assert np.isinf(read_pose_file(tmp_path / "0.txt")[3]).all()  # kept: callers skip lost frames
    (tmp_path / "1.txt").write_text("1 0 0\n")
    with pytest.raises(SilkError, match="malformed pose file"):
        read_pose_file(tmp_path / "1.txt")
    with pytest.raises(SilkError, match="pose file not found"):
        read_pose_file(tmp_path / "2.txt")


def test_safe_load_npz_refuses_code(tmp_path, data):
    infos = safe_load_npz(data / "scene_info.npz")["pair_infos"]
    assert tuple(infos[2][0]) == (1, 2)
    bad = np.empty(1, dtype=object)
    bad[0] = Exploit()
    np.savez(tmp_path / "evil.npz", pair_infos=bad)
    with pytest.raises(SilkError, match="refusing to load builtins.print"):
        safe_load_npz(tmp_path / "evil.npz")


def test_known_rotation_gives_known_error():
    rng = np.random.default_rng(0)
    K = intrinsics((320, 240))
    X = np.c_[rng.uniform(-1, 1, (200, 2)), rng.uniform(2, 4, 200)]

    def rot_y(deg):
        a = np.radians(deg)
        return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])

    def project(P):
        p = P @ K.T
        return p[:, :2] / p[:, 2:]

    t = np.array([0.3, 0.0, 0.05])
    T_gt = np.eye(4)
    T_gt[:3, :3], T_gt[:3, 3] = rot_y(5), t
    # the observations follow a pose rotated 3 deg further: the estimate is that pose, 3 deg off
    desc = np.eye(200, dtype=np.float32)
    f0 = {"keypoints": project(X), "descriptors": desc}
    f1 = {"keypoints": project(X @ rot_y(8).T + t), "descriptors": desc}
    pair = PosePair("p", None, None, K, K, T_gt)
    r = evaluate_pose_pair(f0, f1, pair, Matcher("mnn"))
    assert r["matches"] == 200 and r["inliers"] > 190
    assert r["rotation_error"] == pytest.approx(3.0, abs=1e-3)
    assert r["translation_error"] == pytest.approx(0.0, abs=0.05)
    assert r["pose_error"] == r["rotation_error"]
    few = {"keypoints": f0["keypoints"][:4], "descriptors": desc[:4, :4]}
    failed = evaluate_pose_pair(few, few, pair, Matcher("mnn"))
    assert failed["pose_error"] == np.inf and "too few" in failed["message"]


def test_summarize_pose_hand_computed():
    rows = [{"pose_error": e, "rotation_error": e, "translation_error": 0.0, "matches": 10, "inliers": 5}
            for e in (1.0, 4.0, np.inf)]
    s = summarize_pose(rows)
    assert s["failures"] == 1 and s["accuracy"] == {"5": pytest.approx(2 / 3), "10": pytest.approx(2 / 3),
                                                     "20": pytest.approx(2 / 3)}
    # curve (0,0) (1,1/3) (4,2/3) flat to 5: area 1/6 + 3 * 1/2 + 2/3 = 7/3 -> / 5
    assert s["auc"]["5"] == pytest.approx((1 / 6 + 1.5 + 2 / 3) / 5)
    assert s["median_rotation_error"] == 4.0 and s["matches"] == 10


def test_resizing_and_pixel_mapping(data):
    seen = []

    def one_point(img):
        seen.append(img.shape)
        return {"keypoints": np.array([[0.0, 5.0]]), "descriptors": np.ones((1, 4), np.float32)}

    feats = extract_original(CallableExtractor(one_point, "one"), data / "images/view0.jpg", 100)
    assert seen == [(75, 100, 3)]
    np.testing.assert_allclose(feats["keypoints"][0].numpy(), [[0.5, 10.5]])  # (x + 0.5) / 0.5 - 0.5
    assert feats["image_size"][0].tolist() == [200, 150]
    extract_original(CallableExtractor(one_point, "one"), data / "images/view0.jpg", None)
    assert seen[-1] == (150, 200, 3)
    calls = []
    cache = FeatureCache(lambda p: calls.append(p) or {"p": p}, size=1)
    cache("a"), cache("a"), cache("b"), cache("a")
    assert calls == ["a", "b", "a"]
    assert get_protocol("megadepth").resize == 1600 and get_protocol("scannet", resize=320).resize == 320
    with pytest.raises(SilkError, match="unknown pose protocol"):
        get_protocol("kitti")


def test_pipeline_on_generated_scene(data):
    pairs = read_pose_pairs(data / "pairs.json")
    dead = CallableExtractor(lambda img: {"keypoints": np.zeros((0, 2)), "descriptors": np.zeros((0, 8))}, "dead")
    r = evaluate_pose(pairs, [OpenCVExtractor("sift", 1000), dead], get_protocol("scannet", resize=200), progress=False)
    sift = r["methods"]["sift"]["summary"]
    assert sift["pairs"] == 3 and sift["failures"] == 0 and sift["auc"]["20"] > 0.5
    assert r["methods"]["sift"]["pairs"][0]["name"] == "images/view0.jpg images/view1.jpg"
    d = r["methods"]["dead"]["summary"]
    assert d["failures"] == 3 and d["auc"] == {"5": 0.0, "10": 0.0, "20": 0.0}
    with pytest.raises(SilkError, match="no pairs"):
        evaluate_pose([], [dead])


def test_imc2022_reader_and_writer(data, tmp_path):
    pairs = read_imc2022_test(data / "imc2022/test.csv")
    assert len(pairs) == 3 and pairs[0].image0 == data / "imc2022/test_images/synth/view0.png"
    out = imc2022_submission(pairs, OpenCVExtractor("sift", 1000), tmp_path / "sub.csv", progress=False)
    assert out == {"pairs": 3, "failures": 0, "path": str(tmp_path / "sub.csv")}
    with open(tmp_path / "sub.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["sample_id"] for r in rows] == [p.sample_id for p in pairs]
    # each F agrees with the true geometry: exact correspondences of the scene have small epipolar errors
    truth = {r["sample_id"]: r for r in csv.DictReader((data / "imc2022/ground_truth.csv").read_text().splitlines())}
    by_name = {(p.image0.name, p.image1.name): p for p in read_pose_pairs(data / "pairs.json")}
    rng = np.random.default_rng(0)
    for r in rows:
        i, j = r["sample_id"].split(";")[1].split("-")
        pp = by_name[(f"{i}.jpg", f"{j}.jpg")]
        X = np.c_[rng.uniform(-1, 1, (50, 2)), rng.uniform(2.5, 4, 50)]
        x0 = X @ pp.K0.T
        x1 = (X @ pp.T_0to1[:3, :3].T + pp.T_0to1[:3, 3]) @ pp.K1.T
        x0, x1 = x0[:, :2] / x0[:, 2:], x1[:, :2] / x1[:, 2:]
        for F, tol in ((r["fundamental_matrix"], 2.0), (truth[r["sample_id"]]["fundamental_matrix"], 1e-6)):
            F = np.array(F.split(), float).reshape(3, 3)
            assert np.median(epipolar_errors(x0, x1, F, "symmetric")) < tol
    write_imc2022_submission(tmp_path / "fail.csv", [("a", None)])
    assert (tmp_path / "fail.csv").read_text().splitlines()[1] == "a," + " ".join(["0.000000000e+00"] * 9)
    with pytest.raises(SilkError, match="header"):
        (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
        read_imc2022_test(tmp_path / "bad.csv")
    with pytest.raises(SilkError, match="images not found"):
        read_imc2022_test(data / "imc2022/test.csv", images=tmp_path)
