"""Time and peak memory of the chunked matcher next to the unchunked one (a single N0 x N1 block).

    python benchmarks/matching.py                          # 1k, 10k, 30k keypoints, mnn, 128-D, CPU
    python benchmarks/matching.py --methods mnn ratio double-softmax --sizes 1000 10000 --device cuda

Each measurement runs in a fresh worker process, so peak memory is that run's alone: on CPU the peak resident
memory above the level before matching (Linux ``/proc/self/status`` VmHWM after resetting it), on CUDA
``torch.cuda.max_memory_allocated`` above the inputs. Descriptors: N x 128 unit vectors, half of image 0 being
noisy copies of image 1 (realistic match counts). Unchunked runs whose similarity matrices would need more than
``--max-unchunked-gb`` are skipped (and reported as skipped).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

# full-matrix temporaries held at once by the unchunked computation, per method
_FULL_MATRICES = {"mnn": 1, "ratio": 2, "double-softmax": 3}


def make_descriptors(n: int, dim: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    d1 = torch.randn(n, dim, generator=g)
    d0 = torch.randn(n, dim, generator=g)
    half = n // 2
    d0[:half] = d1[torch.randperm(n, generator=g)[:half]] + 0.5 * torch.randn(half, dim, generator=g)
    return torch.nn.functional.normalize(d0, dim=1), torch.nn.functional.normalize(d1, dim=1)


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def worker(method: str, n: int, dim: int, unchunked: bool, device: str, repeats: int, threads: int, out: str) -> None:
    from silk_keypoints import match_descriptors

    torch.set_num_threads(threads)
    d0, d1 = (d.to(device) for d in make_descriptors(n, dim))
    chunk = n if unchunked else None
    options = {"threshold": 0.9} if method == "double-softmax" else {}
    small0, small1 = d0[:64], d1[:64]
    match_descriptors(small0, small1, method, **options)  # warm up kernels outside the measurement
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _status_kb("VmRSS:") * 1024
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    times, cpu_times = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        matches, _ = match_descriptors(d0, d1, method, chunk_size=chunk, **options)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
        cpu_times.append(time.process_time() - c)
    peak = (torch.cuda.max_memory_allocated() if device.startswith("cuda") else _status_kb("VmHWM:") * 1024) - base
    np.save(out, matches.cpu().numpy())
    print(json.dumps({"time_s": min(times), "cpu_s": min(cpu_times), "peak_mb": peak / 2**20,
                      "matches": len(matches)}))


def measure(method: str, n: int, dim: int, unchunked: bool, device: str, threads: int, tmp: Path) -> dict:
    out = tmp / f"{method}_{n}_{int(unchunked)}.npy"
    repeats = 5 if n <= 10_000 else 1
    cmd = [sys.executable, __file__, "--worker", method, str(n), str(dim), str(int(unchunked)), device, str(repeats),
           str(threads), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["file"] = out
    return result


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        method, n, dim, unchunked, device, repeats, threads, out = sys.argv[2:]
        return worker(method, int(n), int(dim), unchunked == "1", device, int(repeats), int(threads), out)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 30_000])
    p.add_argument("--methods", nargs="+", default=["mnn"], choices=list(_FULL_MATRICES))
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(),
                   help=f"torch CPU threads (default: {torch.get_num_threads()}; 1 is robust to a busy machine)")
    p.add_argument("--max-unchunked-gb", type=float, default=4.0,
                   help="skip unchunked runs whose full matrices would need more (default: 4)")
    args = p.parse_args()
    print(f"torch {torch.__version__}, {args.threads} threads, device {args.device}, {args.dim}-D, "
          "N x N descriptors; wall and CPU (all threads) time: best of 5 (1 at 30k); peak: extra memory of the "
          f"matching call; machine load average {os.getloadavg()[0]:.1f} (timings are only meaningful on an idle "
          "machine; CPU time is less sensitive to other processes)")
    header = (f"{'method':15s} {'N':>6s} | {'chunked: wall, cpu, peak':>27s} | {'unchunked: wall, cpu, peak':>27s} | "
              f"{'time ratio':>10s} {'mem ratio':>9s} | same")
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            for n in args.sizes:
                c = measure(method, n, args.dim, False, args.device, args.threads, Path(tmp))
                need_gb = _FULL_MATRICES[method] * n * n * 4 / 2**30
                if need_gb > args.max_unchunked_gb:
                    u = {"skip": f"skipped (needs ~{need_gb:.0f} GB)"}
                else:
                    u = measure(method, n, args.dim, True, args.device, args.threads, Path(tmp))
                print(f"{method:15s} {n:6d} | {_cell(c):>18s} | {_cell(u):>18s} | " + _ratios(c, u))
                for r in (c, u):
                    if "error" in r:
                        print(f"    error: {r['error']}")


def _cell(r: dict) -> str:
    if "skip" in r:
        return r["skip"]
    if "error" in r:
        return "failed"
    return f"{r['time_s']:7.3f} s {r['cpu_s']:7.3f} s {r['peak_mb']:5.0f} MB"


def _ratios(c: dict, u: dict) -> str:
    if "time_s" not in c or "time_s" not in u:
        return f"{'-':>10s} {'-':>9s} | -"
    same = np.array_equal(np.load(c["file"]), np.load(u["file"]))
    mem = u["peak_mb"] / c["peak_mb"] if c["peak_mb"] > 0 else float("inf")
    return f"{u['time_s'] / c['time_s']:9.2f}x {mem:8.1f}x | {'yes' if same else 'NO'}"


if __name__ == "__main__":
    main()
