"""`silk extract`: hloc features.h5 from image files."""

import cv2
import h5py
import numpy as np
import pytest

from silk_keypoints.cli import main
from silk_keypoints.model import SiLK
from silk_keypoints.model.zoo import variant_config


@pytest.fixture
def weights(tmp_path):
    path = tmp_path / "tiny.safetensors"
    SiLK(variant_config("tiny")).save(path)
    return path


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(1)
    paths = []
    for i, size in enumerate([(64, 80), (70, 50)]):
        p = tmp_path / "imgs" / f"im{i}.png"
        p.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(p), rng.integers(0, 255, size, dtype=np.uint8))
        paths.append(p)
    return paths


def test_extract_writes_hloc_layout(tmp_path, weights, images):
    out = tmp_path / "features.h5"
    assert main(["extract", *map(str, images), "--out", str(out), "--checkpoint", str(weights), "--max-keypoints", "25"]) == 0
    with h5py.File(out, "r") as f:
        assert sorted(f) == ["im0.png", "im1.png"]
        g = f["im1.png"]
        assert g["keypoints"].shape == (25, 2) and g["scores"].shape == (25,)
        assert g["descriptors"].shape == (64, 25)
        assert g["image_size"][()].tolist() == [50, 70]


def test_extract_refuses_a_file_it_cannot_resume(tmp_path, weights, images, capsys):
    out = tmp_path / "features.h5"
    out.write_bytes(b"precious")
    assert main(["extract", str(images[0]), "--out", str(out), "--checkpoint", str(weights)]) == 2
    assert "cannot resume" in capsys.readouterr().err and out.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["features.h5", "imgs", "tiny.safetensors"])


def test_help_texts(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "extract" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["extract", "--help"])
    assert "hloc" in capsys.readouterr().out


def test_extract_a_folder_and_an_image_list(tmp_path, weights, images, capsys):
    folder_out, list_out = tmp_path / "folder.h5", tmp_path / "list.h5"
    sub = images[0].parent / "sub"
    sub.mkdir()
    cv2.imwrite(str(sub / "im2.png"), np.full((60, 60), 128, np.uint8))
    args = ["--checkpoint", str(weights), "--max-keypoints", "10"]
    assert main(["extract", str(images[0].parent), "--out", str(folder_out), *args]) == 0
    with h5py.File(folder_out, "r") as f:
        assert sorted(f) == ["im0.png", "im1.png", "sub"] and list(f["sub"]) == ["im2.png"]
    (tmp_path / "list.txt").write_text("imgs/im1.png\nimgs/sub/im2.png\n")
    assert main(["extract", "--image-list", str(tmp_path / "list.txt"), "--root", str(tmp_path),
                 "--out", str(list_out), *args]) == 0
    with h5py.File(list_out, "r") as f:
        assert sorted(f) == ["imgs"] and sorted(f["imgs"]) == ["im1.png", "sub"]
    capsys.readouterr()
    assert main(["extract", str(tmp_path / "nothing"), "--out", str(tmp_path / "x.h5"), *args]) == 2
    assert "image not found" in capsys.readouterr().err
