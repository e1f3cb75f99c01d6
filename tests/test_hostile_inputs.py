"""Hostile input, table-driven: every case ends in a clear error or a correct, documented result.

Each case names its outcome class: ``error`` (CLI: exit code 2 and one ``error:`` line on stderr, no
traceback; API: a :class:`SilkError`) with a phrase of the message, or ``ok`` (exit 0 / a return value) with a
check of the result. A case that raises anything else fails (a traceback). The counts per class are in
docs/reliability.md. Everything is generated here: a tiny random model, small images, hostile files.
"""

from __future__ import annotations

import errno
import json
import math
import os
import pickle
import signal
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import silk_keypoints.ecosystem.hloc as hloc_module
import silk_keypoints.files as files_module
from silk_keypoints import SiLK
from silk_keypoints.cli import main
from silk_keypoints.devices import resolve_device
from silk_keypoints.ecosystem.hloc import match_pairs, read_features
from silk_keypoints.errors import SilkError
from silk_keypoints.evaluation import hpatches, pose
from silk_keypoints.files import MAX_PIXELS, atomic_write, check_overwrite, make_dir
from silk_keypoints.geometry import estimate_fundamental, estimate_homography
from silk_keypoints.io import check_image_file_size, load_image
from silk_keypoints.model.config import SiLKConfig
from silk_keypoints.training import trainer
from silk_keypoints.training.trainer import TrainConfig, truncate_metrics

TINY = SiLKConfig(channels=(8, 8), blocks_per_stage=1, head_channels=8, descriptor_dim=16, max_keypoints=64)


