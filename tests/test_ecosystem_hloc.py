"""hloc files: features.h5 and matches.h5 read back exactly as hloc's readers do, `silk match-pairs`, and a
tiny end-to-end hloc-layout pipeline (extract -> pairs -> matches) on the three shipped images."""

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from silk_keypoints import SilkError
from silk_keypoints.cli import main
from silk_keypoints.ecosystem.hloc import (
    feature_names,
    match_pairs,
    names_to_pair,
    read_features,
    read_matches,
    write_features,
    write_matches,
)
from silk_keypoints.matching import Matcher, match_descriptors
from silk_keypoints.model import SiLK
from silk_keypoints.model.zoo import variant_config

IMAGES = Path(__file__).parent / "fixtures" / "images"


# --- hloc's readers (hloc/utils/io.py and parsers.py), kept as hloc writes them -----------------------------
def hloc_names_to_pair(name0, name1, separator="/"):
    return separator.join((name0.replace("/", "-"), name1.replace("/", "-")))


def hloc_list_h5_names(path):
    names = []
    with h5py.File(str(path), "r", libver="latest") as fd:

        def visit_fn(_, obj):
            if isinstance(obj, h5py.Dataset):
                names.append(obj.parent.name.strip("/"))

        fd.visititems(visit_fn)
    return list(set(names))


def hloc_get_keypoints(path, name):
    with h5py.File(str(path), "r", libver="latest") as hfile:
        return hfile[name]["keypoints"].__array__()


def hloc_find_pair(hfile, name0, name1):
    pair = hloc_names_to_pair(name0, name1)
    if pair in hfile:
        return pair, False
    pair = hloc_names_to_pair(name1, name0)
    if pair in hfile:
        return pair, True
    raise ValueError(f"Could not find pair {(name0, name1)}")


def hloc_get_matches(path, name0, name1):
    with h5py.File(str(path), "r", libver="latest") as hfile:
        pair, reverse = hloc_find_pair(hfile, name0, name1)
        matches = hfile[pair]["matches0"].__array__()
        scores = hfile[pair]["matching_scores0"].__array__()
    idx = np.where(matches != -1)[0]
    matches = np.stack([idx, matches[idx]], -1)
    if reverse:
        matches = np.flip(matches, -1)
    scores = scores[idx]
    return matches, scores


def hloc_pair_dataset_item(path, name0, name1):
    """hloc match_features.FeaturePairsDataset.__getitem__."""
    data = {}
    with h5py.File(path, "r") as fd:
        for i, name in enumerate((name0, name1)):
            grp = fd[name]
            for k, v in grp.items():
                data[k + str(i)] = torch.from_numpy(v.__array__()).float()
            data[f"image{i}"] = torch.empty((1, *tuple(grp["image_size"])[::-1]))
    return data


# --- fixtures -----------------------------------------------------------------------------------------------
def fake_features(n, dim=16, size=(40, 30), seed=0):
    rng = np.random.default_rng(seed)
    desc = rng.normal(size=(n, dim)).astype(np.float32)
    return {
        "keypoints": rng.uniform(0, min(size) - 1, (n, 2)).astype(np.float32),
        "scores": rng.uniform(0, 1, n).astype(np.float32),
        "descriptors": desc / np.linalg.norm(desc, axis=1, keepdims=True),
        "image_size": np.array(size),
    }


@pytest.fixture
def features_h5(tmp_path):
    feats = {
        "a.jpg": fake_features(12, seed=1),
        "b.jpg": fake_features(9, seed=2),
        "dir/c.jpg": fake_features(7, seed=3),
    }
    return write_features(tmp_path / "features.h5", feats.items()), feats


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    SiLK(variant_config("tiny")).save(path)
    return path


# --- features.h5 --------------------------------------------------------------------------------------------
def test_features_read_as_hloc_does(features_h5):
    path, feats = features_h5
    assert sorted(hloc_list_h5_names(path)) == feature_names(path) == ["a.jpg", "b.jpg", "dir/c.jpg"]
    np.testing.assert_array_equal(hloc_get_keypoints(path, "dir/c.jpg"), feats["dir/c.jpg"]["keypoints"])
    item = hloc_pair_dataset_item(path, "a.jpg", "dir/c.jpg")
    assert item["descriptors0"].shape == (16, 12) and item["descriptors1"].shape == (16, 7)  # D x N
    assert item["keypoints0"].shape == (12, 2) and item["scores1"].shape == (7,)
    assert item["image0"].shape == (1, 30, 40)  # image_size is (W, H)
    back = read_features(path, "b.jpg")
    np.testing.assert_array_equal(back["descriptors"], feats["b.jpg"]["descriptors"])
    with pytest.raises(SilkError, match="not in"):
        read_features(path, "zzz.jpg")


