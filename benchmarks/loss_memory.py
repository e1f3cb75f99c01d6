"""Step time and peak memory of the SiLK loss (forward + backward), blockwise vs naive, on CPU.

Default size: the original's training maps, 146 x 146 = 21,316 cells per view, 128-D descriptors, the
correspondences of a random homography. Each method runs in a fresh process; peak memory is the growth of
the process's peak resident set (``ru_maxrss``) over its resident set just before the loss, i.e. everything
the loss allocates (similarity blocks, autograd buffers, gradients). The naive full-matrix computation is
skipped when its estimated need (~4 N^2 floats) exceeds ``--naive-cap-gb``.

    python benchmarks/loss_memory.py [--size 146] [--dim 128] [--block 1024] [--threads 2] [--naive-cap-gb 12]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def worker(method: str, size: int, dim: int, block: int, repeats: int, threads: int) -> dict:
    import torch

    from silk_keypoints.model.coords import GridMap
    from silk_keypoints.training.homography import dense_correspondences, sample_homographies
    from silk_keypoints.training.loss import pair_loss

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    n = size * size
    crop = size + 18
    hom = sample_homographies(1, crop, crop, generator=g)
    corr0, corr1 = dense_correspondences(hom, GridMap(1, 9), (size, size))
    desc0 = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1) * 1.41
    desc1 = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1) * 1.41
    logits0, logits1 = torch.randn(n, generator=g), torch.randn(n, generator=g)
    times = []
    base = _rss_mb()
    for _ in range(repeats):
        d0, d1 = desc0.clone().requires_grad_(), desc1.clone().requires_grad_()
        start = time.perf_counter()
        out = pair_loss(d0, d1, logits0, logits1, corr0[0], corr1[0], block_size=block if method == "blockwise" else None)
        out["loss"].backward()
        times.append(time.perf_counter() - start)
        del out, d0, d1
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"method": method, "cells": n, "time_s": min(times), "peak_mb": peak - base,
            "valid_corr": int((corr0 >= 0).sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=146, help="output map side (cells per view = size^2)")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--block", type=int, default=1024, help="rows per similarity block")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--naive-cap-gb", type=float, default=12.0)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.size, args.dim, args.block, args.repeats, args.threads)))
        return
    n = args.size**2
    print(f"SiLK loss, forward + backward, {args.size}x{args.size} = {n} cells per view, {args.dim}-D, "
          f"{args.threads} threads")
    print(f"{'method':<22}{'time (s)':>10}{'peak (MB)':>12}")
    for method in ("blockwise", "naive"):
        label = f"{method} ({args.block})" if method == "blockwise" else method
        need_gb = 4 * n * n * 4 / 2**30
        if method == "naive" and need_gb > args.naive_cap_gb:
            print(f"{label:<22}{'skipped':>10}  needs ~{need_gb:.1f} GB > --naive-cap-gb {args.naive_cap_gb}")
            continue
        cmd = [sys.executable, __file__, "--worker", method, "--size", str(args.size), "--dim", str(args.dim),
               "--block", str(args.block), "--repeats", str(args.repeats), "--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            print(f"{label:<22}{'failed':>10}  {proc.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(proc.stdout)
        print(f"{label:<22}{r['time_s']:>10.2f}{r['peak_mb']:>12.0f}")


if __name__ == "__main__":
    main()
