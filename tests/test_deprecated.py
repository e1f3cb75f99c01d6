"""Old module paths still import, warn, and give the objects of their new modules."""

import importlib
import sys

import pytest

MOVED = [
    ("silk_keypoints.interop.hloc", "silk_keypoints.ecosystem.hloc"),
    ("silk_keypoints.interop.colmap", "silk_keypoints.ecosystem.colmap"),
    ("silk_keypoints.interop.npz", "silk_keypoints.ecosystem.npz"),
    ("silk_keypoints.interop.pairs", "silk_keypoints.ecosystem.pairs"),
    ("silk_keypoints.integrations.lightglue", "silk_keypoints.ecosystem.lightglue"),
    ("silk_keypoints.integrations.kornia", "silk_keypoints.ecosystem.kornia"),
    ("silk_keypoints.export.onnx", "silk_keypoints.ecosystem.onnx"),
    ("silk_keypoints.demo", "silk_keypoints.pair"),
    ("silk_keypoints.extraction", "silk_keypoints.image_features"),
    ("silk_keypoints.model.fast", "silk_keypoints.model.fused"),
]


@pytest.mark.parametrize("old, new", MOVED)
def test_old_module_path_warns_and_aliases(old, new):
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")):
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)


@pytest.mark.parametrize("package, names", [
    ("silk_keypoints.integrations", ("SiLKExtractor", "SiLKFeature")),
    ("silk_keypoints.export", ("OnnxSiLK", "export_onnx")),
])
def test_old_packages_keep_their_names(package, names):
    sys.modules.pop(package, None)
    with pytest.warns(DeprecationWarning, match="silk_keypoints.ecosystem"):
        module = importlib.import_module(package)
    assert all(hasattr(module, n) for n in names)
