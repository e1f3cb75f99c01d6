"""COLMAP database import: schema, +0.5 pixel convention, pair ids, verification, existing databases, a
synthetic scene that pycolmap's incremental mapper reconstructs, and `silk colmap`."""

import sqlite3
from pathlib import Path

import numpy as np
import pycolmap
import pytest

from silk_keypoints import SilkError
from silk_keypoints.cli import main
from silk_keypoints.ecosystem.colmap import (
    CAMERA_MODELS,
    IsolatedVerifier,
    build_colmap_database,
    check_database,
    colmap_camera,
    default_camera,
    image_ids_to_pair_id,
    image_names,
    pair_id_to_image_ids,
    read_inlier_matches,
    to_colmap_keypoints,
    verify_matches,
    write_database,
)
from silk_keypoints.ecosystem.hloc import write_features, write_matches
from silk_keypoints.model import SiLK
from silk_keypoints.model.zoo import variant_config

IMAGES = Path(__file__).parent / "fixtures" / "images"
W, H = 640, 480
CONFIG = pycolmap.TwoViewGeometryConfiguration


def scene(n_views=4, n_points=300, outliers=0, seed=0, planar=False):
    """Views of random 3D points (``planar``: on the plane Z = 8) from cameras on a line, all looking at the
    cloud's centre: features (our pixel convention) and the true matches, keypoints in a different order in
    each image."""
    rng = np.random.default_rng(seed)
    points = rng.uniform([-2, -1.5, 6], [2, 1.5, 10], (n_points, 3))
    if planar:
        points[:, 2] = 8.0
    f = 500.0
    feats, order = {}, []
    for i in range(n_views):
        centre = np.array([1.2 * (i - (n_views - 1) / 2), 0.1 * i, 0])
        yaw = np.arctan2(centre[0], 8.0)  # turn towards (0, 0, 8)
        rot = np.array([[np.cos(yaw), 0, np.sin(yaw)], [0, 1, 0], [-np.sin(yaw), 0, np.cos(yaw)]])
        cam = (points - centre) @ rot.T
        # COLMAP pixel = f * X / Z + principal point (W/2, H/2) in its +0.5 frame; ours is 0.5 less
        colmap_px = f * cam[:, :2] / cam[:, 2:] + [W / 2, H / 2]
        assert (colmap_px > 0).all() and (colmap_px < [W, H]).all()
        perm = rng.permutation(n_points)
        feats[f"im{i}.jpg"] = {
            "keypoints": (colmap_px - 0.5)[perm].astype(np.float32),
            "image_size": np.array([W, H]),
        }
        order.append(np.argsort(perm))  # point p is keypoint order[i][p] of image i
    matches = []
    for i in range(n_views):
        for j in range(i + 1, n_views):
            m = np.stack([order[i], order[j]], 1)
            if outliers:
                m[:outliers, 1] = rng.permutation(m[:outliers, 1])
            matches.append((f"im{i}.jpg", f"im{j}.jpg", m))
    return feats, matches


def read_table(path, sql):
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


# --- small functions --------------------------------------------------------------------------------------
def test_pair_ids_are_colmaps():
    assert image_ids_to_pair_id(1, 2) == image_ids_to_pair_id(2, 1) == 2147483647 + 2
    assert pair_id_to_image_ids(image_ids_to_pair_id(7, 3)) == (3, 7)


def test_keypoints_get_colmaps_half_pixel():
    ours = np.array([[0.0, 0.0], [10.0, 5.5]])
    out = to_colmap_keypoints(ours)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, [[0.5, 0.5], [10.5, 6.0]])


def test_default_camera_is_colmaps():
    for name, (model_id, n) in {
        "SIMPLE_PINHOLE": (0, 3),
        "PINHOLE": (1, 4),
        "SIMPLE_RADIAL": (2, 4),
        "RADIAL": (3, 5),
        "OPENCV": (4, 8),
    }.items():
        model, params = default_camera(name, 640, 480)
        assert (model, len(params)) == (model_id, n) == (CAMERA_MODELS[name], n)
        assert int(getattr(pycolmap.CameraModelId, name)) == model_id
        assert params[0] == 768.0 and params.dtype == np.float64
    np.testing.assert_array_equal(default_camera("SIMPLE_RADIAL", 640, 480)[1], [768.0, 320.0, 240.0, 0.0])
    with pytest.raises(SilkError, match="unknown camera model"):
        default_camera("FISHEYE9", 1, 1)


