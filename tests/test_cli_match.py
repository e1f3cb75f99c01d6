"""``silk match`` and ``silk demo`` end to end with a small random-weight model, and their error handling."""

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from silk_keypoints import SiLK
from silk_keypoints.cli import main
from silk_keypoints.errors import SilkError
from silk_keypoints.evaluation.testdata import random_homography, random_texture
from silk_keypoints.matching import GATE_MIN_INLIER_RATIO, GATE_MIN_INLIERS
from silk_keypoints.model.zoo import available_pretrained, variant_config
from silk_keypoints.pair import DEMO_PAIR, keypoint_picture_names, match_pair

BOX, SCENE = (str(p) for p in DEMO_PAIR)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    SiLK(variant_config("tiny")).save(path)
    return str(path)


def test_shipped_pair_is_small_and_attributed():
    for path in DEMO_PAIR:
        assert path.stat().st_size <= 100_000 and cv2.imread(str(path)) is not None
    sources = (DEMO_PAIR[0].parent / "SOURCES.txt").read_text()
    assert "box.png" in sources and "box_in_scene.png" in sources and "Apache-2.0 AND BSD-3-Clause" in sources


def test_match_writes_pictures_json_and_summary(tmp_path, checkpoint, capsys):
    out, js, kp = tmp_path / "m.png", tmp_path / "r.json", tmp_path / "kp"
    rc = main(["match", BOX, SCENE, "--checkpoint", checkpoint, "--max-keypoints", "300", "--out", str(out),
               "--json", str(js), "--keypoints-out", str(kp)])
    assert rc == 0
    printed = capsys.readouterr()
    assert "300 keypoints" in printed.out and "matches:" in printed.out and "homography" in printed.out
    assert "extracting keypoints: box.jpg" in printed.err  # progress
    pic = cv2.imread(str(out))
    assert pic.shape[1] == 900 and pic.std() > 10
    assert sorted(p.name for p in kp.iterdir()) == ["box_in_scene_keypoints.png", "box_keypoints.png"]
    data = json.loads(js.read_text())
    assert data["weights"] == f"checkpoint {checkpoint}"
    assert len(data["image0"]["keypoints"]) == 300 and data["image1"]["image_size"] == [512, 384]
    assert len(data["matches"]) == len(data["match_scores"]) == len(data["geometry"]["inliers"])
    assert data["geometry"]["kind"] == "homography" and data["matcher"] == {
        "method": "mnn", "min_inliers": GATE_MIN_INLIERS, "min_inlier_ratio": GATE_MIN_INLIER_RATIO}
    # matched positions, refined below the 4 px cell of the tiny model: each end moves at most half a cell
    k0, m = np.array(data["image0"]["keypoints"]), np.array(data["matches"])
    p0 = np.array(data["match_points0"])
    assert p0.shape == (len(m), 2) and np.abs(p0 - k0[m[:, 0]]).max() <= 2.0 + 1e-3
    assert np.abs(p0 - k0[m[:, 0]]).max() > 0


def test_match_no_refine_keeps_the_keypoints(tmp_path, checkpoint, capsys):
    js = tmp_path / "r.json"
    assert main(["match", BOX, SCENE, "--checkpoint", checkpoint, "--max-keypoints", "200", "--out",
                 str(tmp_path / "m.png"), "--json", str(js), "--no-refine"]) == 0
    data = json.loads(js.read_text())
    assert data["matcher"] == {"method": "mnn", "refine": False, "min_inliers": GATE_MIN_INLIERS,
                               "min_inlier_ratio": GATE_MIN_INLIER_RATIO}
    k1, m = np.array(data["image1"]["keypoints"]), np.array(data["matches"])
    np.testing.assert_allclose(np.array(data["match_points1"]), k1[m[:, 1]], atol=1e-3)


@pytest.mark.parametrize("extra", [["--matcher", "ratio", "--match-threshold", "0.95"],
                                   ["--method", "double-softmax", "--match-threshold", "0.99", "--temperature", "0.2",
                                    "--geometry", "fundamental"],
                                   ["--geometry", "none", "--resize", "200"]])
