"""The training loop: checkpoints, exact resume, fine-tuning, the CLI and bad input (tiny model, 48-px crops)."""

import json
import signal
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from silk_keypoints import SiLK
from silk_keypoints.cli import main
from silk_keypoints.errors import SilkError
from silk_keypoints.training import trainer
from silk_keypoints.training.trainer import TrainConfig, load_run_config, resume_config, train

PARITY_CKPT = Path(__file__).parent / "fixtures" / "parity" / "silk_vgg4_random.ckpt"


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(12):
        base = cv2.resize(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8), (80, 60), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(root / f"img_{i:02d}.png"), base)
    return root


def _config(images: Path, out: Path, **kw) -> TrainConfig:
    base = {"images": str(images), "out": str(out), "model": "tiny", "steps": 4, "crop": 48, "batch_size": 2,
            "ckpt_every": 2, "val_every": 2, "val_pairs": 2, "log_every": 1, "threads": 1}
    return TrainConfig(**{**base, **kw})


def _losses(config: TrainConfig, resume: bool = False) -> tuple[dict, dict]:
    seen = {}
    result = train(config, resume=resume, callback=lambda step, m: seen.__setitem__(step, m["loss"]))
    return seen, result


def test_train_writes_checkpoints_and_resumes_exactly(images, tmp_path):
    threads = torch.get_num_threads()
    full, result = _losses(_config(images, tmp_path / "a"))
    assert torch.get_num_threads() == threads  # restored after training with threads=1
    assert sorted(full) == [1, 2, 3, 4] and all(np.isfinite(list(full.values())))
    run = tmp_path / "a"
    for name in ("last.pt", "best.pt", "model.safetensors", "metrics.jsonl"):
        assert (run / name).is_file(), name
    assert list(run.glob("events.out.tfevents*"))
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["step"] == 4 and set(state) >= {"model", "optimizer", "scheduler", "scaler", "rng", "config"}
    assert state["config"]["model"]["descriptor_dim"] == 64 and state["config"]["train"]["crop"] == 48
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in logged if r["split"] == "val"]
    assert len(val) == 2 and {"mma", "repeatability", "f1"} <= set(val[0])
    # the files load as models
    for name in ("last.pt", "model.safetensors"):
        model = SiLK.from_checkpoint(run / name)
        assert model.config.descriptor_dim == 64
    torch.testing.assert_close(SiLK.from_checkpoint(run / "last.pt").state_dict(),
                               SiLK.from_checkpoint(run / "model.safetensors").state_dict())

    # interrupted after 2 steps, then resumed: the same losses as the uninterrupted run
    first, _ = _losses(_config(images, tmp_path / "b", steps=2))
    with pytest.raises(SilkError, match="--resume"):
        train(_config(images, tmp_path / "b"))
    second, result = _losses(resume_config(load_run_config(tmp_path / "b"), {"steps": 4}), resume=True)
    assert result["step"] == 4
    assert {**first, **second} == full


def test_weight_average_and_cosine_schedule(images, tmp_path):
    config = _config(images, tmp_path / "a", ema_decay=0.9, lr_schedule="cosine", lr_min_ratio=0.1, val_every=0)
    full, _ = _losses(config)
    state = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    assert state["ema"]["updates"] == 4
    raw, avg = state["model"], state["ema"]["weights"]
    assert any(not torch.equal(raw[k], avg[k]) for k in raw if raw[k].is_floating_point())
    # the files load as the average; the lr decayed to lr_min_ratio at the last step
    for name in ("last.pt", "model.safetensors"):
        torch.testing.assert_close(SiLK.from_checkpoint(tmp_path / "a" / name).state_dict(), avg)
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert lrs[-1] == pytest.approx(0.1 * config.lr * 2 ** 0.5) and lrs[0] > lrs[-1]
    # interrupted (Ctrl-C after step 2) and resumed: the same losses and the same average
    def interrupt(step, metrics):
        if step == 2:
            signal.raise_signal(signal.SIGINT)

    config_b = replace(config, out=str(tmp_path / "b"))
    assert train(config_b, callback=interrupt)["step"] == 2
    second, _ = _losses(config_b, resume=True)
    assert second == {k: v for k, v in full.items() if k > 2}
    resumed = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["ema"]["weights"]
    torch.testing.assert_close(resumed, avg)
    with pytest.raises(SilkError, match="ema_decay"):
        _config(images, tmp_path, ema_decay=1.0)
    with pytest.raises(SilkError, match="lr_schedule"):
        _config(images, tmp_path, lr_schedule="step")


