"""Data-parallel training under torchrun: 2 CPU processes with gloo, a few steps of the tiny model."""

import os
import subprocess
import sys

import cv2
import numpy as np
import torch

from silk_keypoints import SiLK


def test_two_process_gloo_run(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in list(range(7)) + [19]:  # im19.png is a validation image (split_train_val)
        cv2.imwrite(str(images / f"im{i}.png"), rng.integers(0, 255, (56, 64, 3), dtype=np.uint8))
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "silk_keypoints.cli", "train", "--images", str(images),
           "--out", str(out), "--model", "tiny", "--steps", "3", "--crop", "48", "--val-every", "3",
           "--ckpt-every", "3"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("trained 3 steps") == 1  # rank 0 reports, rank 1 stays quiet
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["step"] == 3
    assert state["config"]["train"]["batch_size"] == 1
    # two pairs per step (one per process): the learning rate is sqrt-scaled
    assert abs(state["optimizer"]["param_groups"][0]["lr"] - 1e-4 * 2**0.5) < 1e-12
    assert SiLK.from_checkpoint(out / "model.safetensors").config.descriptor_dim == 64
    assert (out / "best.pt").is_file()
