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
from silk_keypoints.matching import GATE_MAX_DISTANCE, GATE_MIN_INLIERS
from silk_keypoints.model.zoo import variant_config
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
        "method": "mnn", "max_distance": GATE_MAX_DISTANCE, "min_inliers": GATE_MIN_INLIERS}
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
    assert data["matcher"] == {"method": "mnn", "refine": False, "max_distance": GATE_MAX_DISTANCE,
                               "min_inliers": GATE_MIN_INLIERS}
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
