"""Per-image .npz export: write / read back, `silk export-npz` from images and from a features.h5."""

from pathlib import Path

import numpy as np
import pytest

from silk_keypoints import SilkError
from silk_keypoints.cli import main
from silk_keypoints.ecosystem.hloc import write_features
from silk_keypoints.ecosystem.npz import NPZ_KEYS, export_npz, npz_path, read_npz, write_npz
from silk_keypoints.model import SiLK
from silk_keypoints.model.zoo import variant_config

IMAGES = Path(__file__).parent / "fixtures" / "images"


def features(n=5, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "keypoints": rng.uniform(0, 30, (n, 2)),
        "scores": rng.uniform(0, 1, n),
        "descriptors": rng.normal(size=(n, 8)),
        "image_size": np.array([40, 30]),
    }


def test_write_read_roundtrip(tmp_path):
    feats = features()
    path = write_npz(tmp_path / "a.jpg.npz", feats)
    with np.load(path) as f:  # a plain numpy file, nothing else needed to read it
        assert sorted(f.files) == sorted(NPZ_KEYS)
        assert f["keypoints"].dtype == np.float32 and f["image_size"].dtype == np.int64
    back = read_npz(path)
    for key in NPZ_KEYS:
        np.testing.assert_allclose(back[key], feats[key], rtol=1e-6)


def test_write_refuses_existing_and_incomplete(tmp_path):
    path = tmp_path / "a.npz"
    path.write_bytes(b"precious")
    with pytest.raises(SilkError, match="exists"):
        write_npz(path, features())
    with pytest.raises(SilkError, match="lack"):
        write_npz(path, {"keypoints": np.zeros((1, 2))}, overwrite=True)
    assert path.read_bytes() == b"precious"


def test_read_bad_files(tmp_path):
    with pytest.raises(SilkError, match="not found"):
        read_npz(tmp_path / "none.npz")
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    with pytest.raises(SilkError, match=r"not an \.npz"):
        read_npz(tmp_path / "bad.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(1))
    with pytest.raises(SilkError, match="not a silk-keypoints features file"):
        read_npz(tmp_path / "other.npz")


def test_export_checks_everything_first(tmp_path):
    names = ["a.jpg", "sub/b.jpg"]
    assert npz_path(tmp_path, "sub/b.jpg") == tmp_path / "sub" / "b.jpg.npz"
    paths = export_npz(names, lambda n: features(seed=len(n)), tmp_path)
    assert paths == [tmp_path / "a.jpg.npz", tmp_path / "sub" / "b.jpg.npz"]
    np.testing.assert_allclose(read_npz(paths[1])["scores"], features(seed=9)["scores"], rtol=1e-6)
    calls = []
    with pytest.raises(SilkError, match="a.jpg.npz exists: pass --overwrite"):
        export_npz(["new.jpg", "a.jpg"], lambda n: calls.append(n), tmp_path)
    assert calls == [] and not (tmp_path / "new.jpg.npz").exists()
    with pytest.raises(SilkError, match="duplicate"):
        export_npz(["x.jpg", "x.jpg"], features, tmp_path)


def test_cli_export_npz(tmp_path, capsys):
    weights = tmp_path / "tiny.safetensors"
    SiLK(variant_config("tiny")).save(weights)
    out = tmp_path / "npz"
    image = IMAGES / "opencv_box.jpg"
    args = [
        "export-npz",
        str(image),
        "--out",
        str(out),
        "--checkpoint",
        str(weights),
        "--max-keypoints",
        "50",
    ]
    assert main(args) == 0
    got = read_npz(out / "opencv_box.jpg.npz")
    assert got["keypoints"].shape == (50, 2) and got["descriptors"].shape[0] == 50
    assert got["image_size"].tolist() == [324, 223]
    before = (out / "opencv_box.jpg.npz").read_bytes()
    assert main(args) == 2
    assert "exist" in capsys.readouterr().err and (out / "opencv_box.jpg.npz").read_bytes() == before

    h5 = write_features(tmp_path / "features.h5", [("a.jpg", features()), ("d/b.jpg", features(seed=1))])
    assert main(["export-npz", "--features", str(h5), "--out", str(out)]) == 0
    np.testing.assert_allclose(
        read_npz(out / "d" / "b.jpg.npz")["keypoints"], features(seed=1)["keypoints"], rtol=1e-6
    )
    assert main(["export-npz", "--out", str(out)]) == 2
    assert "either IMAGE files or --features" in capsys.readouterr().err
    assert main(["export-npz", str(image), str(image), "--out", str(out), "--checkpoint", str(weights)]) == 2
    assert "get the name" in capsys.readouterr().err
