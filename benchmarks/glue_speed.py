"""SiLKGlue time for N x N keypoints with its knobs (layers, width) against the extraction time of the same
model on a 640x480 image (the shipped ``box_in_scene.jpg``, resized; up to N keypoints), measured in one run on
this CPU.

    PYTHONPATH=$PWD python benchmarks/glue_speed.py --keypoints 2048 --threads 1

Prints a markdown table: median seconds of ``SiLKGlue.forward`` (random weights: the time does not depend on
them), its ratio to one extraction (the issue's goal: at most 1), to the two extractions of a pair and to mutual
NN on the same descriptors. ``--positions extrema`` times the extraction with sub-pixel extrema keypoints.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import cv2
import torch
import torch.nn.functional as F

from silk_keypoints.glue import SiLKGlue
from silk_keypoints.io import load_image, to_batch
from silk_keypoints.matching import match_descriptors
from silk_keypoints.model import SiLK
from silk_keypoints.pair import DEMO_PAIR


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--keypoints", type=int, default=2048)
    p.add_argument("--extractor", default="fast")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--positions", default="cells", help="keypoint placement of the extraction (cells, extrema)")
    p.add_argument("--configs", nargs="+", default=["2x64", "4x64", "6x64", "4x96", "4x128"],
                   help="LAYERSxWIDTH settings to time")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = SiLK.from_pretrained(a.extractor).eval()
    photo = cv2.resize(load_image(DEMO_PAIR[1]), (640, 480), interpolation=cv2.INTER_AREA)
    image = to_batch(torch.from_numpy(photo).permute(2, 0, 1).float()[None] / 255.0, model.config.in_channels)
    with torch.inference_mode():
        feats = model.extract(image, max_keypoints=a.keypoints, positions=a.positions)
        extract = median_time(lambda: model.extract(image, max_keypoints=a.keypoints, positions=a.positions),
                              a.repeats)
    n = a.keypoints
    dim = model.config.descriptor_dim
    size = torch.tensor([[640.0, 480.0]])
    k0, k1 = (torch.rand(1, n, 2) * size for _ in range(2))
    d0, d1 = (F.normalize(torch.randn(1, n, dim), dim=-1) for _ in range(2))
    mnn = median_time(lambda: match_descriptors(d0[0], d1[0], "mnn"), a.repeats)
    print(f"{a.extractor} ({a.positions}): {feats.keypoint_mask.sum()} keypoints at 640x480, extraction {extract:.3f} s per image "
          f"(x2 per pair: {2 * extract:.3f} s); mutual NN {n}x{n}: {mnn:.3f} s; {a.threads} thread(s)\n")
    print("| layers | width | params | glue s | glue / extraction | glue / 2 extractions | glue / mutual NN |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for config in a.configs:
        layers, width = (int(v) for v in config.split("x"))
        glue = SiLKGlue(descriptor_dim=dim, layers=layers, width=width).eval()
        params = sum(t.numel() for t in glue.parameters())
        with torch.inference_mode():
            secs = median_time(lambda g=glue: g(k0, k1, d0, d1, size, size), a.repeats)
        print(f"| {layers} | {width} | {params / 1e3:.0f} k | {secs:.3f} | {secs / extract:.2f} | {secs / (2 * extract):.2f} | "
              f"{secs / mnn:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
