"""Benchmarks of the SiLK paper, runnable on any extractor.

* :mod:`.hpatches` -- HPatches sequences: repeatability, MMA, homography accuracy / AUC (sparse and dense);
* :mod:`.pose` -- relative pose (ScanNet-1500 / MegaDepth-1500 style) and the IMC2022 submission writer;
* :mod:`.registration` -- RGB-D point-cloud registration (ScanNet, UnsupervisedR&R protocol);
* :mod:`.extractors` -- the extractor interface (SiLK models, OpenCV SIFT / ORB, any callable);
* :mod:`.metrics` -- the metrics as plain numpy functions;
* :mod:`.testdata` -- small data sets in each benchmark's layout, generated from images;
* :mod:`.report` -- tables, JSON and plots.

Command line: ``silk eval hpatches|pose|registration|imc2022`` and ``silk make-testdata``; see
``docs/evaluation.md``.
"""

from .extractors import CallableExtractor, Extractor, ModelExtractor, OpenCVExtractor, build_extractors
from .hpatches import evaluate_hpatches
from .pose import evaluate_pose, read_pose_pairs
from .registration import evaluate_registration, read_rgbd_pairs

__all__ = [
    "CallableExtractor",
    "Extractor",
    "ModelExtractor",
    "OpenCVExtractor",
    "build_extractors",
    "evaluate_hpatches",
    "evaluate_pose",
    "evaluate_registration",
    "read_pose_pairs",
    "read_rgbd_pairs",
]