def test_match_options(tmp_path, checkpoint, capsys, extra):
    js = tmp_path / "r.json"
    rc = main(["match", BOX, SCENE, "--checkpoint", checkpoint, "--max-keypoints", "200", "--out",
               str(tmp_path / "m.png"), "--json", str(js)] + extra)
    assert rc == 0
    data = json.loads(js.read_text())
    deprecated = "--method is deprecated, use --matcher" in capsys.readouterr().err
    assert deprecated == ("--method" in extra)  # the old spelling still works, with a note
    if extra[0] in ("--matcher", "--method"):
        assert data["matcher"]["method"] == extra[1]
        assert data["matcher"].get("ratio_threshold", data["matcher"].get("threshold")) == float(extra[3])
    if "fundamental" in extra:
        assert data["geometry"]["kind"] == "fundamental"
    if "none" in extra:
        assert data["geometry"] is None
        assert max(max(k) for k in data["image1"]["keypoints"]) > 300  # original pixels despite --resize


def test_images_without_keypoints_give_an_empty_result(tmp_path, checkpoint, capsys):
    rc = main(["match", BOX, SCENE, "--checkpoint", checkpoint, "--threshold", "0.99999999", "--out", str(tmp_path / "m.png")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "0 keypoints" in out and "matches: 0" in out and "too few matches: 0 < 4" in out
    assert (tmp_path / "m.png").is_file()


def test_match_pair_library_call(checkpoint):
    model = SiLK.from_checkpoint(checkpoint)
    gray = cv2.imread(BOX, cv2.IMREAD_GRAYSCALE)
    result = match_pair(model, gray, SCENE, method="ratio", matcher_options={"ratio_threshold": 0.9},
                        max_keypoints=100)
    assert result.names == (f"array {gray.shape}", "box_in_scene.jpg")
    assert result.matches.shape[1] == 2 and len(result.scores) == len(result.matches)
    assert result.inliers is not None and len(result.inliers) == len(result.matches)


def test_demo(tmp_path, checkpoint, capsys):
    out = tmp_path / "new" / "demo"
    assert main(["demo", "--checkpoint", checkpoint, "--out", str(out), "--max-keypoints", "500"]) == 0
    printed = capsys.readouterr().out
    assert f"weights: checkpoint {checkpoint}" in printed
    assert f"wrote {out / 'matches.png'}" in printed and f"wrote {out / 'keypoints.png'}" in printed
    for name in ("matches.png", "keypoints.png"):
        pic = cv2.imread(str(out / name))
        assert pic is not None and pic.std() > 10 and pic.shape[1] >= 900


def test_match_and_demo_refuse_existing_outputs_unless_overwrite(tmp_path, checkpoint, capsys):
    out, js, kp = tmp_path / "m.png", tmp_path / "r.json", tmp_path / "kp"
    base = ["match", BOX, SCENE, "--checkpoint", checkpoint, "--max-keypoints", "100", "--out", str(out)]
    kp.mkdir()
    for existing, extra in [(out, []), (js, ["--json", str(js)]), (kp / "box_keypoints.png", ["--keypoints-out", str(kp)])]:
        existing.write_bytes(b"keep")
        assert main([*base, *extra]) == 2
        assert f"{existing} exists: pass --overwrite" in capsys.readouterr().err
        assert existing.read_bytes() == b"keep"
        existing.unlink()
    out.write_bytes(b"old")
    assert main([*base, "--overwrite"]) == 0 and out.read_bytes() != b"old"
    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / "keypoints.png").write_bytes(b"keep")
    args = ["demo", "--checkpoint", checkpoint, "--out", str(demo), "--max-keypoints", "100"]
    assert main(args) == 2
    assert "keypoints.png exists: pass --overwrite" in capsys.readouterr().err
    assert not (demo / "matches.png").exists()
    assert main([*args, "--overwrite"]) == 0 and (demo / "keypoints.png").read_bytes() != b"keep"


def test_demo_output_folder_that_cannot_be_created(tmp_path, checkpoint, capsys):
    (tmp_path / "file").write_text("")
    assert main(["demo", "--checkpoint", checkpoint, "--out", str(tmp_path / "file" / "demo")]) == 2
    assert "cannot create output folder" in capsys.readouterr().err


def test_demo_without_shipped_weights_says_what_to_do(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("silk_keypoints.model.zoo.WEIGHTS_DIR", tmp_path)
    assert main(["demo", "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "no shipped weights" in err and "--checkpoint PATH" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.jpg", SCENE], "image not found: missing.jpg"),
        ([BOX, SCENE, "--out", "{tmp}/no/such/dir/m.png"], "output folder does not exist"),
        ([BOX, SCENE, "--out", "{tmp}/m.gif"], "unsupported picture format"),
        ([BOX, SCENE, "--json", "{tmp}/no/r.json"], "output folder does not exist"),
        ([BOX, SCENE, "--method", "ratio", "--match-threshold", "-1"], "ratio_threshold must be > 0"),
    ],
)
def test_match_errors_are_one_line(tmp_path, checkpoint, capsys, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "m.png")]
    assert main(["match", *args, "--checkpoint", checkpoint]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("silk match: error: ") and message in err[-1]
    assert "Traceback" not in "\n".join(err)
    assert not any(p.suffix in (".png", ".json", ".tmp") for p in tmp_path.rglob("*"))


def test_unreadable_image_through_the_real_command(tmp_path, checkpoint):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    cmd = [sys.executable, "-m", "silk_keypoints.cli", "match", str(bad), SCENE, "--checkpoint", checkpoint,
           "--out", str(tmp_path / "m.png")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2
    assert "silk match: error: cannot decode image" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "m.png").exists()


def test_keypoint_picture_names_do_not_collide(tmp_path, checkpoint):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        folder.mkdir()
        cv2.imwrite(str(folder / "img.png"), cv2.imread(BOX))
    rc = main(["match", str(a / "img.png"), str(b / "img.png"), "--checkpoint", checkpoint, "--max-keypoints", "50",
               "--out", str(tmp_path / "m.png"), "--keypoints-out", str(tmp_path / "kp")])
    assert rc == 0
    assert sorted(p.name for p in (tmp_path / "kp").iterdir()) == ["img_0_keypoints.png", "img_1_keypoints.png"]
    assert keypoint_picture_names(("x/a.jpg", "b.png")) == ["a_keypoints.png", "b_keypoints.png"]


# ------------------------------------------------------------------ the unrelated-pairs gate, turned pairs (shipped tiny)
@pytest.fixture(scope="module")
def generated():
    """A generated texture, the same under a mild homography, the latter turned by 90 degrees, and an unrelated
    texture (320x240 RGB)."""
    rng = np.random.default_rng(0)
    a, other = random_texture((320, 240), rng), random_texture((320, 240), rng)
    warped = cv2.warpPerspective(a, random_homography((320, 240), rng, 0.5), (320, 240))
    return {"a": a, "warped": warped, "turned": np.ascontiguousarray(np.rot90(warped)), "other": other}


@pytest.fixture(scope="module")
def shipped_tiny():
    if "tiny" not in available_pretrained():
        pytest.skip("needs the shipped tiny weights")
    return SiLK.from_pretrained("tiny")


@pytest.fixture(scope="module")
def results(generated, shipped_tiny):
    """match_pair of the generated pairs, with the defaults and without the gate ("plain")."""
    plain = {"min_inliers": 0, "min_inlier_ratio": 0.0}
    a = generated["a"]
    return {
        "related": match_pair(shipped_tiny, a, generated["warped"]),
        "related plain": match_pair(shipped_tiny, a, generated["warped"], **plain),
        "unrelated": match_pair(shipped_tiny, a, generated["other"]),
        "unrelated plain": match_pair(shipped_tiny, a, generated["other"], **plain),
        "related F": match_pair(shipped_tiny, a, generated["warped"], geometry="fundamental"),
        # at 4 px (COLMAP's threshold) chance matches fit a fundamental matrix at ~10 %
        "unrelated F": match_pair(shipped_tiny, a, generated["other"], geometry="fundamental", ransac_threshold=4.0),
        "unrelated F plain": match_pair(shipped_tiny, a, generated["other"], geometry="fundamental",
                                        ransac_threshold=4.0, **plain),
        "turned": match_pair(shipped_tiny, a, generated["turned"]),
        "turned, rotations=4": match_pair(shipped_tiny, a, generated["turned"], rotations=4),
    }


def test_gate_keeps_a_related_pair_and_rejects_an_unrelated_one(results):
    related, plain = results["related"], results["related plain"]
    assert related.geometry.num_inliers >= 0.9 * plain.geometry.num_inliers > 500 and related.warning is None
    unrelated = results["unrelated"]
    assert unrelated.geometry.num_inliers <= 10 and "unrelated" in unrelated.warning
    assert unrelated.matcher == {"method": "mnn", "min_inliers": GATE_MIN_INLIERS,
                                 "min_inlier_ratio": GATE_MIN_INLIER_RATIO}
    assert results["unrelated plain"].geometry.success  # the gate is what rejects it


def test_gate_of_a_fundamental_matrix_asks_for_a_homography_too(results):
    """Chance matches of unrelated images fit an epipolar geometry at a larger share than a homography: the
    gate rejects a fundamental matrix unless a homography also explains the matches."""
    assert results["related F"].geometry.success and results["related F"].warning is None
    gated, plain = results["unrelated F"], results["unrelated F plain"]
    assert plain.geometry.success and plain.geometry.num_inliers >= 0.05 * len(plain.matches)  # passes the count rule
    assert not gated.geometry.success and "no homography explains 15 of them" in gated.geometry.message


def test_weak_model_warning_without_the_pair_gate(results):
    result = results["unrelated plain"]
    assert result.geometry.success and result.geometry.num_inliers < 15
    assert result.warning.startswith(f"only {result.geometry.num_inliers} of {len(result.matches)} matches")


def test_rotations_match_a_turned_pair(results, generated, shipped_tiny):
    upright, turned = results["turned"], results["turned, rotations=4"]
    assert not upright.geometry.success and "--rotations 4" in upright.warning
    assert turned.rotation == 270 and turned.warning is None
    assert turned.geometry.num_inliers >= 0.9 * results["related"].geometry.num_inliers
    # points and keypoints are in the turned file's pixels: the homography maps image 0 onto it
    w, h = turned.features[1].image_size[0].tolist()
    assert (w, h) == (240, 320) and turned.points[1][:, 0].max() <= 239 and turned.points[1][:, 1].max() <= 319
    assert turned.features[1].keypoints[0, :, 0].max() <= 239
    with pytest.raises(SilkError, match="rotations must be one of"):
        match_pair(shipped_tiny, generated["a"], generated["turned"], rotations=3)
    with pytest.raises(SilkError, match="needs a geometry"):
        match_pair(shipped_tiny, generated["a"], generated["turned"], rotations=4, geometry="none")


def test_match_warns_when_the_model_is_meaningless(tmp_path, generated, shipped_tiny, capsys):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    cv2.imwrite(str(a), generated["a"])
    cv2.imwrite(str(b), generated["turned"])
    js = tmp_path / "r.json"
    assert main(["match", str(a), str(b), "--model", "tiny", "--out", str(tmp_path / "m.png"), "--json", str(js)]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "--rotations 4" in warnings[0]
    assert json.loads(js.read_text())["warning"] == warnings[0].removeprefix("warning: ")
    assert main(["match", str(a), str(b), "--model", "tiny", "--out", str(tmp_path / "m.png"), "--json", str(js),
                 "--rotations", "4", "--overwrite", "--max-keypoints", "512"]) == 0
    data = json.loads(js.read_text())
    assert "warning:" not in capsys.readouterr().err and data["warning"] is None
    assert data["image1_rotation_degrees"] == 270 and data["geometry"]["num_inliers"] > 100
    assert len(data["image1"]["keypoints"]) == 512 and data["image1"]["image_size"] == [240, 320]