def test_features_h5_records_provenance(tmp_path, weights):
    import hashlib
    import json

    from silk_keypoints import __version__

    path = write_features(tmp_path / "f.h5", [("a.jpg", fake_features(3))], model_name="tiny",
                          weights=weights, options={"max_keypoints": 300, "nms_radius": None})
    with h5py.File(path, "r") as f:
        attrs = dict(f.attrs)
    assert attrs["silk_keypoints_version"] == __version__ and attrs["model"] == "tiny"
    assert attrs["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert json.loads(attrs["detection_options"]) == {"max_keypoints": 300}
    assert feature_names(path) == ["a.jpg"]  # hloc's readers see the groups only
    with h5py.File(write_features(tmp_path / "g.h5", []), "r") as f:
        assert set(f.attrs) == {"silk_keypoints_version"}


def test_unreadable_h5(tmp_path):
    with pytest.raises(SilkError, match="file not found"):
        feature_names(tmp_path / "nope.h5")
    (tmp_path / "bad.h5").write_bytes(b"garbage")
    with pytest.raises(SilkError, match="not an HDF5 file"):
        feature_names(tmp_path / "bad.h5")


# --- matches.h5 ---------------------------------------------------------------------------------------------
def test_names_to_pair_is_hlocs():
    for a, b in [("a.jpg", "b.jpg"), ("dir/x/a.jpg", "b/c.png")]:
        assert names_to_pair(a, b) == hloc_names_to_pair(a, b)
    assert names_to_pair("d/a.jpg", "b.jpg") == "d-a.jpg/b.jpg"


def test_matches_written_and_read_as_hloc_does(tmp_path):
    m0 = np.array([2, -1, 0, -1, 4])
    s0 = np.array([0.9, 0, 0.5, 0, 0.7], dtype=np.float32)
    path = write_matches(tmp_path / "matches.h5", [("dir/a.jpg", "b.jpg", m0, s0)])
    with h5py.File(path, "r") as f:
        grp = f["dir-a.jpg/b.jpg"]
        assert grp["matches0"].dtype.kind == "i" and grp["matches0"].shape == (5,)
        assert grp["matching_scores0"].shape == (5,)
    expected = np.array([[0, 2], [2, 0], [4, 4]])
    for order in [("dir/a.jpg", "b.jpg"), ("b.jpg", "dir/a.jpg")]:
        ours, our_scores = read_matches(path, *order)
        theirs, their_scores = hloc_get_matches(path, *order)
        np.testing.assert_array_equal(ours, theirs)
        np.testing.assert_array_equal(our_scores, their_scores)
    np.testing.assert_array_equal(read_matches(path, "dir/a.jpg", "b.jpg")[0], expected)
    np.testing.assert_array_equal(read_matches(path, "b.jpg", "dir/a.jpg")[0], expected[:, ::-1])
    with pytest.raises(SilkError, match="not in"):
        read_matches(path, "b.jpg", "c.jpg")


def test_write_matches_refuses_existing_and_duplicates(tmp_path):
    path = tmp_path / "matches.h5"
    path.write_bytes(b"precious")
    item = ("a", "b", np.array([-1]), np.array([0.0]))
    with pytest.raises(SilkError, match="exists"):
        write_matches(path, [item])
    with pytest.raises(SilkError, match="duplicate pair"):
        write_matches(path, [item, item], overwrite=True)
    assert path.read_bytes() == b"precious"


@pytest.mark.parametrize(
    "method, options",
    [("mnn", {"max_distance": None}), ("ratio", {"ratio_threshold": 0.9, "max_distance": None}),
     ("double-softmax", {"threshold": 0.99, "max_distance": None}), ("mnn", {})],
)
def test_match_pairs_equals_matcher(tmp_path, features_h5, method, options):
    path, feats = features_h5
    pairs = [
        ("a.jpg", "dir/c.jpg"),
        ("b.jpg", "a.jpg"),
        ("dir/c.jpg", "a.jpg"),
    ]  # last: duplicate of the first
    out = match_pairs(path, pairs, tmp_path / "m.h5", method=method, gate=False, **options)
    with h5py.File(out, "r") as f:
        assert sorted(f) == ["a.jpg", "b.jpg"] and list(f["b.jpg"]) == ["a.jpg"]
    matcher = Matcher(method, **options)
    for a, b in pairs[:2]:
        d0, d1 = (torch.from_numpy(feats[n]["descriptors"]) for n in (a, b))
        pred = matcher({"image0": {"descriptors": d0}, "image1": {"descriptors": d1}})
        got, scores = hloc_get_matches(out, a, b)
        np.testing.assert_array_equal(got, pred["matches"][0].numpy())
        expected = pred["scores"][0].numpy()
        if method == "mnn":  # hloc's nearest_neighbor matcher stores (sim + 1) / 2
            expected = (expected + 1) / 2
        np.testing.assert_allclose(scores, expected, rtol=1e-6)
        with h5py.File(out, "r") as f:
            pair = f[names_to_pair(a, b)]
            m0, s0 = pair["matches0"][()], pair["matching_scores0"][()]
        assert (s0[m0 == -1] == 0).all() and ((s0 >= 0) & (s0 <= 1)).all()
    if method == "mnn":  # unit descriptors: mnn of the matcher == mnn of match_descriptors (with the same gate)
        ref, _ = match_descriptors(feats["a.jpg"]["descriptors"], feats["dir/c.jpg"]["descriptors"], "mnn",
                                   max_distance=matcher.conf["max_distance"])
        np.testing.assert_array_equal(hloc_get_matches(out, "a.jpg", "dir/c.jpg")[0], ref)


def test_match_pairs_bad_input(tmp_path, features_h5):
    path, _ = features_h5
    with pytest.raises(SilkError, match=r"2 image\(s\) of the pairs are not in .*features.h5: x.jpg, y.jpg"):
        match_pairs(path, [("a.jpg", "x.jpg"), ("y.jpg", "b.jpg")], tmp_path / "m.h5")
    out = tmp_path / "m.h5"
    out.write_bytes(b"precious")
    with pytest.raises(SilkError, match="cannot resume .*m.h5: not an HDF5 file"):
        match_pairs(path, [("a.jpg", "b.jpg")], out)
    with pytest.raises(SilkError, match="unknown matching method"):
        match_pairs(path, [("a.jpg", "b.jpg")], out, method="magic", overwrite=True)
    assert out.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features.h5", "m.h5"]


# --- end to end: silk extract -> silk pairs -> silk match-pairs, on the shipped images ----------------------
def test_hloc_pipeline_on_shipped_images(tmp_path, weights, capsys):
    images = sorted(IMAGES.glob("*.jpg"))
    assert len(images) == 3
    feats, pairs, matches = tmp_path / "features.h5", tmp_path / "pairs.txt", tmp_path / "matches.h5"
    common = ["--checkpoint", str(weights)]
    assert (
        main(
            [
                "extract",
                *map(str, images),
                "--root",
                str(IMAGES),
                "--out",
                str(feats),
                "--max-keypoints",
                "300",
                "--resize",
                "320",
                *common,
            ]
        )
        == 0
    )
    assert main(["pairs", "exhaustive", "--features", str(feats), "--out", str(pairs)]) == 0
    # random weights: no pair would pass the unrelated-pairs gate (test_match_pairs_gate)
    assert main(["match-pairs", str(pairs), "--features", str(feats), "--out", str(matches), "--no-gate"]) == 0
    capsys.readouterr()

    names = sorted(hloc_list_h5_names(feats))
    assert names == [p.name for p in images]
    listed = [tuple(line.split()) for line in pairs.read_text().splitlines()]
    assert listed == [(names[0], names[1]), (names[0], names[2]), (names[1], names[2])]
    with h5py.File(feats, "r") as f:
        sizes = {n: tuple(f[n]["image_size"][()]) for n in names}
        assert f.attrs["model"] == "tiny" and len(f.attrs["weights_sha256"]) == 64
        assert '"resize": 320' in f.attrs["detection_options"]
    assert sizes["opencv_left.jpg"] == (612, 459)  # original size, keypoints mapped back from --resize 320
    for a, b in listed:
        m, s = hloc_get_matches(matches, a, b)
        ka, kb = hloc_get_keypoints(feats, a), hloc_get_keypoints(feats, b)
        assert len(m) > 0 and m[:, 0].max() < len(ka) and m[:, 1].max() < len(kb)
        assert ka[:, 0].max() <= sizes[a][0] - 1 and ka[:, 1].max() <= sizes[a][1] - 1
        d0, d1 = (torch.from_numpy(read_features(feats, n)["descriptors"]) for n in (a, b))
        ref = Matcher("mnn")({"image0": {"descriptors": d0}, "image1": {"descriptors": d1}})["matches"][0]
        np.testing.assert_array_equal(m, ref.numpy())
        assert np.all(s > 0)


def test_match_pairs_gate(tmp_path, capsys):
    """The unrelated-pairs gate, silk match-pairs' default: the two views of one scene keep their matches, the
    pairs of the box with them get none; --no-gate keeps every pair's matches."""
    feats, pairs, matches = tmp_path / "features.h5", tmp_path / "pairs.txt", tmp_path / "matches.h5"
    assert main(["extract", str(IMAGES), "--out", str(feats), "--model", "tiny", "--quiet"]) == 0
    pairs.write_text("opencv_left.jpg opencv_right.jpg\nopencv_box.jpg opencv_left.jpg\nopencv_box.jpg opencv_right.jpg\n")
    assert main(["match-pairs", str(pairs), "--features", str(feats), "--out", str(matches), "--quiet"]) == 0
    assert "(0 already there, 2 with no matches: unrelated-pairs gate)" in capsys.readouterr().out
    counts = {b: len(hloc_get_matches(matches, a, b)[0]) for a, b in (line.split() for line in pairs.read_text().splitlines())}
    assert counts["opencv_right.jpg"] == 0 and counts["opencv_left.jpg"] == 0  # the box pairs
    assert len(hloc_get_matches(matches, "opencv_left.jpg", "opencv_right.jpg")[0]) > 100
    with h5py.File(matches, "r") as f:
        assert json.loads(f.attrs["matcher"])["gate"]["min_inliers"] == 15
    assert main(["match-pairs", str(pairs), "--features", str(feats), "--out", str(matches), "--no-gate"]) == 2
    assert "other settings" in capsys.readouterr().err  # a gated file is not resumed without the gate
    assert main(["match-pairs", str(pairs), "--features", str(feats), "--out", str(matches), "--no-gate",
                 "--overwrite", "--quiet"]) == 0
    assert len(hloc_get_matches(matches, "opencv_box.jpg", "opencv_left.jpg")[0]) > 20


def test_cli_match_pairs_bad_input(tmp_path, features_h5, capsys):
    path, _ = features_h5
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("a.jpg b.jpg\nmissing.jpg a.jpg\n")
    out = tmp_path / "matches.h5"
    assert main(["match-pairs", str(pairs), "--features", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "names 1 image(s) not in" in err and "missing.jpg" in err and not out.exists()
    pairs.write_text("a.jpg b.jpg\n")
    out.write_bytes(b"precious")
    assert main(["match-pairs", str(pairs), "--features", str(path), "--out", str(out)]) == 2
    assert "cannot resume" in capsys.readouterr().err and out.read_bytes() == b"precious"
    assert (
        main(
            [
                "match-pairs",
                str(pairs),
                "--features",
                str(path),
                "--out",
                str(out),
                "--overwrite",
                "--method",
                "double-softmax",
                "--match-threshold",
                "0.99",
                "--temperature",
                "0.1",
            ]
        )
        == 0
    )
    assert hloc_get_matches(out, "a.jpg", "b.jpg")[0].shape[1] == 2
    args = ["match-pairs", str(pairs), "--features", str(path), "--out", str(out), "--overwrite"]
    assert (
        main([*args, "--method", "ratio", "--match-threshold", "0.9"]) == 0
    )  # ratio_threshold, as silk match
    ref = match_pairs(path, [("a.jpg", "b.jpg")], tmp_path / "ref.h5", method="ratio", ratio_threshold=0.9)
    np.testing.assert_array_equal(
        hloc_get_matches(out, "a.jpg", "b.jpg")[0], hloc_get_matches(ref, "a.jpg", "b.jpg")[0]
    )
