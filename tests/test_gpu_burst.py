"""The GPU burst (silk_keypoints/training/gpu_burst.py): rate measurement, step planning and commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from silk_keypoints.training import gpu_burst


@pytest.fixture(scope="module")
def burst():
    return gpu_burst


def test_rate_skips_the_first_steps_and_validation_rows(burst, tmp_path: Path) -> None:
    rows = [{"split": "train", "step": s, "time": 100.0 + (50.0 if s < 20 else 0.0) + s / 4} for s in range(0, 61, 10)]
    rows.insert(3, {"split": "val", "step": 30, "time": 999.0})
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    assert burst.rate(path) == pytest.approx(4.0)


def test_command_runs_the_cli_with_the_variant_settings(burst) -> None:
    cmd = burst.command("tiny", "photos", Path("runs/tiny"), 1234, "cuda", ["--val-every", "0"])
    assert cmd[:3] == [sys.executable, "-m", "silk_keypoints.cli"]
    text = " ".join(cmd)
    assert "--model tiny --steps 1234 --device cuda" in text
    assert " ".join(burst.SETTINGS["tiny"]) in text and " ".join(burst.COMMON) in text
    assert cmd[-2:] == ["--val-every", "0"]


def test_warmup_config_is_a_train_config_file(burst, tmp_path: Path) -> None:
    from silk_keypoints.training.trainer import TrainConfig

    path = burst._warmup_config(tmp_path, 5000)
    data = json.loads(path.read_text())
    assert data == {"warmup_steps": 100}
    assert TrainConfig(**data).warmup_steps == 100