# ------------------------------------------------------------------------------------------------ fixtures
def header_png(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares ``width`` x ``height`` (one tiny IDAT: only the header is ever read)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


class Payload:
    """Pickles to a call of ``open(marker, 'w')``: proof that a loader ran code if the marker appears."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def texture(h: int, w: int, seed: int, channels: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, channels), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).reshape(h, w, channels)


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("hostile")
    e: dict[str, Path] = {"dir": d}
    torch.manual_seed(0)
    model = SiLK(TINY).eval()
    model.save(d / "tiny.safetensors")
    e["tiny"] = d / "tiny.safetensors"
    for i, name in enumerate(("a.png", "b.png")):
        cv2.imwrite(str(d / name), texture(64, 80, i))
        e[name[0]] = d / name
    cv2.imwrite(str(d / "gray.jpg"), texture(64, 64, 3, 1)[:, :, 0])
    cv2.imwrite(str(d / "deep.png"), (texture(64, 64, 4).astype(np.uint16) * 257))
    cv2.imwrite(str(d / "rgba.png"), np.dstack([texture(64, 64, 5), np.full((64, 64), 255, np.uint8)]))
    cv2.imwrite(str(d / "small.png"), texture(4, 4, 6))
    (d / "empty.png").write_bytes(b"")
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    (d / "text.jpg").write_text("not an image\n" * 10)
    header_png(d / "bomb.png", 30000, 30000)
    header_png(d / "25mp.png", 5000, 5000)
    header_png(d / "phone.png", 4032, 3024)
    (d / "folder").mkdir()
    cv2.imwrite(str(d / "folder" / "x.png"), texture(64, 64, 7))
    (d / "folder" / "sub").mkdir()
    cv2.imwrite(str(d / "folder" / "sub" / "y.png"), texture(64, 64, 8))
    (d / "nothing").mkdir()
    big = texture(320, 400, 11)
    cv2.imwrite(str(d / "big.jpg"), big)
    cv2.imwrite(str(d / "big.png"), big)
    blob = np.zeros((320, 400), np.uint8)
    cv2.circle(blob, (203, 101), 6, 255, -1)
    cv2.imwrite(str(d / "blob.jpg"), cv2.GaussianBlur(blob, (0, 0), 3), [cv2.IMWRITE_JPEG_QUALITY, 100])
    (d / "pair").mkdir()
    for name in ("a.png", "b.png"):
        (d / "pair" / name).write_bytes((d / name).read_bytes())
    (d / "other").mkdir()
    cv2.imwrite(str(d / "other" / "a.png"), texture(64, 64, 9))
    (d / "afile").write_text("x")
    (d / "exists.h5").write_text("old")
    (d / "exists.png").write_text("old")
    (d / "exists.json").write_text("old")
    (d / "list.txt").write_text("a.png\nmissing.png\n")
    # training images: big enough for a 48 px crop
    (d / "train").mkdir()
    for i in range(6):
        cv2.imwrite(str(d / "train" / f"{i}.png"), texture(72, 72, 20 + i))
    # weight files
    (d / "garbage.pt").write_bytes(b"\x00garbage" * 50)
    e["marker"] = d / "PAYLOAD_RAN"
    torch.save({"state_dict": {"w": Payload(e["marker"])}}, d / "hostile.pt")
    torch.save(Payload(e["marker"]), d / "hostile_top.pt")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    nan_state = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()}
    SiLK(TINY).save(d / "nan.safetensors")
    save_file({k: v.contiguous() for k, v in nan_state.items()}, str(d / "nan.safetensors"),
              metadata={"format": "silk-keypoints-weights", "config": TINY.to_json(), "info": "{}"})
    for name, change in (("channels_abc", {"channels": "abc"}), ("dim_float", {"descriptor_dim": 64.5}),
                         ("unknown_key", {"chanels": [8, 8]}), ("neg_channels", {"channels": [-1, 8]})):
        meta = {"format": "silk-keypoints-weights", "config": json.dumps({**TINY.to_dict(), **change}), "info": "{}"}
        save_file({k: v.contiguous() for k, v in state.items()}, str(d / f"{name}.safetensors"), metadata=meta)
    save_file({k: v.contiguous() for k, v in state.items()}, str(d / "nometa.safetensors"))
    torch.save({"model": state, "config": {"model": TINY.to_dict()}, "ema": {"decay": 0.9}}, d / "ema.pt")
    torch.save({"model": state, "config": {"model": {**TINY.to_dict(), "channels": "abc"}}}, d / "cfg.pt")
    torch.save([1, 2, 3], d / "list.pt")
    # hloc files
    assert main(["extract", str(e["a"]), str(e["b"]), "--out", str(d / "features.h5"),
                 "--checkpoint", str(e["tiny"])]) == 0
    (d / "pairs.txt").write_text("a.png b.png\n")
    assert main(["make-testdata", "hpatches", "--out", str(d / "hp"), "--count", "1", "--size", "64x48"]) == 0
    (d / "pairs_unknown.txt").write_text("a.png zzz.png\n")
    with h5py.File(d / "nodesc.h5", "w") as f:
        f.create_group("a.png").create_dataset("keypoints", data=np.zeros((3, 2), np.float32))
        g = f.create_group("b.png")
        g.create_dataset("keypoints", data=np.zeros((3, 2), np.float32))
        g.create_dataset("descriptors", data=np.zeros((16, 3), np.float32))
    with h5py.File(d / "badshape.h5", "w") as f:
        for n in ("a.png", "b.png"):
            g = f.create_group(n)
            g.create_dataset("keypoints", data=np.zeros((3, 2), np.float32))
            g.create_dataset("descriptors", data=np.zeros((16, 5), np.float32))
    with h5py.File(d / "nandesc.h5", "w") as f:
        for n in ("a.png", "b.png"):
            g = f.create_group(n)
            g.create_dataset("keypoints", data=np.zeros((3, 2), np.float32))
            g.create_dataset("descriptors", data=np.full((16, 3), np.nan, np.float32))
    # training configs
    configs = {
        "steps_abc.json": '{"steps": "abc"}',
        "crop_big.toml": 'crop = "big"',
        "cellz.json": '{"loss": {"cellz": 5}}',
        "scale_x.json": '{"homography": {"scale": "x"}}',
        "scale_3.json": '{"homography": {"scale": [0.1, 0.2, 0.3]}}',
        "toplist.json": "[1, 2]",
        "broken.json": '{"steps": ',
        "broken.toml": "steps = = 3",
        "loss_int.json": '{"loss": 3}',
        "model_abc.json": '{"model": {"channels": "abc"}}',
        "model_huge.json": '{"model": "huge"}',
        "lr_neg.json": '{"lr": -1}',
        "lr_str.json": '{"lr": "fast"}',
        "amp_str.json": '{"amp": "yes"}',
        "unknown.json": '{"learning_rate": 1}',
        "cells_float.json": '{"loss": {"cells": 2.5}}',
        "threads_neg.json": '{"threads": -2}',
        "workers_neg.json": '{"workers": -1}',
        "steps_bool.json": '{"steps": true}',
        "null_crop.json": '{"crop": null}',
        "tiny.json": json.dumps({"model": TINY.to_dict(), "loss": {"cells": 64}}),
    }
    (d / "configs").mkdir()
    for name, text in configs.items():
        (d / "configs" / name).write_text(text)
    # runs to resume
    for name, obj in (("hostile_run", {"format": "silk-keypoints-train", "model": Payload(e["marker"])}),
                      ("format_run", {"x": 1}),
                      ("damaged_run", {"format": "silk-keypoints-train", "model": {}, "step": "x"})):
        (d / name).mkdir()
        torch.save(obj, d / name / "last.pt")
    (d / "garbage_run").mkdir()
    (d / "garbage_run" / "last.pt").write_bytes(b"junk" * 10)
    (d / "held_run").mkdir()
    (d / "held_run" / "model.safetensors").write_text("x")
    e.update({k: d / k for k in ("features.h5", "pairs.txt")})
    return e


# ------------------------------------------------------------------------------------------------ cases
@dataclass
class Case:
    """``argv`` (a CLI case: a list with ``{name}`` placeholders of :func:`env` paths and ``{tmp}``) or
    ``call`` (an API case: a function of (env, tmp)); ``expect`` "error" with ``phrase`` in the message, or
    "ok" with ``check(env, tmp, out)`` (out: stdout for the CLI, the return value for the API)."""

    id: str
    expect: str
    phrase: str = ""
    argv: list[str] | None = None
    call: Callable[[dict, Path], Any] | None = None
    check: Callable[[dict, Path, Any], None] | None = None
    setup: Callable[[dict, Path, Any], None] | None = None  # (env, tmp, monkeypatch)
    extra: dict = field(default_factory=dict)


def err(id: str, argv: str, phrase: str, setup=None) -> Case:
    return Case(id, "error", phrase, argv=argv.split(), setup=setup)


def ok(id: str, argv: str, check, setup=None) -> Case:
    return Case(id, "ok", argv=argv.split(), check=check, setup=setup)


def api_err(id: str, call, phrase: str, setup=None) -> Case:
    return Case(id, "error", phrase, call=call, setup=setup)


def api_ok(id: str, call, check, setup=None) -> Case:
    return Case(id, "ok", call=call, check=check, setup=setup)


EXTRACT = "extract {a} --out {tmp}/f.h5 --checkpoint {tiny}"
MATCH = "match {a} {b} --out {tmp}/m.png --checkpoint {tiny}"
DEMO = "demo --out {tmp}/demo --checkpoint {tiny}"
TRAIN = "train --images {dir}/train --out {tmp}/run --steps 2 --crop 48 --val-every 0 --threads 1"
CFG = "train --images {dir}/train --out {tmp}/run --config {dir}/configs/"
HP = "eval hpatches {tmp}/nohp --checkpoint {tiny}"
NPZ = "export-npz {a} --out {tmp}/npz --checkpoint {tiny}"
MP = "match-pairs {pairs.txt} --features {features.h5} --out {tmp}/m.h5"
ONNX = "export onnx --checkpoint {tiny} --out {tmp}/m.onnx"


def no_cuda(message: str) -> str:
    return message if not torch.cuda.is_available() else ""


def _h5_writes_fail(mp, code: int) -> None:
    """h5py files opened for writing (resumable outputs, written in place) fail with ``code``."""
    real = hloc_module.h5py.File

    def open_file(name, mode="r", *a, **k):
        if mode != "r":
            raise OSError(code, os.strerror(code))
        return real(name, mode, *a, **k)

    mp.setattr(hloc_module.h5py, "File", open_file)


def read_only(env, tmp, mp):
    def refuse(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    mp.setattr(files_module.tempfile, "mkstemp", refuse)
    _h5_writes_fail(mp, errno.EROFS)


def full_disk(env, tmp, mp):
    def refuse(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    mp.setattr(files_module.os, "replace", refuse)
    _h5_writes_fail(mp, errno.ENOSPC)


def torch_full_disk(env, tmp, mp):
    def refuse(obj, f, *a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0")

    mp.setattr(torch, "save", refuse)


def existing(name: str):
    def make(env, tmp, mp):
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("old")

    return make


def folder(name: str):
    return lambda env, tmp, mp: (tmp / name).mkdir(parents=True)


def h5_keypoints(name: str):
    def check(env, tmp, out):
        with h5py.File(tmp / "f.h5", "r") as f:
            kp = f[name]["keypoints"][()]
            w, h = f[name]["image_size"][()]
            assert len(kp) > 0 and (kp >= -0.5).all() and (kp[:, 0] <= w - 0.5).all() and (kp[:, 1] <= h - 0.5).all()

    return check


def no_file(name: str):
    def check_none(env, tmp):
        assert not (tmp / name).exists() and not list(tmp.glob(f".{Path(name).name}.*"))

    return check_none


CLI_CASES = [
    # ---------------------------------------------------------------- detection options (extract, match, ...)
    err("extract-max-keypoints-neg", EXTRACT + " --max-keypoints -5", "--max-keypoints must be an integer >= 1"),
    err("extract-max-keypoints-0", EXTRACT + " --max-keypoints 0", "--max-keypoints must be an integer >= 1"),
    err("extract-max-keypoints-float", EXTRACT + " --max-keypoints 2.5", "invalid int value: '2.5'"),
    err("extract-threshold-1.5", EXTRACT + " --threshold 1.5", "--threshold must be a number in [0, 1)"),
    err("extract-threshold-nan", EXTRACT + " --threshold nan", "--threshold must be a number in [0, 1)"),
    err("extract-threshold-neg", EXTRACT + " --threshold -0.1", "--threshold must be a number in [0, 1)"),
    err("extract-threshold-1", EXTRACT + " --threshold 1", "--threshold must be a number in [0, 1)"),
    err("extract-nms-neg", EXTRACT + " --nms -3", "--nms must be an integer >= 0"),
    err("extract-resize-neg", EXTRACT + " --resize -5", "--resize must be a long side in pixels >= 1"),
    err("extract-resize-0", EXTRACT + " --resize 0", "--resize must be a long side in pixels >= 1"),
    err("extract-max-pixels-0", EXTRACT + " --max-pixels 0", "must be a number of pixels >= 1"),
    err("extract-max-pixels-abc", EXTRACT + " --max-pixels abc", "expected a number of pixels"),
    err("extract-max-pixels-inf", EXTRACT + " --max-pixels inf", "must be a number of pixels >= 1"),
    err("extract-over-max-pixels", EXTRACT + " --max-pixels 1000", "pass --max-pixels 5120"),
    err("match-max-keypoints-neg", MATCH + " --max-keypoints -5", "--max-keypoints must be an integer >= 1"),
    err("match-threshold-1.5", MATCH + " --threshold 1.5", "--threshold must be a number in [0, 1)"),
    err("match-nms-neg", MATCH + " --nms -3", "--nms must be an integer >= 0"),
    err("match-ransac-neg", MATCH + " --ransac-threshold -1", "--ransac-threshold) must be a positive"),
    err("match-ransac-0", MATCH + " --ransac-threshold 0", "--ransac-threshold) must be a positive"),
    err("match-ransac-nan", MATCH + " --ransac-threshold nan", "--ransac-threshold) must be a positive"),
    err("match-fundamental-ransac-neg", MATCH + " --geometry fundamental --ransac-threshold -2",
        "must be a positive"),
    err("demo-max-keypoints-neg", DEMO + " --max-keypoints -5", "--max-keypoints must be an integer >= 1"),
    err("demo-max-keypoints-0", DEMO + " --max-keypoints 0", "--max-keypoints must be an integer >= 1"),
    err("eval-max-keypoints-neg", HP + " --max-keypoints -5", "--max-keypoints must be an integer >= 1"),
    err("eval-max-keypoints-0", HP + " --max-keypoints 0", "--max-keypoints must be an integer >= 1"),
    err("npz-max-keypoints-neg", NPZ + " --max-keypoints -5", "--max-keypoints must be an integer >= 1"),
    err("colmap-max-keypoints-neg", "colmap --images {dir}/folder --database {tmp}/db --checkpoint {tiny} "
        "--max-keypoints -5", "--max-keypoints must be an integer >= 1"),
    # ---------------------------------------------------------------- devices
    err("extract-device-banana", EXTRACT + " --device banana", "--device 'banana': unknown device"),
    err("extract-device-xla", EXTRACT + " --device xla", "use one of cpu, cuda, cuda:N, mps"),
    err("extract-device-mps", EXTRACT + " --device mps", "MPS (Apple GPU) is not available"),
    err("extract-device-cuda", EXTRACT + " --device cuda:9", "cuda:9"),
    err("match-device-banana", MATCH + " --device banana", "unknown device"),
    err("match-pairs-device-banana", MP + " --device banana", "unknown device"),
    err("match-pairs-device-mps", MP + " --device mps", "not available on this machine"),
    err("eval-device-banana", HP + " --device banana", "unknown device"),
    err("train-device-banana", TRAIN + " --device banana", "unknown device"),
    err("train-device-mps", TRAIN + " --device mps", "MPS (Apple GPU) is not available"),
    # ---------------------------------------------------------------- image files
    err("extract-missing-image", "extract {dir}/nope.png --out {tmp}/f.h5 --checkpoint {tiny}", "image not found"),
    err("extract-empty-image", "extract {dir}/empty.png --out {tmp}/f.h5 --checkpoint {tiny}", "is empty (0 bytes)"),
    err("extract-corrupt-png", "extract {dir}/corrupt.png --out {tmp}/f.h5 --checkpoint {tiny}", "cannot decode image"),
    err("extract-text-as-jpg", "extract {dir}/text.jpg --out {tmp}/f.h5 --checkpoint {tiny}", "cannot decode image"),
    err("extract-too-small", "extract {dir}/small.png --out {tmp}/f.h5 --checkpoint {tiny}", "is too small"),
    err("extract-bomb-30000", "extract {dir}/bomb.png --out {tmp}/f.h5 --checkpoint {tiny}",
        "decompression-bomb limit); refused before decoding"),
    err("extract-25mp-header", "extract {dir}/25mp.png --out {tmp}/f.h5 --checkpoint {tiny}",
        "more than the limit of 16 MP; refused before decoding: pass --max-pixels 25000000"),
    err("extract-empty-folder", "extract {dir}/nothing --out {tmp}/f.h5 --checkpoint {tiny}", "no images in folder"),
    err("extract-outside-root", EXTRACT + " --root {dir}/folder", "is not inside --root"),
    err("extract-duplicate-names", "extract {a} {dir}/other/a.png --out {tmp}/f.h5 --checkpoint {tiny}",
        "two images get the name 'a.png'"),
    err("extract-image-list-missing", "extract --image-list {dir}/nolist.txt --out {tmp}/f.h5 --checkpoint {tiny}",
        "image list not found"),
    err("extract-image-list-bad-line", "extract --image-list {dir}/list.txt --root {dir} --out {tmp}/f.h5 "
        "--checkpoint {tiny}", "line 'missing.png'"),
    err("extract-no-images", "extract --out {tmp}/f.h5 --checkpoint {tiny}", "no images given"),
    err("match-missing-image", "match {a} {dir}/nope.png --out {tmp}/m.png --checkpoint {tiny}", "image not found"),
    err("match-folder-as-image", "match {a} {dir}/folder --out {tmp}/m.png --checkpoint {tiny}", "is a folder"),
    err("match-bomb", "match {a} {dir}/bomb.png --out {tmp}/m.png --checkpoint {tiny}", "refused before decoding"),
    err("match-over-max-pixels", MATCH + " --max-pixels 4000", "pass --max-pixels 5120"),
    err("npz-bomb", "export-npz {dir}/bomb.png --out {tmp}/npz --checkpoint {tiny}", "refused before decoding"),
    ok("extract-ok", EXTRACT, h5_keypoints("a.png")),
    ok("extract-16-bit", "extract {dir}/deep.png --out {tmp}/f.h5 --checkpoint {tiny}", h5_keypoints("deep.png")),
    ok("extract-gray-jpeg", "extract {dir}/gray.jpg --out {tmp}/f.h5 --checkpoint {tiny}", h5_keypoints("gray.jpg")),
    ok("extract-rgba", "extract {dir}/rgba.png --out {tmp}/f.h5 --checkpoint {tiny}", h5_keypoints("rgba.png")),
    ok("extract-folder", "extract {dir}/folder --out {tmp}/f.h5 --checkpoint {tiny}", h5_keypoints("sub/y.png")),
    ok("extract-resize", EXTRACT + " --resize 40", h5_keypoints("a.png")),
    ok("extract-max-pixels-exact", EXTRACT + " --max-pixels 5120", h5_keypoints("a.png")),
    ok("extract-max-pixels-e-notation", EXTRACT + " --max-pixels 1e4", h5_keypoints("a.png")),
    ok("extract-jpeg-decoded-shrunk", "extract {dir}/big.jpg --out {tmp}/f.h5 --checkpoint {tiny} --resize 64 "
       "--max-pixels 20000", lambda e, t, out: (h5_keypoints("big.jpg")(e, t, out), list(
           h5py.File(t / "f.h5", "r")["big.jpg"]["image_size"][()]) == [400, 320])[1]),
    err("extract-png-not-shrunk", "extract {dir}/big.png --out {tmp}/f.h5 --checkpoint {tiny} --resize 64 "
        "--max-pixels 20000", "more than the limit of 0.02 MP"),
    ok("extract-nms-0", EXTRACT + " --nms 0 --threshold 0", h5_keypoints("a.png")),
    # ---------------------------------------------------------------- outputs: the overwrite rule, paths
    err("extract-out-not-ours", "extract {a} --out {dir}/exists.h5 --checkpoint {tiny}",
        "cannot resume"),
    err("extract-out-folder-overwrite", EXTRACT.replace("{tmp}/f.h5", "{tmp}/d") + " --overwrite",
        "output path is a folder, expected a file", setup=folder("d")),
    err("extract-out-trailing-slash", EXTRACT.replace("{tmp}/f.h5", "{tmp}/newdir/"), "ends with '/'"),
    err("extract-out-under-file", EXTRACT.replace("{tmp}/f.h5", "{dir}/afile/f.h5"), "afile is a file, not a folder"),
    err("extract-out-missing-folder", EXTRACT.replace("{tmp}/f.h5", "{tmp}/no/where/f.h5"),
        "output folder does not exist"),
    err("extract-read-only", EXTRACT, "read-only file system", setup=read_only),
    err("extract-full-disk", EXTRACT, "no space left on device (disk full)", setup=full_disk),
    ok("extract-overwrite", EXTRACT + " --overwrite", h5_keypoints("a.png"), setup=existing("f.h5")),
    err("match-out-exists", MATCH, "m.png exists: pass --overwrite", setup=existing("m.png")),
    err("match-json-exists", MATCH + " --json {tmp}/r.json", "r.json exists: pass --overwrite",
        setup=existing("r.json")),
    err("match-out-format", MATCH.replace("m.png", "m.txt"), "unsupported picture format '.txt'"),
    err("match-out-trailing-slash", MATCH.replace("{tmp}/m.png", "{tmp}/newdir/"), "ends with '/'"),
    err("match-out-folder", MATCH.replace("m.png", "d.png") + " --overwrite", "is a folder", setup=folder("d.png")),
    err("match-json-under-file", MATCH + " --json {dir}/afile/r.json", "afile is a file, not a folder"),
    err("match-keypoints-out-under-file", MATCH + " --keypoints-out {dir}/afile/kp", "afile is a file, not a folder"),
    err("match-read-only", MATCH, "read-only file system", setup=read_only),
    err("match-full-disk", MATCH + " --json {tmp}/r.json", "no space left on device", setup=full_disk),
    err("demo-exists", DEMO, "exists: pass --overwrite", setup=existing("demo/matches.png")),
    err("demo-out-file", "demo --out {dir}/afile --checkpoint {tiny}", "afile is a file, expected a folder"),
    err("demo-read-only-folder", "demo --out {tmp}/ro/demo --checkpoint {tiny}", "read-only file system",
        setup=lambda e, t, mp: mp.setattr(Path, "mkdir", lambda *a, **k: (_ for _ in ()).throw(
            OSError(errno.EROFS, "Read-only file system")))),
    err("pairs-out-exists", "pairs exhaustive --features {features.h5} --out {tmp}/p.txt", "exists: pass --overwrite",
        setup=existing("p.txt")),
    err("pairs-read-only", "pairs exhaustive --features {features.h5} --out {tmp}/p.txt", "read-only file system",
        setup=read_only),
    err("pairs-full-disk", "pairs exhaustive --features {features.h5} --out {tmp}/p.txt", "no space left",
        setup=full_disk),
    err("pairs-window-0", "pairs sequential --features {features.h5} --out {tmp}/p.txt --window 0", "window"),
    err("pairs-empty-folder", "pairs exhaustive --images {dir}/nothing --out {tmp}/p.txt", "no images"),
    err("pairs-features-missing", "pairs exhaustive --features {dir}/no.h5 --out {tmp}/p.txt", "file not found"),
    err("pairs-features-not-h5", "pairs exhaustive --features {dir}/afile --out {tmp}/p.txt", "not an HDF5 file"),
    ok("pairs-ok", "pairs exhaustive --features {features.h5} --out {tmp}/p.txt",
       lambda e, t, out: (t / "p.txt").read_text() == "a.png b.png\n"),
    err("match-pairs-no-descriptors", MP.replace("{features.h5}", "{dir}/nodesc.h5"), "no descriptors"),
    err("match-pairs-bad-shapes", MP.replace("{features.h5}", "{dir}/badshape.h5"),
        "keypoints must be (N, 2) and descriptors (D, N)"),
    err("match-pairs-nan-descriptors", MP.replace("{features.h5}", "{dir}/nandesc.h5"),
        "descriptors must be finite numbers"),
    err("match-pairs-unknown-image", MP.replace("{pairs.txt}", "{dir}/pairs_unknown.txt"), "zzz.png"),
    err("match-pairs-pairs-missing", MP.replace("{pairs.txt}", "{dir}/nopairs.txt"), "not found"),
    err("match-pairs-out-not-ours", MP, "cannot resume", setup=existing("m.h5")),
    err("match-pairs-read-only", MP, "read-only file system", setup=read_only),
    err("match-pairs-full-disk", MP, "no space left on device", setup=full_disk),
    err("match-pairs-out-under-file", MP.replace("{tmp}/m.h5", "{dir}/afile/m.h5"), "afile is a file, not a folder"),
    ok("match-pairs-ok", MP, lambda e, t, out: h5py.File(t / "m.h5", "r")["a.png"]["b.png"]["matches0"].shape),
    err("npz-out-under-file", NPZ.replace("{tmp}/npz", "{dir}/afile/npz"), "afile is a file, not a folder"),
    err("npz-out-file", NPZ.replace("{tmp}/npz", "{dir}/afile"), "afile is a file, expected a folder"),
    err("npz-read-only", NPZ, "read-only file system", setup=read_only),
    err("npz-full-disk", NPZ, "no space left on device", setup=full_disk),
    err("npz-exists", NPZ, "a.png.npz exists: pass --overwrite", setup=existing("npz/a.png.npz")),
    err("npz-both-sources", NPZ + " --features {features.h5}", "give either IMAGE files or --features"),
    ok("npz-ok", NPZ, lambda e, t, out: np.load(t / "npz" / "a.png.npz")["keypoints"].shape[1] == 2),
    err("colmap-full-disk", "colmap --images {dir}/pair --database {tmp}/db --features {features.h5} --no-verify",
        "no space left on device", setup=full_disk),
    err("colmap-database-garbage", "colmap --images {dir}/pair --database {dir}/afile --features {features.h5} "
        "--no-verify", "afile"),
    err("extract-image-list-folder", "extract --image-list {dir}/folder --out {tmp}/f.h5 --checkpoint {tiny}",
        "image list {dir}/folder is a folder, expected a file"),
    err("colmap-images-missing", "colmap --images {dir}/none --database {tmp}/db --checkpoint {tiny}", "not found"),
    err("colmap-read-only", "colmap --images {dir}/pair --database {tmp}/db --features {features.h5} --no-verify",
        "read-only file system", setup=read_only),
    # ---------------------------------------------------------------- weight files
    err("extract-checkpoint-missing", "extract {a} --out {tmp}/f.h5 --checkpoint {dir}/no.pt", "checkpoint not found"),
    err("extract-checkpoint-folder", "extract {a} --out {tmp}/f.h5 --checkpoint {dir}/folder", "is a folder"),
    err("extract-checkpoint-empty", "extract {a} --out {tmp}/f.h5 --checkpoint {dir}/empty.png", "is empty"),
    err("extract-checkpoint-garbage", "extract {a} --out {tmp}/f.h5 --checkpoint {dir}/garbage.pt",
        "corrupt, truncated or not a torch file"),
    err("extract-checkpoint-hostile", "extract {a} --out {tmp}/f.h5 --checkpoint {dir}/hostile.pt",
        "not plain tensors/containers (refused for safety)"),
    err("extract-checkpoint-hostile-top", "extract {a} --out {tmp}/f.h5 --checkpoint {dir}/hostile_top.pt",
        "refused for safety"),
    err("extract-checkpoint-list", "extract {a} --out {tmp}/f.h5 --checkpoint {dir}/list.pt", "expected a dict"),
    err("extract-checkpoint-nan", "extract {a} --out {tmp}/f.h5 --checkpoint {dir}/nan.safetensors",
        "contain NaN or inf values"),
    err("extract-config-channels-abc", "extract {a} --out {tmp}/f.h5 --checkpoint {dir}/channels_abc.safetensors",
        "'channels' must be a list of integers"),
    err("extract-config-dim-float", "extract {a} --out {tmp}/f.h5 --checkpoint {dir}/dim_float.safetensors",
        "'descriptor_dim' must be an integer, got 64.5"),
    err("extract-config-unknown", "extract {a} --out {tmp}/f.h5 --checkpoint {dir}/unknown_key.safetensors",
        "unknown keys ['chanels']"),
    err("extract-config-negative", "extract {a} --out {tmp}/f.h5 --checkpoint {dir}/neg_channels.safetensors",
        "channels must be a non-empty list of positive ints"),
    err("extract-no-metadata", "extract {a} --out {tmp}/f.h5 --checkpoint {dir}/nometa.safetensors",
        "is not a silk-keypoints-weights file"),
    err("extract-ema-without-weights", "extract {a} --out {tmp}/f.h5 --checkpoint {dir}/ema.pt",
        "'ema' (the weight average) has no 'weights'"),
    err("extract-training-config-abc", "extract {a} --out {tmp}/f.h5 --checkpoint {dir}/cfg.pt",
        "'channels' must be a list of integers"),
    err("match-checkpoint-hostile", "match {a} {b} --out {tmp}/m.png --checkpoint {dir}/hostile.pt", "refused for safety"),
    err("demo-checkpoint-hostile", "demo --out {tmp}/d --checkpoint {dir}/hostile.pt", "refused for safety"),
    err("eval-checkpoint-hostile", "eval hpatches {dir}/hp --checkpoint {dir}/hostile.pt", "refused for safety"),
    err("onnx-checkpoint-hostile", "export onnx --checkpoint {dir}/hostile.pt --out {tmp}/m.onnx", "refused for safety"),
    err("npz-checkpoint-nan", "export-npz {a} --out {tmp}/npz --checkpoint {dir}/nan.safetensors", "NaN or inf"),
    err("train-init-from-hostile", TRAIN + " --init-from {dir}/hostile.pt", "refused for safety"),
    err("train-init-from-nan", TRAIN + " --init-from {dir}/nan.safetensors", "NaN or inf"),
    err("train-init-from-unknown", TRAIN + " --init-from nosuchmodel", "nosuchmodel"),
    # ---------------------------------------------------------------- ONNX export
    err("onnx-30000", ONNX + " --height 30000 --width 30000", "larger than max_pixels=16.0 MP"),
    err("onnx-static-30000", ONNX + " --static 30000 30000", "larger than max_pixels"),
    err("onnx-too-small", ONNX + " --static 4 4", "too small"),
    err("onnx-opset", ONNX + " --opset 11", "unsupported ONNX opset 11"),
    err("onnx-exists", ONNX, "m.onnx exists: pass --overwrite", setup=existing("m.onnx")),
    err("onnx-out-under-file", ONNX.replace("{tmp}/m.onnx", "{dir}/afile/m.onnx"), "afile is a file, not a folder"),
    # ---------------------------------------------------------------- evaluation
    err("eval-short-side-neg", HP + " --short-side -5", "--short-side (the HPatches protocol's short_side) must be >= 0"),
    err("eval-root-missing", HP, "not found"),
    err("eval-out-under-file", HP + " --out {dir}/afile/res", "afile is a file, not a folder"),
    err("eval-out-exists", HP + " --out {tmp}/res", "exists: pass --overwrite", setup=existing("res/hpatches-silk.json")),
    err("eval-pose-ransac-neg", "eval pose {tmp}/p.json --checkpoint {tiny} --ransac-threshold -1",
        "--ransac-threshold (the pose protocol's ransac_threshold) must be > 0"),
    err("eval-pose-resize-neg", "eval pose {tmp}/p.json --checkpoint {tiny} --resize -5", "--resize"),
    err("eval-pose-limit-0", "eval pose {tmp}/p.json --checkpoint {tiny} --limit 0", "--limit must be >= 1"),
    err("eval-registration-gap-0", "eval registration {tmp} --checkpoint {tiny} --frame-gap 0",
        "--frame-gap must be >= 1"),
    err("eval-registration-inlier-neg", "eval registration {tmp} --checkpoint {tiny} --inlier-threshold -1",
        "--inlier-threshold must be > 0"),
    err("eval-imc-resize-neg", "eval imc2022 {tmp}/t.csv --submission {tmp}/s.csv --checkpoint {tiny} --resize -5",
        "--resize must be a long side"),
    err("eval-imc-submission-exists", "eval imc2022 {tmp}/t.csv --submission {tmp}/s.csv --checkpoint {tiny}",
        "s.csv exists: pass --overwrite", setup=existing("s.csv")),
    err("testdata-count-0", "make-testdata hpatches --out {tmp}/hp --count 0", "--count must be >= 1"),
    err("testdata-size-small", "make-testdata hpatches --out {tmp}/hp --size 10x10", "at least 32x32"),
    err("testdata-size-abc", "make-testdata hpatches --out {tmp}/hp --size big", "--size must look like 320x240"),
    err("testdata-out-exists", "make-testdata hpatches --out {tmp}/hp", "hp exists: pass --overwrite",
        setup=existing("hp/old.txt")),
    err("testdata-out-file", "make-testdata hpatches --out {dir}/afile", "afile is a file, expected a folder"),
    err("testdata-out-under-file", "make-testdata pose --out {dir}/afile/x", "afile is a file, not a folder"),
    ok("testdata-ok", "make-testdata hpatches --out {tmp}/hp --count 1 --size 64x48",
       lambda e, t, out: sorted(p.name for p in (t / "hp").rglob("*.ppm"))[:1] == ["1.ppm"]),
    # ---------------------------------------------------------------- training
    err("train-config-steps-abc", CFG + "steps_abc.json", "'steps' must be an integer, got 'abc'"),
    err("train-config-crop-big", CFG + "crop_big.toml", "'crop' must be an integer, got 'big'"),
    err("train-config-loss-cellz", CFG + "cellz.json", "unknown keys ['loss.cellz']"),
    err("train-config-scale-x", CFG + "scale_x.json",
        "'homography.scale' must be a list of 2 numbers, got 'x'"),
    err("train-config-scale-3", CFG + "scale_3.json", "'homography.scale' must be a list of 2"),
    err("train-config-top-list", CFG + "toplist.json", "the top level must be a table"),
    err("train-config-broken-json", CFG + "broken.json", "cannot parse config file"),
    err("train-config-broken-toml", CFG + "broken.toml", "cannot parse config file"),
    err("train-config-loss-int", CFG + "loss_int.json", "'loss' must be a table of settings"),
    err("train-config-model-abc", CFG + "model_abc.json", "'model.channels' must be a list"),
    err("train-config-model-huge", CFG + "model_huge.json", "unknown model variant 'huge'"),
    err("train-config-lr-neg", CFG + "lr_neg.json", "lr must be positive"),
    err("train-config-lr-str", CFG + "lr_str.json", "'lr' must be a number, got 'fast'"),
    err("train-config-amp-str", CFG + "amp_str.json", "'amp' must be true or false"),
    err("train-config-unknown", CFG + "unknown.json", "unknown keys ['learning_rate']"),
    err("train-config-cells-float", CFG + "cells_float.json", "'loss.cells' must be an integer"),
    err("train-config-threads-neg", CFG + "threads_neg.json", "threads must be >= 1"),
    err("train-config-steps-bool", CFG + "steps_bool.json", "'steps' must be an integer, got True"),
    err("train-config-crop-null", CFG + "null_crop.json", "'crop' must be an integer, got None"),
    err("train-config-missing", CFG + "none.json", "config file not found"),
    err("train-threads-neg", TRAIN + " --threads -2", "threads must be >= 1"),
    err("train-workers-neg", TRAIN + " --workers -1", "workers must be >= 0"),
    err("train-steps-0", TRAIN + " --steps 0", "steps, batch_size, crop and lr must be positive"),
    err("train-loss-cells-0", TRAIN + " --loss-cells 0", "cells"),
    err("train-images-missing", TRAIN.replace("{dir}/train", "{dir}/none"), "not found"),
    err("train-out-file", TRAIN.replace("{tmp}/run", "{dir}/afile"), "--out {dir}/afile is a file"),
    err("train-out-under-file", TRAIN.replace("{tmp}/run", "{dir}/afile/run"), "afile is a file, not a folder"),
    err("train-read-only-out", TRAIN, "cannot create run folder", setup=lambda e, t, mp: mp.setattr(
        Path, "mkdir", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.EROFS, "Read-only file system")))),
    err("train-out-holds-run", TRAIN.replace("{tmp}/run", "{dir}/held_run"),
        "held_run exists and holds a run (model.safetensors): pass --resume to continue it, or --overwrite"),
    err("train-resume-and-overwrite", TRAIN + " --resume --overwrite", "pass one"),
    err("train-resume-nothing", TRAIN + " --resume", "nothing to resume"),
    err("train-resume-hostile", TRAIN.replace("{tmp}/run", "{dir}/hostile_run") + " --resume", "refused for safety"),
    err("train-resume-garbage", TRAIN.replace("{tmp}/run", "{dir}/garbage_run") + " --resume",
        "corrupt, truncated or not a torch file"),
    err("train-resume-not-ours", TRAIN.replace("{tmp}/run", "{dir}/format_run") + " --resume",
        "is not a silk-keypoints training checkpoint"),
    err("train-resume-damaged", TRAIN.replace("{tmp}/run", "{dir}/damaged_run") + " --resume",
        "is a damaged training checkpoint"),
    err("train-full-disk", TRAIN + " --ckpt-every 1 --config {dir}/configs/tiny.json",
        "last.pt: torch.save failed: [enforce fail at inline_container.cc:664]", setup=torch_full_disk),
]


def _tiny_config(env, tmp) -> TrainConfig:
    return TrainConfig(images=str(env["dir"] / "train"), out=str(tmp / "run"), model=TINY.to_dict(), steps=2,
                       crop=48, val_every=0, threads=1, ckpt_every=1, log_every=1, loss={"cells": 64})


def _train_then_resume(env, tmp):
    from silk_keypoints.training.trainer import train

    config = _tiny_config(env, tmp)
    train(config)
    log = tmp / "run" / "metrics.jsonl"
    log.write_text(log.read_text() + json.dumps({"split": "train", "step": 3, "loss": 1.0}) + "\n" + '{"torn')
    # a run killed after step 3 was logged but before its checkpoint: resume from step 2's last.pt
    train(TrainConfig(**{**config.to_dict(), "steps": 3, "homography": config.homography, "loss": config.loss}),
          resume=True)
    return [json.loads(line)["step"] for line in log.read_text().splitlines()]


def _train_overwrite(env, tmp):
    from silk_keypoints.training.trainer import train

    train(_tiny_config(env, tmp))
    (tmp / "run" / "best.pt").write_text("stale")
    return train(_tiny_config(env, tmp), overwrite=True), tmp / "run"


def _inert_marker_absent(env):
    assert not env["marker"].exists(), "a hostile checkpoint ran code"


def _extract(env, image, **options):
    return SiLK.from_checkpoint(env["tiny"]).extract(image, **options)


RGB = torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(0))

class BrightestPixel:
    """A stand-in model: one keypoint at the brightest pixel of the image it is given."""

    config = SiLKConfig(in_channels=1)

    def extract(self, image: torch.Tensor, neighbours: bool = False, **options) -> Any:
        """image: (1, 1, H, W) uint8, as image_features passes it."""
        from silk_keypoints.features import Features

        plane = image[0, 0].numpy()
        y, x = np.unravel_index(np.argmax(plane), plane.shape)
        h, w = plane.shape
        return Features.from_lists([torch.tensor([[float(x), float(y)]])], [torch.ones(1)], [torch.ones(1, 4)], (w, h))


def _blob(env, tmp, resize):
    from silk_keypoints.image_features import image_features

    return image_features(BrightestPixel(), env["dir"] / "blob.jpg", resize=resize)


API_CASES = [
    api_err("api-max-keypoints-neg", lambda e, t: _extract(e, RGB, max_keypoints=-5), "max_keypoints must be an integer >= 1"),
    api_err("api-max-keypoints-float", lambda e, t: _extract(e, RGB, max_keypoints=2.5), "got 2.5"),
    api_err("api-max-keypoints-bool", lambda e, t: _extract(e, RGB, max_keypoints=True), "got True"),
    api_err("api-max-keypoints-str", lambda e, t: _extract(e, RGB, max_keypoints="10"), "got '10'"),
    api_err("api-threshold-1.5", lambda e, t: _extract(e, RGB, detection_threshold=1.5), "in [0, 1)"),
    api_err("api-threshold-nan", lambda e, t: _extract(e, RGB, detection_threshold=math.nan), "in [0, 1)"),
    api_err("api-nms-neg", lambda e, t: _extract(e, RGB, nms_radius=-3), "nms_radius must be an integer >= 0"),
    api_err("api-remove-borders-neg", lambda e, t: _extract(e, RGB, remove_borders=-4), "remove_borders must be"),
    api_err("api-empty-batch", lambda e, t: _extract(e, torch.rand(0, 1, 64, 64)), "empty batch"),
    api_err("api-empty-batch-exact", lambda e, t: SiLK.from_checkpoint(e["tiny"]).extract(
        torch.rand(0, 1, 64, 64), exact=True), "empty batch"),
    api_err("api-float-0-255", lambda e, t: _extract(e, RGB * 255), "divide it by 255"),
    api_err("api-numpy-float-0-255", lambda e, t: _extract(e, np.full((64, 64), 200.0, np.float32)), "divide it by 255"),
    api_err("api-float-negative", lambda e, t: _extract(e, RGB - 0.5), "must be in [0, 1]"),
    api_err("api-nan-image", lambda e, t: _extract(e, torch.full((1, 1, 64, 64), math.nan)), "NaN or inf"),
    api_err("api-int32-tensor", lambda e, t: _extract(e, torch.zeros(1, 1, 64, 64, dtype=torch.int32)), "uint8"),
    api_err("api-5d-tensor", lambda e, t: _extract(e, torch.rand(1, 1, 1, 64, 64)), "got shape"),
    api_err("api-2-channels", lambda e, t: _extract(e, torch.rand(1, 2, 64, 64)), "1 or 3 channels"),
    api_err("api-list-input", lambda e, t: _extract(e, [[0.5]]), "expected a torch.Tensor or numpy.ndarray"),
    api_err("api-too-small", lambda e, t: _extract(e, torch.rand(1, 1, 4, 4)), "is too small"),
    api_err("api-over-max-pixels", lambda e, t: SiLK.from_checkpoint(e["tiny"], max_pixels=1000).extract(RGB),
            "--max-pixels N (Python: max_pixels=N)"),
    api_err("api-max-pixels-0", lambda e, t: SiLK.from_checkpoint(e["tiny"], max_pixels=0), "max_pixels must be >= 1"),
    api_ok("api-float-in-range", lambda e, t: _extract(e, RGB), lambda e, t, f: f["keypoints"].shape[-1] == 2),
    api_ok("api-float-rounding", lambda e, t: _extract(e, RGB * 1.005), lambda e, t, f: f["keypoints"].shape[0] == 1),
    api_ok("api-uint8", lambda e, t: _extract(e, (RGB * 255).to(torch.uint8)), lambda e, t, f: f["keypoints"].shape[0] == 1),
    api_ok("api-jpeg-shrunk-decode-maps-back", lambda e, t: _blob(e, t, 50), lambda e, t, f: (
        np.abs(f["keypoints"][0, 0].numpy() - (203, 101)).max() <= 4 and f["image_size"][0].tolist() == [400, 320])),
    api_ok("api-jpeg-full-decode-maps-back", lambda e, t: _blob(e, t, None),
           lambda e, t, f: np.abs(f["keypoints"][0, 0].numpy() - (203, 101)).max() <= 1),
    api_err("api-hostile-checkpoint", lambda e, t: SiLK.from_checkpoint(e["dir"] / "hostile.pt"), "refused for safety"),
    api_err("api-nan-weights", lambda e, t: SiLK.from_checkpoint(e["dir"] / "nan.safetensors"), "NaN or inf"),
    api_err("api-device-cuda", lambda e, t: SiLK(TINY).to("cuda:9"), "cuda:9"),
    api_err("api-device-banana", lambda e, t: SiLK(TINY).to("banana"), "unknown device"),
    api_err("api-resolve-mps", lambda e, t: resolve_device("mps"), "MPS (Apple GPU) is not available"),
    api_err("api-match-pairs-cuda", lambda e, t: match_pairs(e["features.h5"], [("a.png", "b.png")], t / "m.h5",
                                                              device="cuda:9"), "cuda:9"),
    api_err("api-read-features-no-descriptors", lambda e, t: read_features(e["dir"] / "nodesc.h5", "a.png"),
            "no descriptors"),
    api_err("api-load-image-folder", lambda e, t: load_image(e["dir"] / "folder"), "is a folder, not an image file"),
    api_err("api-load-image-bomb", lambda e, t: load_image(e["dir"] / "bomb.png"), "refused before decoding"),
    api_err("api-load-image-25mp", lambda e, t: load_image(e["dir"] / "25mp.png"), "max_pixels=25000000"),
    api_ok("api-phone-photo-accepted", lambda e, t: check_image_file_size(e["dir"] / "phone.png", MAX_PIXELS),
           lambda e, t, r: r is None),
    api_err("api-atomic-write-enospc", lambda e, t: atomic_write(t / "x.bin", lambda p: (_ for _ in ()).throw(
        OSError(errno.ENOSPC, "No space left on device"))), "cannot write"),
    api_err("api-make-dir-under-file", lambda e, t: make_dir(e["dir"] / "afile" / "sub"), "is a file, not a folder"),
    api_err("api-overwrite-trailing-slash", lambda e, t: check_overwrite(f"{t}/x/", True), "ends with '/'"),
    api_err("api-overwrite-folder", lambda e, t: check_overwrite(e["dir"] / "folder", True), "is a folder"),
    api_err("api-homography-threshold-neg", lambda e, t: estimate_homography(np.zeros((8, 2)), np.zeros((8, 2)), -1.0),
            "must be a positive number of pixels"),
    api_err("api-fundamental-threshold-nan", lambda e, t: estimate_fundamental(np.zeros((8, 2)), np.zeros((8, 2)),
                                                                                math.nan), "positive number"),
    api_err("api-hpatches-short-side-neg", lambda e, t: hpatches.get_protocol("silk", short_side=-5), "must be >= 0"),
    api_err("api-pose-ransac-0", lambda e, t: pose.get_protocol("scannet", ransac_threshold=0.0), "must be > 0"),
    api_err("api-train-config-list", lambda e, t: TrainConfig.from_dict([1]), "the top level must be a table"),
    api_err("api-train-config-nested", lambda e, t: TrainConfig.from_dict({"loss": {"cellz": 5}}), "loss.cellz"),
    api_err("api-train-config-scale", lambda e, t: TrainConfig.from_dict({"homography": {"scale": "x"}}),
            "homography.scale"),
    api_err("api-train-config-workers", lambda e, t: TrainConfig(workers=-1), "workers must be >= 0"),
    api_err("api-silk-config-channels", lambda e, t: SiLKConfig.from_dict({"channels": "abc"}), "'channels' must be"),
    api_err("api-silk-config-bool", lambda e, t: SiLKConfig.from_dict({"batch_norm": "no"}), "true or false"),
    api_ok("api-silk-config-list-to-tuple", lambda e, t: SiLKConfig.from_dict({"channels": [8, 8]}),
           lambda e, t, c: c.channels == (8, 8)),
    api_ok("api-train-config-nested-ok", lambda e, t: TrainConfig.from_dict({"homography": {"scale": [0.5, 0.8]}}),
           lambda e, t, c: c.homography.scale == (0.5, 0.8)),
    api_ok("api-truncate-metrics", lambda e, t: (
        (t / "m.jsonl").write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"ste'), truncate_metrics(t / "m.jsonl", 2),
        (t / "m.jsonl").read_text())[-1], lambda e, t, text: text == '{"step": 1}\n{"step": 2}\n'),
    api_ok("api-resume-truncates-metrics", _train_then_resume, lambda e, t, steps: steps == [1, 2, 3]),
    api_ok("api-train-overwrite", _train_overwrite,
           lambda e, t, r: r[0]["step"] == 2 and not (r[1] / "best.pt").exists()),
]

CASES = CLI_CASES + API_CASES


def _fill(arg: str, env: dict, tmp: Path) -> str:
    for key, value in env.items():
        arg = arg.replace("{" + key + "}", str(value))
    return arg.replace("{tmp}", str(tmp))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_case(case: Case, env, tmp_path, monkeypatch, capsys):
    if not case.phrase and case.expect == "error":
        pytest.fail("an error case needs a phrase of its message")
    if "cuda" in case.id and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.setattr(signal, "signal", lambda *a: None)  # main() ignores SIGINT after an interrupt
    monkeypatch.setattr(trainer, "_summary_writer", lambda run: None)  # no TensorBoard import: fast
    if case.setup is not None:
        case.setup(env, tmp_path, monkeypatch)
    if case.argv is not None:
        argv = [_fill(a, env, tmp_path) for a in case.argv]
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse: usage + one error line, exit code 2
            rc = e.code
        out, err = capsys.readouterr()
        monkeypatch.undo()
        assert "Traceback" not in err and "weights_only=False" not in err
        if case.expect == "error":
            lines = [line for line in err.splitlines() if "error:" in line]
            assert rc == 2 and len(lines) == 1, err
            assert _fill(case.phrase, env, tmp_path) in lines[0], lines[0]
        else:
            assert rc == 0, err
            assert case.check(env, tmp_path, out) is not False
    else:
        if case.expect == "error":
            with pytest.raises(SilkError) as info:
                case.call(env, tmp_path)
            monkeypatch.undo()
            assert "\n" not in str(info.value) and case.phrase in str(info.value), str(info.value)
        else:
            result = case.call(env, tmp_path)
            monkeypatch.undo()
            assert case.check(env, tmp_path, result) is not False
    _inert_marker_absent(env)
    if case.id.endswith(("read-only", "full-disk")):  # a failed write leaves no temp file behind
        assert not list(tmp_path.rglob(".*.tmp"))


def test_case_table_is_large_and_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 150
    assert all(c.expect in ("error", "ok") for c in CASES)


def test_onnx_refusal_leaves_no_file(env, tmp_path, capsys):
    assert main(["export", "onnx", "--checkpoint", str(env["tiny"]), "--out", str(tmp_path / "m.onnx"),
                 "--height", "30000", "--width", "30000"]) == 2
    assert list(tmp_path.iterdir()) == []


def test_interrupt_ignores_a_second_ctrl_c(env, tmp_path, monkeypatch, capsys):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "train", interrupted)
    before = signal.getsignal(signal.SIGINT)
    try:
        assert main(["train", "--images", str(env["dir"] / "train"), "--out", str(tmp_path / "r")]) == 130
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # the shutdown (atexit) cannot be interrupted
    finally:
        signal.signal(signal.SIGINT, before)
    assert "interrupted" in capsys.readouterr().err


def test_hostile_pickle_would_run_under_plain_torch_load(env, tmp_path):
    """The payload is real: a plain unpickler runs it (so the refusals above are meaningful)."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Payload(marker))).close()
    assert marker.exists()
