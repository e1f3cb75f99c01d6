"""Loading weights: original Lightning checkpoints, our files, and everything that can go wrong."""

import collections
import pickle
import zipfile

import numpy as np
import pytest
import torch

from silk_keypoints import SiLK, SilkError
from silk_keypoints.files import atomic_write
from silk_keypoints.model.checkpoint import ORIGINAL_PREFIX, load_weights, rename_original
from silk_keypoints.model.zoo import VARIANTS, available_pretrained, pretrained_path, variant_config


def to_original_names(state: dict) -> dict:
    """Our names -> the original's (inverse of rename_original, written independently for the test)."""
    out = {}
    for k, v in state.items():
        k = k.replace("descriptor_scale", "descriptor_scale_factor")
        k = k.replace("backbone.stages.", "backbone._backbone.layers.")
        k = k.replace("keypoint_head.hidden.conv.", "backbone._heads._mods.logits._detH1.0.")
        k = k.replace("keypoint_head.hidden.bn.", "backbone._heads._mods.logits._detH1.2.")
        k = k.replace("keypoint_head.out.conv.", "backbone._heads._mods.logits._detH2.0.")
        k = k.replace("keypoint_head.out.bn.", "backbone._heads._mods.logits._detH2.1.")
        k = k.replace("descriptor_head.hidden.conv.", "backbone._heads._mods.raw_descriptors._desH1.0.")
        k = k.replace("descriptor_head.hidden.bn.", "backbone._heads._mods.raw_descriptors._desH1.2.")
        k = k.replace("descriptor_head.out.conv.", "backbone._heads._mods.raw_descriptors._desH2.0.")
        k = k.replace("descriptor_head.out.bn.", "backbone._heads._mods.raw_descriptors._desH2.1.")
        k = k.replace(".conv.", ".0.").replace(".bn.", ".2.") if "_backbone" in k else k
        out[ORIGINAL_PREFIX + k] = v
    return out


def test_original_checkpoint_keys_map_one_to_one(parity_ckpt):
    raw = torch.load(parity_ckpt, weights_only=True)["state_dict"]
    assert len(raw) == 85
    renamed = rename_original(raw)
    assert set(renamed) == set(SiLK().state_dict())


def test_rgb_original_checkpoint(tmp_path):
    """coco-rgb-aug.ckpt layout: 3 input channels, found from the first conv's shape."""
    src = SiLK(in_channels=3)
    ckpt = {"state_dict": to_original_names(src.state_dict()), "epoch": 3, "global_step": 10}
    torch.save(ckpt, tmp_path / "coco-rgb-aug.ckpt")
    model = SiLK.from_checkpoint(tmp_path / "coco-rgb-aug.ckpt")
    assert model.config.in_channels == 3
    x = torch.rand(1, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(model(x, "logits"), src.eval()(x, "logits"))


class Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/silk_pwned",))


def test_pickled_code_is_never_executed(tmp_path, parity_ckpt):
    """A Lightning file with arbitrary pickled objects loads (tensors only) without running them."""
    import pathlib

    marker = pathlib.Path("/tmp/silk_pwned")
    marker.unlink(missing_ok=True)
    ckpt = torch.load(parity_ckpt, weights_only=True)
    ckpt["callbacks"] = {"exploit": Exploit()}
    torch.save(ckpt, tmp_path / "evil.ckpt", pickle_protocol=2)
    model = SiLK.from_checkpoint(tmp_path / "evil.ckpt")
    assert not marker.exists()
    assert model.config.in_channels == 1


def test_our_weight_file_round_trip(tmp_path):
    model = SiLK(variant_config("tiny"), max_keypoints=77).eval()
    model.save(tmp_path / "m.safetensors", info={"note": "test"})
    loaded = SiLK.from_checkpoint(tmp_path / "m.safetensors")
    assert loaded.config == model.config
    x = torch.rand(1, 1, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, "raw_descriptors"), model(x, "raw_descriptors"))


def test_training_checkpoint_dict(tmp_path):
    model = SiLK(variant_config("tiny"))
    torch.save({"model": model.state_dict(), "config": {"model": model.config.to_dict()}, "step": 5}, tmp_path / "last.pt")
    state, config = load_weights(tmp_path / "last.pt")
    assert config == model.config and set(state) == set(model.state_dict())


