"""`silk extract` at scale: serial vs decoding workers vs 2 torchrun processes, peak memory, SIGKILL and resume.

Builds N images of mixed sizes (crops and rescales of ../shared/data/train-photos) in a temp folder, then runs
the real command line as subprocesses and prints one table of ratios measured in this run:

    python benchmarks/extract_scale.py --images 500

Columns: images/s (excluding start-up: the command's own timing), ratio to the serial path (--workers 0, one
torch thread; also run with torch's default threads),
peak RSS of the process tree. Then the kill test: SIGKILL at ~50 % of the serial run's time, rerun, the number
of images the rerun extracted, and whether the final file equals the uninterrupted run's.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from silk_keypoints.ecosystem.hloc import feature_names, h5_items_equal
from silk_keypoints.io import list_images

PHOTOS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "train-photos"
SIZES = [(480, 640), (640, 480), (600, 800), (360, 480), (768, 1024)]


def make_images(folder: Path, n: int) -> None:
    photos = list_images(PHOTOS)
    rng = np.random.default_rng(0)
    for i in range(n):
        img = cv2.imread(str(photos[i % len(photos)]))
        h, w = SIZES[i % len(SIZES)]
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
        if rng.random() < 0.5:
            img = np.ascontiguousarray(img[:, ::-1])
        sub = folder / f"{i // 100:03d}"  # nested folders, as a real data set
        sub.mkdir(exist_ok=True)
        cv2.imwrite(str(sub / f"img{i:05d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 90])


def run(cmd: list[str], env: dict) -> tuple[str, float]:
    """Run ``cmd`` -> its stdout and peak RSS (MiB) of the largest process of its tree (wait4's ru_maxrss)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{err.read()[-2000:]}")
        return out.read(), usage.ru_maxrss / 1024


def rate(stdout: str) -> float:
    return float(re.search(r"([\d.]+) images/s", stdout).group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=500, help="number of images (default: 500)")
    ap.add_argument("--models", default="tiny,fast", help="comma-separated shipped models (default: tiny,fast)")
    ap.add_argument("--resize", type=int, default=None, help="--resize of silk extract")
    args = ap.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    silk = [sys.executable, "-m", "silk_keypoints.cli"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "silk_keypoints.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = tmp / "images"
        folder.mkdir()
        make_images(folder, args.images)
        print(f"{args.images} images of sizes {sorted({f'{w}x{h}' for h, w in SIZES})}, {os.cpu_count()} cores, "
              f"OMP_NUM_THREADS=1 per process")
        print("| model | run | images/s | ratio to serial | peak RSS (MiB, largest process) |")
        print("| --- | --- | --- | --- | --- |")
        for model in args.models.split(","):
            common = ["extract", str(folder), "--model", model, "--quiet", "--max-keypoints", "2048"]
            if args.resize:
                common += ["--resize", str(args.resize)]
            serial = None
            default_threads = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
            runs = [("serial (--workers 0)", silk, [], env),
                    ("serial, torch's default threads", silk, [], default_threads),
                    ("--workers 2", silk, ["--workers", "2"], env),
                    ("2 torchrun processes", torchrun, [], env),
                    ("2 torchrun processes, --workers 1 each", torchrun, ["--workers", "1"], env)]
            for i, (label, launcher, extra, run_env) in enumerate(runs):
                out = tmp / f"{model}-{i}.h5"
                t = time.perf_counter()
                stdout, rss = run([*launcher, *common, "--out", str(out), *extra], run_env)
                wall = time.perf_counter() - t
                r = rate(stdout)
                serial = serial or (r, out, wall)
                same = h5_items_equal(out, serial[1])
                print(f"| {model} | {label} | {r:.2f} | {r / serial[0]:.2f}x | {rss:.0f} |"
                      + ("" if same else " (file differs!)"))
            for n in (args.images // 10, args.images):  # peak memory vs number of images
                sub = tmp / f"list{n}.txt"
                sub.write_text("\n".join(p.relative_to(folder).as_posix() for p in list_images(folder)[:n]))
                _, rss = run([*silk, *common[:1], "--image-list", str(sub), "--root", str(folder), *common[2:],
                              "--out", str(tmp / f"mem{n}.h5"), "--workers", "2"], env)
                print(f"| {model} | memory, {n} images, --workers 2 | | | {rss:.0f} |")
            # kill test: SIGKILL at ~50 % of the serial run's wall time, then rerun
            killed = tmp / f"{model}-killed.h5"
            proc = subprocess.Popen([*silk, *common, "--out", str(killed)], env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, text=True)
            time.sleep(serial[2] / 2)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            before = len(feature_names(killed))
            stdout, _ = run([*silk, *common, "--out", str(killed)], env)
            redone = int(re.search(r"wrote (\d+) images", stdout).group(1))
            print(f"| {model} | kill test: SIGKILL at {serial[2] / 2:.0f} s, {before} images in the file; rerun "
                  f"extracted {redone} (= {args.images} - {before}: {redone == args.images - before}); final file "
                  f"equals the uninterrupted run's: {h5_items_equal(killed, serial[1])}; files left: "
                  f"{sorted(p.name for p in tmp.glob(killed.name + '*'))} | | | |")


if __name__ == "__main__":
    main()
