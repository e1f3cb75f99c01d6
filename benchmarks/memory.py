"""Peak memory (RSS) of ``silk extract``: per megapixel of input, and on a decompression bomb.

Each measurement runs ``python -m silk_keypoints.cli extract IMAGE --out features.h5`` in a fresh process and
reads its peak resident set size from ``os.wait4``. Images are random textures (so that the network finds
keypoints) generated in a temporary folder; ``--bomb`` adds a 30000 x 30000 PNG of zeros (about 1 MB on
disk, 2.7 GB as decoded pixels), which must be refused from its header, before any pixel is decoded.

    python benchmarks/memory.py                       # 1, 4, 8, 12.2 MP and the bomb, shipped default model
    python benchmarks/memory.py --mp 12.2 --model vgg4
    python benchmarks/memory.py --bomb-only

Prints one row per image: size, MP, peak RSS (GB), exit code, and the slope (GB per MP) fitted over the
non-bomb rows (peak RSS = base + slope x MP).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import cv2
import numpy as np


def write_bomb_png(path: Path, width: int, height: int) -> Path:
    """A valid 8-bit grayscale PNG of zeros, compressed row by row (never holds the pixels in memory)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    z = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte 0 + zero pixels
    body = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def write_texture(path: Path, megapixels: float, seed: int = 0) -> Path:
    """A 4:3 JPEG of blurred noise with about ``megapixels`` MP."""
    h = round((megapixels * 1e6 * 3 / 4) ** 0.5)
    w = round(h * 4 / 3)
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return path


def peak_rss(argv: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    """(peak RSS in GB, exit code, last stderr line) of one process."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    lines = [line for line in err.splitlines() if line.strip()]
    return usage.ru_maxrss / 1024**2, proc.returncode, lines[-1] if lines else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mp", type=float, nargs="*", default=[1.0, 4.0, 8.0, 12.2], help="image sizes in MP")
    ap.add_argument("--model", default=None, help="shipped model (default: the package's default)")
    ap.add_argument("--bomb-only", action="store_true", help="only the 30000 x 30000 PNG")
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the measured process")
    args = ap.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    model = ["--model", args.model] if args.model else []
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        images = [] if args.bomb_only else [(mp, write_texture(tmp / f"{mp}.jpg", mp)) for mp in args.mp]
        images.append((900.0, write_bomb_png(tmp / "bomb.png", 30000, 30000)))
        base = [sys.executable, "-m", "silk_keypoints.cli", "extract", "--overwrite", *model, "--max-pixels", "1e9"]
        for mp, path in images:
            bomb = path.name == "bomb.png"
            argv = [sys.executable, "-m", "silk_keypoints.cli", "extract", "--overwrite", *model] if bomb else base
            gb, rc, last = peak_rss([*argv, str(path), "--out", str(tmp / "f.h5")], env)
            rows.append((path.name, mp, gb, rc, last))
            print(f"{path.name:>10}  {mp:7.1f} MP  peak RSS {gb:5.2f} GB  exit {rc}  {last[:120]}", flush=True)
    fit = [(mp, gb) for name, mp, gb, rc, _ in rows if name != "bomb.png" and rc == 0]
    if len(fit) >= 2:
        slope, intercept = np.polyfit([m for m, _ in fit], [g for _, g in fit], 1)
        print(f"peak RSS ~ {intercept:.2f} GB + {slope * 1000:.0f} MB per MP")


if __name__ == "__main__":
    main()
