"""ONNX export and onnxruntime runner: same outputs as torch, dynamic shapes, clear errors, atomic writes."""

import os

import numpy as np
import pytest
import torch
from conftest import FIXTURES
from test_fused import make_model, same_keypoints

from silk_keypoints import SiLK, SiLKConfig, SilkError, load_image
from silk_keypoints.cli import main
from silk_keypoints.ecosystem.onnx import OnnxSiLK, compare_with_torch, export_onnx, supported_opsets
from silk_keypoints.model.zoo import available_pretrained, variant_config

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.fixture(scope="module")
def parity_onnx(parity_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "vgg4.onnx"
    export_onnx(parity_model, path, dynamic=True, example_size=(64, 80))
    return OnnxSiLK(path, threads=2)


@pytest.fixture(scope="module")
def tiny():
    """The shipped tiny weights (real value ranges: one export serves every tiny test), else random ones."""
    return SiLK.from_pretrained("tiny") if "tiny" in available_pretrained() else make_model(variant_config("tiny"))


@pytest.fixture(scope="module")
def tiny_onnx_path(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    return export_onnx(tiny, path, dynamic=True, example_size=(64, 80))


@pytest.fixture(scope="module")
def tiny_onnx(tiny_onnx_path):
    return OnnxSiLK(tiny_onnx_path, threads=2)


def test_dense_outputs_equal_torch_on_parity_fixture(parity_model, parity_onnx, parity_ref):
    image = torch.from_numpy(parity_ref["image"])
    dense = parity_onnx.dense(image.numpy())
    names = ("logits", "probability", "dense_descriptors")
    ours = (
        dense["logits"],
        dense["probability"],
        dense["descriptors"].reshape(1, 128, -1).transpose(0, 2, 1) * 1.41,
    )
    with torch.inference_mode():
        exact = parity_model(image, names)
        fast = parity_model(image, names, exact=False)
    # within 1e-4 of the exact path (the original's numbers) and within 2e-4 of the folded network it runs
    for name, a, b, c in zip(names, ours, exact, fast):
        np.testing.assert_allclose(a, b.numpy(), atol=1e-4, err_msg=name)
        np.testing.assert_allclose(a, c.numpy(), atol=2e-4, err_msg=name)
    np.testing.assert_allclose(dense["logits"], parity_ref["logits"], atol=1e-4)


def assert_same_extraction(a: dict, b: dict, tie_tol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for key in ("image_size", "keypoint_mask"):
        torch.testing.assert_close(a[key], b[key])
    for i in range(a["keypoints"].shape[0]):
        rows = [
            torch.cat([o["keypoints"][i], o["keypoint_scores"][i, :, None]], 1)[o["keypoint_mask"][i]].numpy()
            for o in (a, b)
        ]
        pairs = same_keypoints(rows[0], rows[1], tie_tol)
        np.testing.assert_allclose(rows[0][pairs[:, 0], 2], rows[1][pairs[:, 1], 2], atol=1e-4)
        desc = [o["descriptors"][i][o["keypoint_mask"][i]].numpy() for o in (a, b)]
        np.testing.assert_allclose(desc[0][pairs[:, 0]], desc[1][pairs[:, 1]], atol=1e-4)
        if "neighbour_descriptors" in a:
            around = [o["neighbour_descriptors"][i][o["keypoint_mask"][i]].numpy() for o in (a, b)]
            np.testing.assert_allclose(around[0][pairs[:, 0]], around[1][pairs[:, 1]], atol=1e-4)
            torch.testing.assert_close(a["neighbour_spacing"], b["neighbour_spacing"])


def test_extract_equals_torch_on_parity_fixture(parity_model, parity_onnx, parity_ref):
    image = torch.from_numpy(parity_ref["image"])
    for k in (501, 10001):
        ours = parity_onnx.extract(image, max_keypoints=k)
        assert ours["keypoints"].shape == (1, k, 2) and ours["descriptors"].shape == (1, k, 128)
        assert_same_extraction(ours, parity_model.extract(image, max_keypoints=k), tie_tol=5e-5)


def test_trained_tiny_model(tiny, tiny_onnx):
    if "tiny" not in available_pretrained():
        pytest.skip("no shipped tiny weights")
    image = load_image(FIXTURES / "images" / "opencv_left.jpg", gray=True)
    ours = tiny_onnx.extract(image, max_keypoints=1000, neighbours=True)
    assert_same_extraction(ours, tiny.extract(image, max_keypoints=1000, neighbours=True))
    assert_same_extraction(ours, tiny.extract(image, max_keypoints=1000, exact=True, neighbours=True))


def test_one_file_two_sizes_and_a_batch(tiny, tiny_onnx):
    assert tiny_onnx.input_shape[2:] == ["height", "width"]
    for shape in [(1, 1, 64, 80), (2, 1, 97, 121)]:
        x = torch.rand(*shape)
        ours = tiny_onnx.extract(x, max_keypoints=150, nms_radius=1, neighbours=True)
        hf, wf = tiny.output_shape(*shape[2:])
        assert tiny_onnx.dense(x.numpy())["descriptors"].shape == (shape[0], 64, hf, wf)
        assert_same_extraction(ours, tiny.extract(x, max_keypoints=150, nms_radius=1, neighbours=True))


def test_large_batches_run_in_chunks(tiny_onnx, monkeypatch):
    from silk_keypoints.ecosystem import onnx as onnx_export

    x = torch.rand(3, 1, 48, 64)
    whole = tiny_onnx.extract(x, max_keypoints=30)
    monkeypatch.setattr(onnx_export, "RUN_PIXELS", 1)  # one image per onnxruntime run
    for key, value in tiny_onnx.extract(x, max_keypoints=30).items():
        torch.testing.assert_close(value, whole[key])


def test_numpy_and_uint8_images(tiny, tiny_onnx):
    image = (np.random.default_rng(0).random((70, 90)) * 255).astype(np.uint8)
    assert_same_extraction(tiny_onnx.extract(image, max_keypoints=60), tiny.extract(image, max_keypoints=60))


def test_compare_with_torch_is_small_for_a_good_export(tiny, tiny_onnx_path):
    assert compare_with_torch(tiny, tiny_onnx_path, (48, 64)) < 1e-4


# -------------------------------------------------------------------------------- CLI and bad input
@pytest.fixture
def tiny_weights(tmp_path, tiny):
    path = tmp_path / "tiny.safetensors"
    tiny.save(path)
    return path


def test_cli_export(tmp_path, tiny, tiny_weights, capsys):
    out = tmp_path / "tiny.onnx"
    assert (
        main(
            [
                "export",
                "onnx",
                "--checkpoint",
                str(tiny_weights),
                "--out",
                str(out),
                "--height",
                "64",
                "--width",
                "80",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "onnxruntime vs torch: max |diff|" in printed and "dynamic batch x height x width" in printed
    runner = OnnxSiLK(out)
    x = torch.rand(1, 1, 72, 88)
    assert_same_extraction(runner.extract(x, max_keypoints=40), tiny.extract(x, max_keypoints=40))
    assert main(["export", "onnx", "--checkpoint", str(tiny_weights), "--out", str(out)]) == 2
    assert "exists: pass --overwrite" in capsys.readouterr().err
    static = tmp_path / "static.onnx"  # a fixed graph, with a newer opset than the default
    assert main(["export", "onnx", "--checkpoint", str(tiny_weights), "--out", str(static), "--static", "64", "80",
                 "--opset", "20"]) == 0
    assert "fixed 1x64x80" in capsys.readouterr().out
    import onnx
    import onnxruntime

    assert [o.version for o in onnx.load(str(static)).opset_import if o.domain == ""] == [20]
    shapes = [onnxruntime.InferenceSession(str(f), providers=["CPUExecutionProvider"]).get_inputs()[0].shape
              for f in (out, static)]
    assert shapes[1] == [1, 1, 64, 80] and all(isinstance(d, str) for d in [shapes[0][0], *shapes[0][2:]])
    fixed = OnnxSiLK(static)
    assert fixed.extract(torch.rand(1, 1, 64, 80), max_keypoints=10)["keypoints"].shape == (1, 10, 2)
    with pytest.raises(SilkError, match="re-export it with --dynamic"):
        fixed.extract(torch.rand(1, 1, 64, 96))
    # the old flag --dynamic (now the default) is still accepted: parsed, then the overwrite rule answers
    assert main(["export", "onnx", "--checkpoint", str(tiny_weights), "--out", str(out), "--dynamic"]) == 2
    assert "exists: pass --overwrite" in capsys.readouterr().err


def test_cli_errors_leave_no_file(tmp_path, tiny_weights, parity_ckpt, capsys):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    out = tmp_path / "m.onnx"
    cases = [
        (["--checkpoint", str(bad)], "cannot read checkpoint"),
        (["--checkpoint", str(tiny_weights), "--opset", "11"], "unsupported ONNX opset 11"),
        (["--checkpoint", str(parity_ckpt), "--static", "12", "64"], "too small"),
    ]
    for args, message in cases:
        assert main(["export", "onnx", *args, "--out", str(out)]) == 2
        assert message in capsys.readouterr().err
    assert (
        main(["export", "onnx", "--checkpoint", str(tiny_weights), "--out", str(tmp_path / "no" / "m.onnx")])
        == 2
    )
    assert "output folder does not exist" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.ckpt", "tiny.safetensors"]


def test_output_path_problems(tmp_path, tiny):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SilkError, match="not a folder"):
        export_onnx(tiny, tmp_path / "file" / "m.onnx")
    with pytest.raises(SilkError, match="output path is a folder"):
        export_onnx(tiny, tmp_path)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_folder(tmp_path, tiny):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(SilkError, match="not writable"):
            export_onnx(tiny, folder / "m.onnx")
    finally:
        folder.chmod(0o700)


def micro_model() -> SiLK:
    """The smallest model: quick to export for tests of the export machinery itself."""
    return SiLK(SiLKConfig(channels=(4,), blocks_per_stage=1, head_channels=4, descriptor_dim=4)).eval()


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    import onnx

    def broken_save(proto, path):
        with open(path, "wb") as f:
            f.write(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx, "save_model", broken_save)
    with pytest.raises(SilkError, match="no space left on device"):
        export_onnx(micro_model(), tmp_path / "m.onnx", example_size=(32, 32))
    assert list(tmp_path.iterdir()) == []


def test_runner_errors(tmp_path):
    with pytest.raises(SilkError, match="not found"):
        OnnxSiLK(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00garbage")
    with pytest.raises(SilkError, match="cannot load ONNX model"):
        OnnxSiLK(junk)
    assert 18 in supported_opsets() and 11 not in supported_opsets()


def test_runner_checks_images(parity_onnx):
    with pytest.raises(SilkError, match="takes 1-channel images"):
        parity_onnx.dense(np.zeros((1, 3, 64, 64), np.float32))
    with pytest.raises(SilkError, match="too small"):
        parity_onnx.dense(np.zeros((1, 1, 18, 64), np.float32))
    with pytest.raises(SilkError, match="NaN"):
        parity_onnx.dense(np.full((1, 1, 32, 32), np.nan, np.float32))


def test_not_a_silk_onnx_file(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    path = tmp_path / "other.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    with pytest.raises(SilkError, match="not a silk-keypoints ONNX export"):
        OnnxSiLK(path)


