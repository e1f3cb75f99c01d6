"""Data-parallel training as torchrun starts it: 2 forked CPU processes with gloo and torchrun's environment
(RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT), a few steps of the tiny model."""

import cv2
import numpy as np
import torch
from conftest import forked_ranks

from silk_keypoints import SiLK
from silk_keypoints.cli import main


def test_two_process_gloo_run(tmp_path, capfd):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in list(range(7)) + [19]:  # im19.png is a validation image (split_train_val)
        cv2.imwrite(str(images / f"im{i}.png"), rng.integers(0, 255, (56, 64, 3), dtype=np.uint8))
    out = tmp_path / "run"
    argv = ["train", "--images", str(images), "--out", str(out), "--model", "tiny", "--steps", "3", "--crop", "48",
            "--val-every", "3", "--ckpt-every", "3"]
    assert forked_ranks(lambda: main(argv)) == [0, 0]
    assert capfd.readouterr().out.count("trained 3 steps") == 1  # rank 0 reports, rank 1 stays quiet
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["step"] == 3
    assert state["config"]["train"]["batch_size"] == 1
    # two pairs per step (one per process): the learning rate is sqrt-scaled
    assert abs(state["optimizer"]["param_groups"][0]["lr"] - 1e-4 * 2**0.5) < 1e-12
    assert SiLK.from_checkpoint(out / "model.safetensors").config.descriptor_dim == 64
    assert (out / "best.pt").is_file()
