"""Extraction speed: ms per 480x640 image for every SiLK variant and backend, next to OpenCV SIFT and ORB.

Backends, all returning ``max_keypoints`` keypoints with descriptors (random weights: timing only):

* ``naive``  a straightforward eager implementation written here: nn.Conv2d -> ReLU -> BatchNorm2d modules
             (the variant's block order), NCHW float32, then sigmoid, full sort, gather, normalise.
             Runs as fast as the original SiLK code; every ratio is ``naive ms / backend ms``.
* ``exact``  ``SiLK.extract(exact=True)``: this package's modules as defined.
* ``fused``  ``SiLK.extract()``: BatchNorm folded, channels-last, fused heads, batched top-k (the default).
* ``fused+nb`` ``SiLK.extract(neighbours=True)``: the fused path plus the 3x3 neighbour descriptors that
             sub-cell match refinement needs (what ``silk match`` and the evaluations use).
* ``fused+extrema`` ``SiLK.extract(positions="extrema")``: the fused path with keypoints at the image's
             sub-pixel DoG extrema (``silk_keypoints.model.extrema``) instead of the cell centres.
* ``bf16``   ``SiLK.set_inference("bf16").extract()``: the fused network in bfloat16 (an option).
* ``ort``    ``OnnxSiLK.extract()``: the exported ONNX file on onnxruntime (CPU), the same extraction pipeline.
* ``sift`` / ``orb``: OpenCV ``SIFT_create`` / ``ORB_create(nfeatures=max_keypoints)`` on the uint8 image.

Every backend is timed in the same process, in interleaved rounds (one call of each per round, after a
warm-up call), and the median is reported. GMAC = multiply-accumulates of the convolutions per image.

    python benchmarks/speed.py                 # all variants, batch 1 and 8 (several minutes on 2 cores)
    python benchmarks/speed.py --quick         # batch 1, one round
    python benchmarks/speed.py --clock cpu     # CPU time instead of wall time (for a busy shared machine)
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from silk_keypoints import SiLK
from silk_keypoints.model.backbone import CONTRAST_FLOOR, CONTRAST_GAIN, CONTRAST_MEAN
from silk_keypoints.model.zoo import VARIANTS, variant_config

BACKENDS = ("naive", "exact", "fused", "fused+nb", "fused+extrema", "bf16", "ort", "sift", "orb")


class NaiveLocalContrast(nn.Module):
    """Local contrast normalisation (``backbone.local_contrast``) with separable average pooling."""

    def __init__(self, window: int) -> None:
        super().__init__()
        self.window = window

    def box(self, x: torch.Tensor) -> torch.Tensor:
        k, r = self.window, self.window // 2
        x = F.avg_pool2d(x, (1, k), 1, (0, r), count_include_pad=False)
        return F.avg_pool2d(x, (k, 1), 1, (r, 0), count_include_pad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = self.box(x)
        var = (self.box(x * x) - mean * mean).clamp(min=0)
        return CONTRAST_MEAN + CONTRAST_GAIN * (x - mean) / (var.sqrt() + CONTRAST_FLOOR)


class NaiveSiLK(nn.Module):
    """The same network as plain eager modules: Conv -> ReLU -> BN blocks, NCHW, float32, nothing fused."""

    def __init__(self, model: SiLK) -> None:
        super().__init__()
        cfg = model.config
        layers: list[nn.Module] = [NaiveLocalContrast(cfg.contrast_window)] if cfg.contrast_window else []
        for s, stage in enumerate(model.backbone.stages):
            for block in stage:
                layers += self._block(block)
            if s in cfg.pool_after:
                layers.append(nn.MaxPool2d(2, 2))
        self.backbone = nn.Sequential(*layers)
        self.keypoint_head = nn.Sequential(
            *self._block(model.keypoint_head.hidden), *self._block(model.keypoint_head.out)
        )
        self.descriptor_head = nn.Sequential(
            *self._block(model.descriptor_head.hidden), *self._block(model.descriptor_head.out)
        )
        self.grid = model.grid

    @staticmethod
    def _block(block: nn.Module) -> list[nn.Module]:
        conv, bn = copy.deepcopy(block.conv), copy.deepcopy(block.bn)
        if not block.relu:
            return [conv, bn]
        return [conv, nn.ReLU(), bn] if block.relu_first else [conv, bn, nn.ReLU()]

    @torch.inference_mode()
    def extract(self, images: torch.Tensor, max_keypoints: int) -> dict[str, torch.Tensor]:
        features = self.backbone(images)
        prob = torch.sigmoid(self.keypoint_head(features))
        raw = self.descriptor_head(features)
        b, _, _, w = prob.shape
        keypoints, scores, descriptors = [], [], []
        for i in range(b):
            s, idx = torch.sort(prob[i].flatten(), descending=True)
            s, idx = s[:max_keypoints], idx[:max_keypoints]
            rows, cols = idx // w, idx % w
            keypoints.append(torch.stack([cols, rows], -1).float() * self.grid.stride + self.grid.offset)
            scores.append(s)
            descriptors.append(F.normalize(raw[i][:, rows, cols].t(), dim=1))
        return {
            "keypoints": torch.stack(keypoints),
            "keypoint_scores": torch.stack(scores),
            "descriptors": torch.stack(descriptors),
        }


def conv_gmac(model: SiLK, height: int, width: int) -> float:
    """Multiply-accumulates of all convolutions for one image, counted with forward hooks."""
    total = []

    def hook(module: nn.Conv2d, _: tuple, out: torch.Tensor) -> None:
        k = module.kernel_size[0] * module.kernel_size[1]
        total.append(out[0].numel() * module.in_channels // module.groups * k)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.inference_mode():
        model(torch.zeros(1, model.config.in_channels, height, width), ("logits", "raw_descriptors"))
    for handle in handles:
        handle.remove()
    return sum(total) / 1e9


def test_image(height: int, width: int, path: str | None) -> np.ndarray:
    """uint8 gray test image: a file resized to ``height x width`` or a textured synthetic scene."""
    if path:
        img = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
        return cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)
    rng = np.random.default_rng(0)
    img = cv2.resize(rng.random((height // 16, width // 16)), (width, height), interpolation=cv2.INTER_CUBIC)
    img = (img - img.min()) / (img.max() - img.min()) * 160 + 40
    for _ in range(40):
        x, y = rng.integers(0, width), rng.integers(0, height)
        r, v = int(rng.integers(5, 40)), int(rng.integers(0, 255))
        if rng.random() < 0.5:
            cv2.circle(img, (int(x), int(y)), r, v, -1)
        else:
            cv2.rectangle(img, (int(x), int(y)), (int(x) + 2 * r, int(y) + r), v, -1)
    img += rng.normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def backends(
    name: str, batch: int, image: np.ndarray, k: int, onnx_dir: Path, wanted: set[str]
) -> dict[str, Callable]:
    """One zero-argument callable per backend: ``k`` keypoints from each of ``batch`` copies of ``image``."""
    torch.manual_seed(0)
    model = SiLK(variant_config(name)).eval()
    x = torch.from_numpy(image).float().div(255)[None, None].expand(batch, 1, -1, -1).contiguous()
    calls: dict[str, Callable] = {}
    if "naive" in wanted:
        naive = NaiveSiLK(model).eval()
        calls["naive"] = lambda: naive.extract(x, k)
    if "exact" in wanted:
        calls["exact"] = lambda: model.extract(x, max_keypoints=k, exact=True)
    if "fused" in wanted:
        calls["fused"] = lambda: model.extract(x, max_keypoints=k)
    if "fused+nb" in wanted:
        calls["fused+nb"] = lambda: model.extract(x, max_keypoints=k, neighbours=True)
    if "fused+extrema" in wanted:
        calls["fused+extrema"] = lambda: model.extract(x, max_keypoints=k, positions="extrema")
    if "bf16" in wanted:  # a second model: each caches the fused network of its own mode
        bf16 = copy.deepcopy(model).set_inference("bf16")
        calls["bf16"] = lambda: bf16.extract(x, max_keypoints=k)
    if "ort" in wanted:
        from silk_keypoints.ecosystem.onnx import OnnxSiLK, export_onnx

        path = onnx_dir / f"{name}.onnx"
        if not path.exists():
            export_onnx(model, path, dynamic=True, example_size=(64, 80))
        runner = OnnxSiLK(path, providers=["CPUExecutionProvider"], threads=torch.get_num_threads())
        calls["ort"] = lambda: runner.extract(x, max_keypoints=k)
    if "sift" in wanted:
        sift = cv2.SIFT_create(nfeatures=k)
        calls["sift"] = lambda: [sift.detectAndCompute(image, None) for _ in range(batch)]
    if "orb" in wanted:
        orb = cv2.ORB_create(nfeatures=k)
        calls["orb"] = lambda: [orb.detectAndCompute(image, None) for _ in range(batch)]
    return calls


def time_interleaved(calls: dict[str, Callable], rounds: int, clock: Callable[[], float]) -> dict[str, float]:
    """Median seconds per call of each callable: one warm-up call each, then ``rounds`` interleaved rounds."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():
        call()
    for _ in range(rounds):
        for name, call in calls.items():
            start = clock()
            call()
            times[name].append(clock() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="batch 1 only, one timed round")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (median reported)")
    parser.add_argument("--size", type=int, nargs=2, default=[480, 640], metavar=("H", "W"))
    parser.add_argument("--max-keypoints", type=int, default=10000)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch / onnxruntime / OpenCV threads (default: all)"
    )
    parser.add_argument("--image", default=None, help="test image (default: a synthetic textured scene)")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall-clock time, or CPU time of the process (all threads; steadier on a shared machine)",
    )
    args = parser.parse_args()
    if args.quick:
        args.batches, args.rounds = [1], 1
    if args.threads:
        torch.set_num_threads(args.threads)
    cv2.setNumThreads(torch.get_num_threads())
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    h, w = args.size
    image = test_image(h, w, args.image)

    import onnxruntime

    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{torch.get_num_threads()} threads; "
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, OpenCV {cv2.__version__}"
    )
    what = "ms per image" if args.clock == "wall" else "CPU ms per image (all threads)"
    print(
        f"# extract(max_keypoints={args.max_keypoints}) on {h}x{w}; {what} (median of {args.rounds} "
        "interleaved rounds); in brackets: naive / backend"
    )
    header = "| variant | GMAC | batch | " + " | ".join(args.backends) + " |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    with tempfile.TemporaryDirectory() as onnx_dir:
        for name in args.variants:
            gmac = conv_gmac(SiLK(variant_config(name)).eval(), h, w)
            for batch in args.batches:
                calls = backends(name, batch, image, args.max_keypoints, Path(onnx_dir), set(args.backends))
                seconds = time_interleaved(calls, args.rounds, clock)
                base = seconds.get("naive")
                cells = []
                for backend in args.backends:
                    ms = seconds[backend] / batch * 1000
                    ratio = f" ({base / seconds[backend]:.2f}x)" if base else ""
                    cells.append(f"{ms:.0f}{ratio}" if ms >= 10 else f"{ms:.1f}{ratio}")
                print(f"| {name} | {gmac:.1f} | {batch} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
