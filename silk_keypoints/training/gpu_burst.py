"""A timed training burst on one lent GPU: several variants fine-tuned side by side, each ending on time.

    python -m silk_keypoints.training.gpu_burst --images PHOTOS --runs RUN_ROOT --seconds 420 [--variants fast tiny]

For each variant a short probe (``PROBE_STEPS`` steps, all variants at once, so the rate includes their
contention for the GPU) measures steps per second; then every variant runs ``silk train`` with the step count
that makes its cosine schedule end inside the budget. A run still going at the hard deadline gets SIGINT
(the trainer then writes ``last.pt``). Each run lands in ``RUN_ROOT/<variant>`` with its log, ``last.pt``
and, when it finished, ``model.safetensors``. ``--device cpu --seconds 60`` rehearses the whole flow here.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PROBE_STEPS = 60
STARTUP_S = 25.0  # import, CUDA init, image scan, validation pairs, final validation and save
SAFETY = 0.85  # share of the measured rate that is planned on
# the settings of the GPU stage of each variant (fine-tuning the shipped weights at larger crops than on CPU)
SETTINGS: dict[str, list[str]] = {
    "vgg4": ["--init-from", "vgg4", "--crop", "164", "--batch-size", "2", "--lr", "2e-4"],
    "fast": ["--init-from", "fast", "--crop", "192", "--batch-size", "4", "--lr", "2e-4"],
    "tiny": ["--init-from", "tiny", "--crop", "256", "--batch-size", "4", "--lr", "5e-4"],
}
COMMON = ["--lr-schedule", "cosine", "--ema", "0.999", "--augment", "lighting", "--seed", "3"]


def command(variant: str, images: str, out: Path, steps: int, device: str, extra: list[str]) -> list[str]:
    """The ``silk train`` command line (this Python, ``-m silk_keypoints.cli``) of one variant's run."""
    return [sys.executable, "-m", "silk_keypoints.cli", "train", "--images", images, "--out", str(out),
            "--model", variant, "--steps", str(steps), "--device", device, "--workers", "3",
            *SETTINGS[variant], *COMMON, *extra]


def rate(metrics: Path) -> float:
    """Steps per second between the 20th step and the last logged one of a run's metrics.jsonl."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    rows = [r for r in rows if r["split"] == "train" and r["step"] >= 20]
    return (rows[-1]["step"] - rows[0]["step"]) / (rows[-1]["time"] - rows[0]["time"])


def run_all(cmds: dict[str, list[str]], logs: Path, deadline: float) -> dict[str, int]:
    """Run the commands side by side (output to ``logs/<variant>.log``), SIGINT those still going at
    ``deadline`` (seconds since the epoch); returns each variant's exit code."""
    procs = {v: subprocess.Popen(c, stdout=(logs / f"{v}.log").open("a"), stderr=subprocess.STDOUT)
             for v, c in cmds.items()}
    while any(p.poll() is None for p in procs.values()):
        if time.time() > deadline:
            for p in procs.values():
                if p.poll() is None:
                    p.send_signal(signal.SIGINT)
            deadline = float("inf")
        time.sleep(1.0)
    return {v: p.returncode for v, p in procs.items()}


def main() -> int:
    """The command line: probe, plan, run; returns 0 when every run exited cleanly."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", required=True)
    parser.add_argument("--runs", required=True, type=Path)
    parser.add_argument("--seconds", type=float, required=True, help="wall-clock budget of the whole burst")
    parser.add_argument("--variants", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    start = time.time()
    args.runs.mkdir(parents=True, exist_ok=True)
    probe = {v: command(v, args.images, args.runs / f"probe-{v}", PROBE_STEPS, args.device,
                        ["--val-every", "0", "--ckpt-every", "100000"]) for v in args.variants}
    codes = run_all(probe, args.runs, start + args.seconds)
    if any(codes.values()):
        print("probe failed:", codes, flush=True)
        return 1
    left = args.seconds - (time.time() - start) - STARTUP_S
    plan = {}
    for v in args.variants:
        r = rate(args.runs / f"probe-{v}" / "metrics.jsonl")
        steps = max(100, int(r * left * SAFETY))
        plan[v] = steps
        print(f"{v}: {r:.1f} steps/s in the probe -> {steps} steps", flush=True)
    cmds = {v: command(v, args.images, args.runs / v, n, args.device,
                       ["--val-every", str(max(100, n // 5)), "--ckpt-every", str(max(100, n // 8)),
                        "--config", str(_warmup_config(args.runs, n))])
            for v, n in plan.items()}
    for v, c in cmds.items():
        print(v, " ".join(c), flush=True)
    codes = run_all(cmds, args.runs, start + args.seconds)
    print("exit codes:", codes, f"({time.time() - start:.0f} s in all)", flush=True)
    return int(any(codes.values()))


def _warmup_config(root: Path, steps: int) -> Path:
    path = root / f"warmup-{steps}.json"
    path.write_text(json.dumps({"warmup_steps": max(20, steps // 50)}))
    return path


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
