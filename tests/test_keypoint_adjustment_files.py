"""``silk extract --neighbours`` -> ``match-pairs`` -> ``adjust-keypoints`` (hloc files) and ``silk colmap
--features --adjust-keypoints``, on the shipped images with the shipped ``fast``."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import h5py
import numpy as np
import pytest

from silk_keypoints import SilkError
from silk_keypoints.cli import main
from silk_keypoints.ecosystem.hloc import adjust_features, read_features, read_matches
from silk_keypoints.ecosystem.pairs import read_pairs

IMAGES = Path(__file__).parent / "fixtures" / "images"
LEFT, RIGHT = "opencv_left.jpg", "opencv_right.jpg"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """features.h5 with and without neighbours, the pairs and the matches of the shipped images."""
    d = tmp_path_factory.mktemp("adjust")
    common = ["--max-keypoints", "512", "--resize", "400", "--quiet"]
    assert main(["extract", str(IMAGES), "--out", str(d / "n.h5"), "--neighbours", *common]) == 0
    assert main(["extract", str(IMAGES), "--out", str(d / "plain.h5"), *common]) == 0
    assert main(["pairs", "exhaustive", "--features", str(d / "n.h5"), "--out", str(d / "pairs.txt")]) == 0
    assert main(["match-pairs", str(d / "pairs.txt"), "--features", str(d / "n.h5"), "--out", str(d / "m.h5"),
                 "--quiet"]) == 0
    return d


def test_extract_neighbours_stores_them_and_the_same_keypoints(files):
    with_n, plain = read_features(files / "n.h5", LEFT), read_features(files / "plain.h5", LEFT)
    assert with_n["neighbour_descriptors"].shape == (512, 9, plain["descriptors"].shape[1])
    assert with_n["neighbour_descriptors"].dtype == np.float16
    # fast's 2-px cells, in the original image's pixels (resized to a long side of 400 for the network)
    assert float(with_n["neighbour_spacing"]) == pytest.approx(2.0 * max(plain["image_size"]) / 400)
    np.testing.assert_array_equal(with_n["keypoints"], plain["keypoints"])
    with h5py.File(files / "n.h5") as f:
        assert json.loads(f.attrs["detection_options"])["neighbours"] is True


def test_adjust_keypoints_moves_matched_keypoints_of_verified_pairs(files, capsys):
    out = files / "adjusted.h5"
    assert main(["adjust-keypoints", str(files / "pairs.txt"), "--features", str(files / "n.h5"), "--matches",
                 str(files / "m.h5"), "--out", str(out)]) == 0
    assert "keypoints adjusted on the tracks of 1 of 3 pairs" in capsys.readouterr().out  # left-right only
    for name in (LEFT, RIGHT):
        old, new = read_features(files / "n.h5", name), read_features(out, name)
        shift = np.abs(new["keypoints"] - old["keypoints"]).max(axis=1)
        assert shift.max() <= 3.1 and (shift > 0).sum() > 50  # within one cell of fast (3.06 px here); many moved
        np.testing.assert_array_equal(new["descriptors"], old["descriptors"])
        assert "neighbour_descriptors" not in new
    box = "opencv_box.jpg"  # in no verified pair: unchanged
    np.testing.assert_array_equal(read_features(out, box)["keypoints"], read_features(files / "n.h5", box)["keypoints"])
    with h5py.File(out) as f:
        assert json.loads(f.attrs["keypoint_adjustment"])["pairs"] == 1 and "model" in f.attrs
    # the adjusted file feeds silk colmap like any features.h5
    db = files / "adjusted.db"
    assert main(["colmap", "--images", str(IMAGES), "--features", str(out), "--matches", str(files / "m.h5"),
                 "--database", str(db)]) == 0
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM two_view_geometries WHERE rows > 0").fetchone() == (1,)


def test_colmap_adjusts_features_with_neighbours_and_refuses_without(files, capsys):
    db = files / "c.db"
    assert main(["colmap", "--images", str(IMAGES), "--features", str(files / "n.h5"), "--database", str(db),
                 "--adjust-keypoints"]) == 0
    with sqlite3.connect(db) as conn:
        name_of = dict(conn.execute("SELECT image_id, name FROM images"))
        kpts = {name_of[i]: np.frombuffer(b, np.float32).reshape(r, 2)
                for i, r, b in conn.execute("SELECT image_id, rows, data FROM keypoints")}
    shift = np.abs(kpts[LEFT] - 0.5 - read_features(files / "n.h5", LEFT)["keypoints"]).max(axis=1)
    assert 0 < shift.max() <= 3.1  # one cell of fast at the resize
    capsys.readouterr()
    args = ["colmap", "--images", str(IMAGES), "--features", str(files / "plain.h5"), "--database",
            str(files / "d.db"), "--adjust-keypoints"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "error: --adjust-keypoints needs neighbour descriptors" in err and err.count("\n") == 1
    assert not (files / "d.db").exists()
    assert main(args[:-1] + ["--no-verify", "--adjust-keypoints"]) == 2
    assert "leave out --no-verify" in capsys.readouterr().err


def test_adjust_features_bad_input(files, capsys):
    pairs = read_pairs(files / "pairs.txt")
    with pytest.raises(SilkError, match="no neighbour descriptors: extract with silk extract --neighbours"):
        adjust_features(files / "plain.h5", files / "m.h5", pairs, files / "x.h5")
    with pytest.raises(SilkError, match="not in .*n.h5, e.g. 'nowhere.jpg'"):
        adjust_features(files / "n.h5", files / "m.h5", [(LEFT, "nowhere.jpg")], files / "x.h5")
    with pytest.raises(SilkError, match="is the input features file"):
        adjust_features(files / "n.h5", files / "m.h5", pairs, files / "n.h5", overwrite=True)
    with pytest.raises(SilkError, match="exists"):
        adjust_features(files / "n.h5", files / "m.h5", pairs, files / "pairs.txt")
    assert not (files / "x.h5").exists()
    assert main(["adjust-keypoints", str(files / "pairs.txt"), "--features", str(files / "n.h5"), "--matches",
                 str(files / "m.h5"), "--out", str(files / "y.h5"), "--min-inliers", "3"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_adjust_features_equals_adjust_keypoints_in_memory(files):
    """The file path reads one pair's rows at a time; it gives what adjust_keypoints gives on the same
    verified matches."""
    import torch

    from silk_keypoints.features import Features
    from silk_keypoints.geometry import estimate_fundamental
    from silk_keypoints.refinement import adjust_keypoints

    pairs = read_pairs(files / "pairs.txt")
    adjust_features(files / "n.h5", files / "m.h5", pairs, files / "same.h5")
    names = sorted({n for p in pairs for n in p})
    feats = {n: read_features(files / "n.h5", n) for n in names}
    edges = []
    for a, b in pairs:
        m, _ = read_matches(files / "m.h5", a, b)
        if len(m) < 15:
            continue
        fit = estimate_fundamental(feats[a]["keypoints"][m[:, 0]], feats[b]["keypoints"][m[:, 1]], 3.0, seed=0)
        if fit.success and fit.inliers.sum() >= 15:
            edges.append((names.index(a), names.index(b), torch.from_numpy(m[fit.inliers])))
    assert len(edges) == 1
    moved = adjust_keypoints([Features.from_mapping(feats[n]) for n in names], edges)
    for n, k in zip(names, moved):
        np.testing.assert_allclose(read_features(files / "same.h5", n)["keypoints"], k.numpy(), atol=1e-5)


def test_adjusted_for_import_moves_only_verified_tracks_and_leaves_the_database(files):
    from silk_keypoints.ecosystem.colmap import adjusted_for_import

    feats = {n: read_features(files / "n.h5", n) for n in (LEFT, RIGHT, "opencv_box.jpg")}
    pairs = read_pairs(files / "pairs.txt")
    matched = [(a, b, read_matches(files / "m.h5", a, b)[0]) for a, b in pairs]
    db = files / "untouched.db"
    assert main(["colmap", "--images", str(IMAGES), "--features", str(files / "n.h5"), "--matches",
                 str(files / "m.h5"), "--database", str(db)]) == 0
    before = db.read_bytes()
    out = adjusted_for_import(feats, matched, db)
    assert db.read_bytes() == before
    shift = np.abs(out[LEFT]["keypoints"] - feats[LEFT]["keypoints"]).max(axis=1)
    assert 0 < shift.max() <= 3.1 and (shift > 0).sum() > 50  # within one cell of fast at the resize
    np.testing.assert_array_equal(out["opencv_box.jpg"]["keypoints"], feats["opencv_box.jpg"]["keypoints"])
    np.testing.assert_array_equal(out[LEFT]["descriptors"], feats[LEFT]["descriptors"])