def test_missing_empty_truncated_garbage(tmp_path, parity_ckpt):
    with pytest.raises(SilkError, match="not found"):
        SiLK.from_checkpoint(tmp_path / "nope.ckpt")
    (tmp_path / "empty.ckpt").write_bytes(b"")
    with pytest.raises(SilkError, match="empty"):
        SiLK.from_checkpoint(tmp_path / "empty.ckpt")
    data = parity_ckpt.read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(SilkError, match="corrupt"):
        SiLK.from_checkpoint(tmp_path / "cut.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"hello world" * 100)
    with pytest.raises(SilkError, match="corrupt"):
        SiLK.from_checkpoint(tmp_path / "junk.ckpt")
    (tmp_path / "junk.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises(SilkError):
        SiLK.from_checkpoint(tmp_path / "junk.safetensors")
    with zipfile.ZipFile(tmp_path / "zip.ckpt", "w") as z:
        z.writestr("a.txt", "not a checkpoint")
    with pytest.raises(SilkError):
        SiLK.from_checkpoint(tmp_path / "zip.ckpt")


def test_wrong_keys_and_shapes(tmp_path, parity_ckpt):
    ckpt = torch.load(parity_ckpt, weights_only=True)
    state = dict(ckpt["state_dict"])
    del state["_mods.model.backbone._backbone.layers.3.1.0.bias"]
    torch.save({"state_dict": state}, tmp_path / "missing.ckpt")
    with pytest.raises(SilkError, match="missing keys"):
        SiLK.from_checkpoint(tmp_path / "missing.ckpt")
    state = dict(ckpt["state_dict"])
    state["_mods.model.backbone._heads._mods.logits._detH2.0.weight"] = torch.zeros(2, 128, 1, 1)
    torch.save({"state_dict": state}, tmp_path / "shape.ckpt")
    with pytest.raises(SilkError, match="shape mismatch"):
        SiLK.from_checkpoint(tmp_path / "shape.ckpt")
    torch.save([1, 2, 3], tmp_path / "list.ckpt")
    with pytest.raises(SilkError, match="expected a dict"):
        SiLK.from_checkpoint(tmp_path / "list.ckpt")


def test_pretrained_registry():
    names = available_pretrained()
    for name in names:
        assert pretrained_path(name).is_file()
    with pytest.raises(SilkError, match="shipped weights"):
        pretrained_path("no-such-model")


ARCHITECTURE = ("in_channels", "channels", "blocks_per_stage", "padding", "pool_after", "block_order", "batch_norm",
                "head_channels", "head_kernel", "descriptor_dim")


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_variant_is_shipped_with_its_architecture_and_a_model_card(name):
    """from_pretrained works offline for every variant, the weights are the variant's architecture, and the
    package stays small."""
    assert name in available_pretrained()
    model = SiLK.from_pretrained(name)
    expected = variant_config(name)
    assert {k: getattr(model.config, k) for k in ARCHITECTURE} == {k: getattr(expected, k) for k in ARCHITECTURE}
    card = pretrained_path(name).with_suffix(".md")
    assert card.is_file() and "license" in card.read_text().lower()
    assert sum(pretrained_path(n).stat().st_size for n in available_pretrained()) <= 15 * 2**20


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def fail(tmp):
        tmp.write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(SilkError, match=r"cannot write .*out.bin: no space left on device \(disk full\); the "
                       "existing file is kept"):
        atomic_write(target, fail)
    assert target.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [target]
    with pytest.raises(SilkError, match="does not exist"):
        atomic_write(tmp_path / "missing" / "x.bin", lambda p: p.write_bytes(b""))


def test_pickle_stub_is_inert():
    import io

    from silk_keypoints.model.checkpoint import RestrictedUnpickler

    payload = pickle.dumps(Exploit(), protocol=2)
    obj = RestrictedUnpickler(io.BytesIO(payload)).load()
    assert type(obj).__name__ == "_Inert"
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        RestrictedUnpickler(io.BytesIO(payload), strict=True).load()
    arrays = {"a": np.arange(3.0), "o": collections.OrderedDict(k=np.float32(2))}
    assert repr(RestrictedUnpickler(io.BytesIO(pickle.dumps(arrays)), strict=True).load()) == repr(arrays)