def test_ctrl_c_saves_and_resume_continues(images, tmp_path):
    def interrupt(step, metrics):
        if step == 1:
            signal.raise_signal(signal.SIGINT)

    config = _config(images, tmp_path, steps=3, ckpt_every=100, val_every=0)
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when pytest was started under nohup or with &
    result = train(config, callback=interrupt)
    assert result["interrupted"] and result["step"] == 1
    assert torch.load(tmp_path / "last.pt", weights_only=True)["step"] == 1
    assert not (tmp_path / "model.safetensors").exists()
    assert signal.getsignal(signal.SIGINT) is before  # the previous handler restored
    assert train(config, resume=True)["step"] == 3


def test_nan_loss_stops_and_keeps_last_good_checkpoint(images, tmp_path, monkeypatch):
    real = trainer.silk_loss
    calls = []

    def poisoned(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(trainer, "silk_loss", poisoned)
    with pytest.raises(SilkError, match=r"loss became nan at step 3.*last good checkpoint"):
        train(_config(images, tmp_path, val_every=0))
    assert torch.load(tmp_path / "last.pt", weights_only=True)["step"] == 2


def test_disk_full_leaves_no_corrupt_checkpoint(images, tmp_path, monkeypatch):
    real_save = torch.save
    calls = []

    def full_disk(obj, path, *a, **kw):
        calls.append(path)
        if len(calls) == 2:
            Path(path).write_bytes(b"partial")
            raise OSError(28, "No space left on device")
        return real_save(obj, path, *a, **kw)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(SilkError, match="no space left.*existing file is kept"):
        train(_config(images, tmp_path, val_every=0))
    assert torch.load(tmp_path / "last.pt", weights_only=True)["step"] == 2
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_init_from_original_checkpoint(images, tmp_path):
    config = _config(images, tmp_path, model="vgg4", init_from=str(PARITY_CKPT), steps=1, batch_size=1,
                     val_every=0, crop=40)
    train(config)
    tuned = SiLK.from_checkpoint(tmp_path / "model.safetensors")
    start = SiLK.from_checkpoint(PARITY_CKPT)
    assert tuned.config.in_channels == 1 and tuned.config.channels == (64, 64, 128, 128)
    diff = [float((a - b).detach().abs().max()) for a, b in zip(tuned.parameters(), start.parameters())]
    assert 0 < max(diff) < 1e-2  # one Adam step of size ~1e-4 per weight


def test_bad_input(images, tmp_path):
    with pytest.raises(SilkError, match="no usable training images"):
        train(_config(tmp_path, tmp_path / "run"))
    with pytest.raises(SilkError, match="too few"):
        train(_config(images, tmp_path / "run2", batch_size=50))
    with pytest.raises(SilkError, match="unknown keys"):
        TrainConfig.from_dict({"learning_rate": 1})
    with pytest.raises(SilkError, match="augment"):
        TrainConfig(augment="strong")
    with pytest.raises(SilkError, match="unknown model variant"):
        train(_config(images, tmp_path / "run3", model="huge"))
    with pytest.raises(SilkError, match="nothing to resume"):
        train(_config(images, tmp_path / "run4"), resume=True)
    with pytest.raises(SilkError, match="cannot change.*lr"):
        resume_config(TrainConfig(), {"lr": 1.0, "steps": 5})


def test_cli_train_and_resume(images, tmp_path, capsys):
    cfg = tmp_path / "cfg.toml"
    cfg.write_text('model = "tiny"\ncrop = 48\nval_every = 0\n[loss]\ncells = 200\n[homography]\nfull_rotation = true\n')
    out = tmp_path / "run"
    assert main(["train", "--images", str(images), "--out", str(out), "--config", str(cfg), "--steps", "2",
                 "--threads", "1", "--ema", "0.9", "--lr-schedule", "cosine", "--augment", "lighting"]) == 0
    assert "trained 2 steps" in capsys.readouterr().out
    stored = load_run_config(out)
    assert stored.loss.cells == 200 and stored.homography.full_rotation and stored.model == "tiny"
    assert (stored.ema_decay, stored.lr_schedule, stored.augment) == (0.9, "cosine", "lighting")
    assert main(["train", "--out", str(out), "--resume", "--steps", "3"]) == 0
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 3
    assert main(["train", "--out", str(out / "x"), "--model", "tiny"]) == 2
    assert "--images DIR is required" in capsys.readouterr().err


def test_read_config_file(tmp_path):
    from silk_keypoints.training.trainer import read_config_file

    good = tmp_path / "c.json"
    good.write_text(json.dumps({"model": {"channels": [8, 16], "pool_after": [0], "padding": 1}, "steps": 3}))
    config = TrainConfig.from_dict(read_config_file(str(good)))
    assert config.model["channels"] == [8, 16] and config.steps == 3
    bad = tmp_path / "c.toml"
    bad.write_text("model = ")
    with pytest.raises(SilkError, match="cannot parse"):
        read_config_file(str(bad))
    with pytest.raises(SilkError, match="not found"):
        read_config_file(str(tmp_path / "none.json"))
