"""Sub-pixel keypoints of the strided models (offset heads, pair refinement, classical fits), measured in one run.

Makes the HPatches-layout set of ``benchmarks/validation.py`` from the *validation* split of a photo folder
(``split_train_val``; never trained on, neither by the models nor by the offset heads) and evaluates, at 2048
keypoints and with plain mutual nearest neighbours (the way hloc / COLMAP / LightGlue users match), for each
of ``fast`` and ``tiny``:

* ``<m>``: the shipped model, keypoints on the cell centres (``extract()``);
* ``<m>+offsets``: the model file with a trained offset head (``--fast-offsets`` / ``--tiny-offsets``), plain
  ``extract()``: keypoints moved by the head, descriptors bilinearly interpolated there;
* ``<m>+pairref``: the shipped model with the pair refinement of ``Matcher`` (``extract(neighbours=True)``;
  it needs both images, so tools that match indices never get it);
* ``<m>+offsets+pairref``: the offset model with ``extract(neighbours=True)`` and the pair refinement (the
  neighbour descriptors are sampled one cell apart around the moved keypoint, as the pipeline returns them);
* ``<m>+parabola``: the vertex of a 1-D parabola through the keypoint logits at -1, 0, +1 cells per axis
  (where the centre is a maximum along that axis), clamped to half a cell; descriptors of the cell;
* ``<m>+cornersubpix``: OpenCV ``cornerSubPix`` from the cell centre, the move clamped to 0.75 cell;
  descriptors of the cell;

and OpenCV SIFT. Protocol ``d2net`` with ``refine=True``: only features that carry neighbour descriptors
(the ``+pairref`` rows) are refined; every other row is matched where it was detected. MMA@t: share of
mutual-NN matches within t px; H AUC@t: area under the corner-error accuracy curve up to t px, divided by t;
rep@t on the keypoints as returned. ``ms/img`` of the baselines is the exact path; ``--timing`` prints
``extract()`` (fused path, 480x640) with and without the head.

    python benchmarks/train_offsets.py --models fast tiny --out /tmp/offsets --steps 900 --pool 256 --reuse 4
    python benchmarks/subpixel.py --fast-offsets /tmp/offsets/fast/model.safetensors \
        --tiny-offsets /tmp/offsets/tiny/model.safetensors                      # the default set
    python benchmarks/subpixel.py --fast-offsets ... --tiny-offsets ... --strength 0.5 2   # the hard set
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from validation import add_set_args, validation_set  # benchmarks/validation.py: the same validation set

from silk_keypoints import SiLK
from silk_keypoints.evaluation.extractors import CallableExtractor, Extractor, ModelExtractor, OpenCVExtractor
from silk_keypoints.evaluation.hpatches import evaluate_hpatches, get_protocol
from silk_keypoints.evaluation.report import hpatches_table, write_json
from silk_keypoints.io import to_batch

COLUMNS = ("rep@1", "rep@3", "mma@1", "mma@2", "mma@3", "h_acc@1", "h_auc@1", "h_auc@3")


def parabola_shift(logits: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """Per-axis parabola vertex (N, 2) (dx, dy) in cells of ``logits`` (Hf, Wf) at integer ``cells`` (N, 2)
    (col, row); 0 where the centre is no maximum along that axis, clamped to +-0.5 (edges replicated)."""
    m = F.pad(logits[None, None], (1, 1, 1, 1), mode="replicate")[0, 0]
    c, r = cells[:, 0] + 1, cells[:, 1] + 1
    out = []
    for dr, dc in ((0, 1), (1, 0)):  # x, then y
        lo, mid, hi = m[r - dr, c - dc], m[r, c], m[r + dr, c + dc]
        curv = lo - 2 * mid + hi
        vertex = torch.where(curv < -1e-6, 0.5 * (lo - hi) / curv.clamp(max=-1e-6), torch.zeros_like(mid))
        out.append(vertex.clamp(-0.5, 0.5))
    return torch.stack(out, -1)


def cornersubpix_shift(image: np.ndarray, xy: torch.Tensor, stride: float) -> torch.Tensor:
    """OpenCV ``cornerSubPix`` moves (N, 2) px from ``xy`` (window 2 * stride + 1 px), clamped to 0.75 cell."""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    start = xy.numpy().astype(np.float32).reshape(-1, 1, 2)
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_COUNT, 20, 0.01)
    end = cv2.cornerSubPix(gray, start.copy(), (int(stride), int(stride)), (-1, -1), criteria).reshape(-1, 2)
    return torch.from_numpy(end - start.reshape(-1, 2)).clamp(-0.75 * stride, 0.75 * stride)


def baseline(model: SiLK, method: str, max_keypoints: int) -> Callable[[np.ndarray], dict]:
    """Extractor function moving the shipped model's keypoints by ``method`` ("parabola" or "cornersubpix");
    descriptors stay those of the selected cells."""

    @torch.no_grad()
    def run(image: np.ndarray) -> dict:
        x = to_batch(image, model.config.in_channels)
        logits, pos, desc = model(x, ("logits", "sparse_positions", "sparse_descriptors"), max_keypoints=max_keypoints)
        xy = pos[0][:, :2]
        if method == "parabola":
            cells = model.grid.to_cells(xy).round().long()
            shift = parabola_shift(logits[0, 0], cells) * model.grid.stride
        else:
            shift = cornersubpix_shift(image, xy, model.grid.stride)
        return {"keypoints": xy + shift, "descriptors": F.normalize(desc[0], dim=1), "scores": pos[0][:, 2]}

    return run


def build(names: list[str], offsets: dict[str, str], max_keypoints: int, sift: bool) -> list[Extractor]:
    """The extractors of every row, in table order."""
    k = max_keypoints
    out: list[Extractor] = []
    for name in names:
        shipped = SiLK.from_pretrained(name).eval()
        moved = SiLK.from_checkpoint(offsets[name]).eval()
        out += [
            ModelExtractor(shipped, name, max_keypoints=k, neighbours=False),
            ModelExtractor(moved, f"{name}+offsets", max_keypoints=k, neighbours=False),
            ModelExtractor(shipped, f"{name}+pairref", max_keypoints=k, neighbours=True),
            ModelExtractor(moved, f"{name}+offsets+pairref", max_keypoints=k, neighbours=True),
            CallableExtractor(baseline(shipped, "parabola", k), f"{name}+parabola"),
            CallableExtractor(baseline(shipped, "cornersubpix", k), f"{name}+cornersubpix"),
        ]
    if sift:
        out.append(OpenCVExtractor("sift", k))
    return out


def timing(names: list[str], offsets: dict[str, str], max_keypoints: int, repeats: int = 10) -> None:
    """ms per 480x640 image of ``extract()`` on the fused path, without and with the offset head."""
    img = (np.random.default_rng(0).random((480, 640)) * 255).astype(np.uint8)
    for name in names:
        ms = []
        for model in (SiLK.from_pretrained(name), SiLK.from_checkpoint(offsets[name])):
            model.eval().extract(img, max_keypoints=max_keypoints)
            start = time.perf_counter()
            for _ in range(repeats):
                model.extract(img, max_keypoints=max_keypoints)
            ms.append(1000 * (time.perf_counter() - start) / repeats)
        print(f"timing {name}: extract {ms[0]:.1f} ms, with the offset head {ms[1]:.1f} ms "
              f"(+{100 * (ms[1] / ms[0] - 1):.1f} %)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_set_args(p)
    p.add_argument("--fast-offsets", required=True, help="fast with an offset head (benchmarks/train_offsets.py)")
    p.add_argument("--tiny-offsets", required=True, help="tiny with an offset head (benchmarks/train_offsets.py)")
    p.add_argument("--models", nargs="*", default=["fast", "tiny"], choices=["fast", "tiny"])
    p.add_argument("--no-sift", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--timing", action="store_true", help="also time extract() with and without the head")
    p.add_argument("--out", default=None, help="folder for the JSON result (optional)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    offsets = {"fast": args.fast_offsets, "tiny": args.tiny_offsets}
    k = args.max_keypoints
    extractors = build(args.models, offsets, k, not args.no_sift)
    with tempfile.TemporaryDirectory() as tmp:
        data, photos = validation_set(args, tmp)
        # refine=True refines only features with neighbour descriptors: the +pairref rows
        protocol = get_protocol("d2net", max_keypoints=k, table=COLUMNS, refine=True)
        result = evaluate_hpatches(data, extractors, protocol, seed=args.seed, progress=False)
    print(f"{photos} validation photos -> {args.sequences} sequences of {args.size}, strength "
          f"{args.strength[0]:g}-{args.strength[1]:g}, {k} keypoints, plain mutual NN (pair refinement only in "
          f"+pairref rows), seed {args.seed}; offsets: fast={args.fast_offsets} tiny={args.tiny_offsets}\n")
    print(hpatches_table(result))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        print("wrote", write_json(Path(args.out) / "subpixel.json", result))
    if args.timing:
        timing(args.models, offsets, k)


if __name__ == "__main__":
    main()