def test_colmap_camera_from_a_cameras_row():
    model, params = default_camera("SIMPLE_RADIAL", W, H)
    cam = colmap_camera(model, W, H, params, prior_focal_length=True)
    assert cam.model == pycolmap.CameraModelId.SIMPLE_RADIAL and (cam.width, cam.height) == (W, H)
    np.testing.assert_array_equal(cam.params, params)
    assert cam.has_prior_focal_length and not colmap_camera(model, W, H, params).has_prior_focal_length


def test_verify_matches_is_colmaps_and_rejects_outliers():
    feats, matches = scene(n_views=2, outliers=60)
    k0, k1 = feats["im0.jpg"]["keypoints"], feats["im1.jpg"]["keypoints"]
    model, params = default_camera("SIMPLE_RADIAL", W, H)
    cam = colmap_camera(model, W, H, params)
    geometry = verify_matches(cam, cam, k0, k1, matches[0][2])
    assert geometry.config == CONFIG.UNCALIBRATED  # no prior focal length: a fundamental matrix
    inliers = geometry.inlier_matches
    truth = {tuple(m) for m in scene(n_views=2)[1][0][2]}
    true_kept = sum(tuple(m) in truth for m in inliers)
    assert true_kept >= 235 and len(inliers) - true_kept <= 10  # a few outliers lie near their epipolar line
    x0 = np.c_[k0[inliers[:, 0]] + 0.5, np.ones(len(inliers))]  # F is in COLMAP's pixels
    x1 = np.c_[k1[inliers[:, 1]] + 0.5, np.ones(len(inliers))]
    lines = x0 @ geometry.F.T  # epipolar lines in image 1
    dist = np.abs(np.sum(lines * x1, 1)) / np.linalg.norm(lines[:, :2], axis=1)
    is_true = np.array([tuple(m) in truth for m in inliers])
    assert dist[is_true].max() < 1.0  # x1^T F x0 = 0 for the true matches, to COLMAP's fit (4 px threshold)
    few = verify_matches(cam, cam, k0, k1, matches[0][2][:10])
    assert len(few.inlier_matches) == 0 and few.config in (CONFIG.DEGENERATE, CONFIG.UNDEFINED)


def test_two_cameras_of_a_plane_get_colmaps_planar_label(tmp_path):
    """The case a hand-written F-RANSAC labels UNCALIBRATED: COLMAP's verifier sees the homography."""
    feats, matches = scene(n_views=2, outliers=20, planar=True)
    db = tmp_path / "db.db"
    assert write_database(db, feats, matches, camera_model="PINHOLE")["verified_pairs"] == 1
    database = pycolmap.Database.open(str(db))
    try:
        assert len(database.read_all_cameras()) == 2
        geometry = database.read_two_view_geometry(1, 2)
        assert geometry.config == CONFIG.PLANAR_OR_PANORAMIC and len(geometry.inlier_matches) >= 270
        x0 = np.c_[feats["im0.jpg"]["keypoints"] + 0.5, np.ones(300)]
        x1 = np.c_[feats["im1.jpg"]["keypoints"] + 0.5, np.ones(300)]
        m = scene(n_views=2, planar=True)[1][0][2]
        mapped = x0[m[:, 0]] @ geometry.H.T  # H read back as COLMAP stores it (row-major)
        np.testing.assert_allclose(mapped[:, :2] / mapped[:, 2:], x1[m[:, 1], :2], atol=0.01)
    finally:
        database.close()
    conn = sqlite3.connect(db)  # with prior focal lengths COLMAP verifies calibrated (an E besides H)
    conn.execute("UPDATE cameras SET prior_focal_length = 1")
    conn.commit()
    conn.close()
    write_database(db, feats, matches, overwrite=True)
    ((config, rows, e),) = read_table(db, "SELECT config, rows, E FROM two_view_geometries")
    assert config == int(CONFIG.PLANAR_OR_PANORAMIC) and rows >= 270 and len(e) == 72


