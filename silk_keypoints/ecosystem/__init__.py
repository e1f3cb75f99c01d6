"""Everything that talks to other tools.

File formats: :mod:`.hloc` (``features.h5`` / ``matches.h5``), :mod:`.pairs` (pair lists), :mod:`.colmap`
(COLMAP databases), :mod:`.npz` (one file per image), :mod:`.onnx` (ONNX export and the onnxruntime runner).
Python adapters: :mod:`.lightglue` (a LightGlue-style extractor), :mod:`.kornia` (a kornia ``LocalFeature``-style
module). Submodules are imported on use (kornia, h5py and onnx are not loaded by ``import silk_keypoints``).
"""