# --- verification in a child process ------------------------------------------------------------------------
# pycolmap 4.2 can segfault inside its verification (docs/ecosystem.md). A sitecustomize on the child's path
# makes it crash on demand: on a pair of exactly 33 matches, and on seed 5 or a random seed.
CRASHING_PYCOLMAP = '''
import os, signal
import pycolmap
_verify = pycolmap.estimate_two_view_geometry
def estimate_two_view_geometry(camera0, p0, camera1, p1, matches, options):
    if len(matches) == 33 and options.ransac.random_seed in (-1, 5):
        os.kill(os.getpid(), signal.SIGSEGV)
    return _verify(camera0, p0, camera1, p1, matches, options)
pycolmap.estimate_two_view_geometry = estimate_two_view_geometry
'''


@pytest.fixture
def crashing_pycolmap(tmp_path, monkeypatch):
    (tmp_path / "sitecustomize.py").write_text(CRASHING_PYCOLMAP)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))


def test_isolated_verifier_gives_pycolmaps_geometry():
    feats, matches = scene(n_views=2, outliers=60)
    k0, k1 = feats["im0.jpg"]["keypoints"], feats["im1.jpg"]["keypoints"]
    model, params = default_camera("SIMPLE_RADIAL", W, H)
    cam = colmap_camera(model, W, H, params)
    options = pycolmap.TwoViewGeometryOptions()
    options.ransac.random_seed = 3
    theirs = verify_matches(cam, cam, k0, k1, matches[0][2], options)
    with IsolatedVerifier(options) as verify:
        ours = verify(cam, cam, k0, k1, matches[0][2])
        again = verify(cam, cam, k0, k1, matches[0][2][:10])  # the same child answers the next pair
    assert ours.config == theirs.config and not verify.crashes
    np.testing.assert_array_equal(ours.inlier_matches, theirs.inlier_matches)
    np.testing.assert_allclose(ours.F, theirs.F)
    assert len(again.inlier_matches) == 0


def test_a_crash_in_pycolmap_costs_one_try_of_one_pair(crashing_pycolmap):
    feats, matches = scene(n_views=2)
    k0, k1 = feats["im0.jpg"]["keypoints"], feats["im1.jpg"]["keypoints"]
    model, params = default_camera("SIMPLE_RADIAL", W, H)
    cam = colmap_camera(model, W, H, params)
    options = pycolmap.TwoViewGeometryOptions()
    options.ransac.random_seed = 5
    with IsolatedVerifier(options) as verify:
        retried = verify(cam, cam, k0, k1, matches[0][2][:33], pair="(a, b)")  # seed 5 crashes, seed 6 verifies
        assert retried is not None and len(retried.inlier_matches) == 33
        assert verify.crashes == ["(a, b): pycolmap's verification crashed (SIGSEGV, RANSAC seed 5)"]
        assert len(verify(cam, cam, k0, k1, matches[0][2]).inlier_matches) == 300  # a new child goes on
    with IsolatedVerifier(retries=2) as verify:  # random seeds: this fake crashes on every one
        assert verify(cam, cam, k0, k1, matches[0][2][:33]) is None
        assert len(verify.crashes) == 3


def test_write_database_survives_a_crashing_verification(tmp_path, crashing_pycolmap):
    feats, matches = scene(n_views=3)
    matches[1] = (matches[1][0], matches[1][1], matches[1][2][:33])
    db = tmp_path / "db.db"
    with pytest.warns(UserWarning, match="crashed"):
        counts = write_database(db, feats, matches)
    assert counts == {"images": 3, "pairs": 3, "verified_pairs": 2, "unverified_pairs": 1}
    assert len(read_table(db, "SELECT pair_id FROM matches")) == 3  # the raw matches of all three are there
    assert len(read_table(db, "SELECT pair_id FROM two_view_geometries")) == 2
    assert not list(tmp_path.glob("*.tmp*")) and sorted(p.name for p in tmp_path.iterdir()) == ["db.db",
                                                                                                "sitecustomize.py"]


# --- write_database -----------------------------------------------------------------------------------------
def test_new_database_read_by_pycolmap(tmp_path):
    feats, matches = scene(n_views=3, outliers=30)
    matches[0] = (
        matches[0][1],
        matches[0][0],
        matches[0][2][:, ::-1],
    )  # given as (im1, im0): stored by id order
    db = tmp_path / "db.db"
    counts = write_database(db, feats, matches)
    assert counts == {"images": 3, "pairs": 3, "verified_pairs": 3, "unverified_pairs": 0}
    tables = {r[0] for r in read_table(db, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"cameras", "images", "keypoints", "descriptors", "matches", "two_view_geometries"} <= tables
    rows, cols = read_table(db, "SELECT rows, cols FROM keypoints WHERE image_id = 1")[0]
    assert (rows, cols) == (300, 2)

    database = pycolmap.Database.open(str(db))
    try:
        cams = {c.camera_id: c for c in database.read_all_cameras()}
        images = {im.name: im for im in database.read_all_images()}
        assert sorted(images) == ["im0.jpg", "im1.jpg", "im2.jpg"] and len(cams) == 3
        cam = cams[images["im0.jpg"].camera_id]
        assert (cam.model, cam.width, cam.height) == (pycolmap.CameraModelId.SIMPLE_RADIAL, W, H)
        np.testing.assert_allclose(cam.params, [768, 320, 240, 0])
        for name, im in images.items():
            np.testing.assert_allclose(database.read_keypoints(im.image_id), feats[name]["keypoints"] + 0.5)
        id0, id1 = images["im0.jpg"].image_id, images["im1.jpg"].image_id
        assert id0 < id1
        np.testing.assert_array_equal(database.read_matches(id0, id1), scene(n_views=3, outliers=30)[1][0][2])
        geometry = database.read_two_view_geometry(id0, id1)
        assert geometry.config == CONFIG.UNCALIBRATED and 250 <= len(geometry.inlier_matches) <= 300
    finally:
        database.close()


def test_mapper_reconstructs_the_imported_scene(tmp_path):
    feats, matches = scene(n_views=4, outliers=40, seed=1)
    db = tmp_path / "db.db"
    write_database(db, feats, matches, camera_model="SIMPLE_PINHOLE", single_camera=True)
    assert read_table(db, "SELECT COUNT(*) FROM cameras")[0][0] == 1
    out = tmp_path / "sparse"
    out.mkdir()
    options = pycolmap.IncrementalPipelineOptions()
    options.num_threads = 1
    recs = pycolmap.incremental_mapping(str(db), str(tmp_path), str(out), options)
    assert len(recs) == 1
    rec = recs[0]
    assert rec.num_reg_images() == 4 and rec.num_points3D() >= 250
    assert rec.compute_mean_reprojection_error() < 0.1  # exact projections
    assert rec.cameras[1].params[0] == pytest.approx(500, rel=0.02)  # the true focal, from the prior 768


def test_no_verify_writes_matches_only_for_matches_importer(tmp_path):
    feats, matches = scene(n_views=2, outliers=30)
    db = tmp_path / "db.db"
    assert write_database(db, feats, matches, verify=False)["verified_pairs"] == 0
    assert read_table(db, "SELECT rows FROM matches") == [(300,)]
    assert read_table(db, "SELECT COUNT(*) FROM two_view_geometries") == [(0,)]
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("im0.jpg im1.jpg\n")
    pycolmap.verify_matches(str(db), str(pairs))  # what `colmap matches_importer` does next
    ((config, rows),) = read_table(db, "SELECT config, rows FROM two_view_geometries")
    assert config == int(CONFIG.UNCALIBRATED) and 250 <= rows <= 300


def test_verify_options_reach_colmap(tmp_path):
    feats, matches = scene(n_views=2, outliers=30)
    options = pycolmap.TwoViewGeometryOptions()
    options.min_num_inliers = 400  # more than the pair has
    counts = write_database(tmp_path / "db.db", feats, matches, verify_options=options)
    assert counts["verified_pairs"] == 0


def test_existing_database_is_added_to_and_guarded(tmp_path):
    feats, matches = scene(n_views=3)
    db = tmp_path / "db.db"
    write_database(db, {k: feats[k] for k in ("im0.jpg", "im1.jpg")}, matches[:1])
    before = db.read_bytes()
    with pytest.raises(SilkError, match=r"already has keypoints for 2 of these images \(e.g. im0.jpg\)"):
        write_database(db, feats, matches)
    assert db.read_bytes() == before
    assert check_database(db, dict.fromkeys(feats), overwrite=True) == {"im0.jpg": 1, "im1.jpg": 2}

    fewer = {k: {**v, "keypoints": v["keypoints"][:200]} for k, v in feats.items()}
    few_matches = [(a, b, m[(m < 200).all(1)]) for a, b, m in matches]
    write_database(
        db, {"im1.jpg": fewer["im1.jpg"], "im2.jpg": fewer["im2.jpg"]}, few_matches[2:], overwrite=True
    )
    database = pycolmap.Database.open(str(db))
    try:
        ids = {im.name: im.image_id for im in database.read_all_images()}
        assert ids == {"im0.jpg": 1, "im1.jpg": 2, "im2.jpg": 3}  # kept ids, new image appended
        assert len(database.read_keypoints(1)) == 300 and len(database.read_keypoints(2)) == 200
        assert not database.exists_matches(1, 2)  # im1's keypoints changed: its old matches are gone
        assert database.exists_matches(2, 3) and database.num_cameras() == 3
    finally:
        database.close()


def test_different_cameras_are_refused_and_file_untouched(tmp_path):
    db = tmp_path / "db.db"
    database = pycolmap.Database.open(str(db))  # a COLMAP-made database (current schema)
    try:
        cam_id = database.write_camera(
            pycolmap.Camera.create_from_model_id(1, pycolmap.CameraModelId.PINHOLE, 500.0, 800, 600)
        )
        database.write_image(pycolmap.Image(name="im0.jpg", camera_id=cam_id))
    finally:
        database.close()
    before = db.read_bytes()
    feats, matches = scene(n_views=2)
    with pytest.raises(
        SilkError, match=r"different cameras: im0.jpg is 640x480 but its camera 1 in the database is 800x600"
    ):
        write_database(db, feats, matches, overwrite=True)
    assert db.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db.db"]

    feats["im0.jpg"]["image_size"] = np.array([800, 600])  # now it fits: COLMAP's own camera is kept
    write_database(db, feats, matches)
    database = pycolmap.Database.open(str(db))
    try:
        cams = {c.camera_id: c for c in database.read_all_cameras()}
        assert cams[1].model == pycolmap.CameraModelId.PINHOLE and cams[1].width == 800
        assert database.num_keypoints_for_image(1) == 300 and database.exists_two_view_geometry(1, 2)
    finally:
        database.close()


def test_bad_databases_and_inputs(tmp_path):
    feats, matches = scene(n_views=2)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(SilkError, match="COLMAP database"):
        write_database(garbage, feats, matches)
    empty = tmp_path / "other.db"
    sqlite3.connect(empty).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(SilkError, match="is not a COLMAP database"):
        write_database(empty, feats, matches)
    db = tmp_path / "db.db"
    write_database(db, {"im0.jpg": feats["im0.jpg"]}, [])
    Path(f"{db}-wal").write_bytes(b"")
    with pytest.raises(SilkError, match="open in another program"):
        write_database(db, feats, matches, overwrite=True)
    Path(f"{db}-wal").unlink()
    sqlite3.connect(db).executescript(
        "CREATE TABLE frames (frame_id INTEGER); INSERT INTO frames VALUES (1);"
    ).close()
    with pytest.raises(SilkError, match="rigs and frames but not for 1 of these images"):
        write_database(db, feats, matches, overwrite=True)

    new = tmp_path / "new.db"
    bad = [("im0.jpg", "im1.jpg", np.array([[0, 300]]))]
    with pytest.raises(SilkError, match=r"refer to keypoints that im1\.jpg does not have"):
        write_database(new, feats, bad)
    with pytest.raises(SilkError, match="has no features"):
        write_database(new, feats, [("im0.jpg", "x.jpg", np.zeros((0, 2)))])
    with pytest.raises(SilkError, match="given twice"):
        write_database(new, feats, [matches[0], (matches[0][1], matches[0][0], matches[0][2][:, ::-1])])
    with pytest.raises(SilkError, match="unknown camera model"):
        write_database(new, feats, matches, camera_model="nope")
    sizes = {**feats, "im1.jpg": {**feats["im1.jpg"], "image_size": np.array([10, 10])}}
    with pytest.raises(SilkError, match="one size"):
        write_database(new, sizes, matches, single_camera=True)
    assert not new.exists() and sorted(p.name for p in tmp_path.iterdir()) == [
        "db.db",
        "garbage.db",
        "other.db",
    ]


# --- silk colmap -------------------------------------------------------------------------------------------
def test_cli_colmap_from_h5_files(tmp_path, capsys):
    feats, matches = scene(n_views=3)
    rng = np.random.default_rng(0)
    for f in feats.values():
        f["scores"] = np.ones(len(f["keypoints"]), np.float32)
        f["descriptors"] = rng.normal(size=(len(f["keypoints"]), 8)).astype(np.float32)
    h5 = write_features(tmp_path / "features.h5", feats.items())
    mh5 = write_matches(
        tmp_path / "matches.h5", [(a, b, _matches0(m, 300), np.ones(300)) for a, b, m in matches]
    )
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("im0.jpg im1.jpg\nim2.jpg im1.jpg\n")
    db = tmp_path / "db.db"
    args = [
        "colmap",
        "--features",
        str(h5),
        "--matches",
        str(mh5),
        "--database",
        str(db),
        "--pairs",
        str(pairs),
    ]
    assert main(args) == 0
    assert "wrote 3 images, matches of 2 pairs (2 with two-view geometry)" in capsys.readouterr().out
    database = pycolmap.Database.open(str(db))
    try:
        assert database.num_matched_image_pairs() == 2 and database.num_verified_image_pairs() == 2
        expected = matches[2][2][
            np.argsort(matches[2][2][:, 0])
        ]  # matches.h5 lists them by keypoint of image 0
        np.testing.assert_array_equal(database.read_matches(2, 3), expected)
    finally:
        database.close()
    raw = tmp_path / "raw.db"
    assert main([*args[:-3], str(raw), *args[-2:], "--no-verify"]) == 0
    assert "matches of 2 pairs (not verified)" in capsys.readouterr().out
    assert read_table(raw, "SELECT COUNT(*) FROM matches") == [(2,)]
    assert read_table(raw, "SELECT COUNT(*) FROM two_view_geometries") == [(0,)]
    before = db.read_bytes()
    assert main(args) == 2
    assert "already has keypoints" in capsys.readouterr().err and db.read_bytes() == before
    pairs.write_text("im0.jpg im9.jpg\n")
    assert main([*args, "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "names 1 image(s) not in" in err and "im9.jpg" in err
    assert db.read_bytes() == before
    assert main(["colmap", "--database", str(db)]) == 2
    assert "give the images" in capsys.readouterr().err
    assert main(["colmap", "--images", str(IMAGES), "--matches", str(mh5), "--database", str(db)]) == 2
    assert "--matches needs the --features" in capsys.readouterr().err


def test_build_colmap_database_extracts_and_matches(tmp_path):
    names = image_names(IMAGES)
    assert names == sorted(names) and all("/" not in n for n in names)
    model = SiLK.from_pretrained("tiny")
    counts = build_colmap_database(tmp_path / "a.db", IMAGES, model=model, extract_options={"max_keypoints": 1024})
    assert counts["images"] == len(names) and counts["pairs"] == len(names) * (len(names) - 1) // 2
    # the unrelated-pairs gate: the box and either view of the other scene get no matches; the two views do
    assert counts["rejected_pairs"] == 2 and counts["verified_pairs"] == 1
    assert read_table(tmp_path / "a.db", "SELECT COUNT(*) FROM matches") == [(1,)]
    with pytest.raises(SilkError, match="a model is needed"):
        build_colmap_database(tmp_path / "b.db", IMAGES)
    with pytest.raises(SilkError, match="no images in"):
        image_names(tmp_path)
    assert not (tmp_path / "b.db").exists()


def _keypoints(db):
    return {name: np.frombuffer(data, dtype=np.float32).reshape(rows, 2) for name, rows, data in read_table(
        db, "SELECT images.name, rows, data FROM keypoints JOIN images ON images.image_id = keypoints.image_id")}


def test_build_colmap_database_adjusts_keypoints_on_verified_tracks(tmp_path):
    model = SiLK.from_pretrained("fast")
    options = {"max_keypoints": 512, "resize": 400}
    build_colmap_database(tmp_path / "plain.db", IMAGES, model=model, extract_options=options)
    build_colmap_database(tmp_path / "adjusted.db", IMAGES, model=model, extract_options=options, adjust=True)
    plain, adjusted = _keypoints(tmp_path / "plain.db"), _keypoints(tmp_path / "adjusted.db")
    assert set(read_inlier_matches(tmp_path / "adjusted.db")) == {("opencv_left.jpg", "opencv_right.jpg")}
    (pair, inliers), = read_inlier_matches(tmp_path / "plain.db").items()
    for k, name in enumerate(pair):
        shift = np.abs(adjusted[name] - plain[name]).max(axis=1)
        matched = np.zeros(len(shift), dtype=bool)
        matched[inliers[:, k]] = True
        assert shift.max() <= 3.1  # at most one cell of fast (3.06 px at the resize)
        assert (shift[~matched] == 0).all() and (shift[matched] > 0).mean() > 0.3
    assert (adjusted["opencv_box.jpg"] == plain["opencv_box.jpg"]).all()  # no verified pair: unchanged
    with pytest.raises(SilkError, match="leave out --no-verify"):
        build_colmap_database(tmp_path / "c.db", IMAGES, model=model, adjust=True, verify=False)
    assert not (tmp_path / "c.db").exists()


def _matches0(m, n0):
    out = np.full(n0, -1)
    out[m[:, 0]] = m[:, 1]
    return out


def test_cli_colmap_extracts_and_matches_shipped_images(tmp_path, capsys):
    weights = tmp_path / "tiny.safetensors"
    SiLK(variant_config("tiny")).save(weights)
    db = tmp_path / "db.db"
    assert (
        main(
            [
                "colmap",
                "--images",
                str(IMAGES),
                "--database",
                str(db),
                "--checkpoint",
                str(weights),
                "--max-keypoints",
                "200",
                "--resize",
                "256",
                "--camera-model",
                "PINHOLE",
                "--no-gate",  # random weights: no pair would pass the unrelated-pairs gate
            ]
        )
        == 0
    )
    assert "wrote 3 images, matches of 3 pairs" in capsys.readouterr().out
    database = pycolmap.Database.open(str(db))
    try:
        images = {im.name: im for im in database.read_all_images()}
        assert sorted(images) == ["opencv_box.jpg", "opencv_left.jpg", "opencv_right.jpg"]
        cams = {c.camera_id: c for c in database.read_all_cameras()}
        left = images["opencv_left.jpg"]
        assert (cams[left.camera_id].width, cams[left.camera_id].height) == (612, 459)
        k = database.read_keypoints(left.image_id)
        assert len(k) == 200 and k.min() >= 0.5 and k[:, 0].max() <= 611.5 and k[:, 1].max() <= 458.5
        assert database.num_matched_image_pairs() == 3
    finally:
        database.close()
