"""Shared fixtures: the original's parity checkpoint and outputs (small copies in tests/fixtures/parity); forked
child processes for the multi-process tests (no second torch import)."""

import multiprocessing as mp
import os
import socket
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"
PARITY = FIXTURES / "parity"

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def _build_the_onnx_op_registry_once() -> None:
    """torch's ONNX exporter rebuilds its table of op translations (~1.3 s) on every export; the suite exports
    about ten graphs, so it builds the table once per opset. Not done if torch's private layout changes."""
    try:
        from torch.onnx._internal.exporter import _registration
    except ImportError:
        return
    registry = getattr(_registration, "ONNXRegistry", None)
    build = getattr(getattr(registry, "from_torchlib", None), "__func__", None)
    if build is None:
        return
    built: dict = {}

    def from_torchlib(cls, opset_version=_registration._constants.TORCHLIB_OPSET):
        if opset_version not in built:
            built[opset_version] = build(cls, opset_version)
        return built[opset_version]

    registry.from_torchlib = classmethod(from_torchlib)


_build_the_onnx_op_registry_once()


@pytest.fixture(scope="session")
def parity_ckpt() -> Path:
    return PARITY / "silk_vgg4_random.ckpt"


@pytest.fixture(scope="session")
def parity_ref() -> dict:
    with np.load(PARITY / "vgg4_outputs_subset.npz") as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="session")
def parity_model(parity_ckpt):
    from silk_keypoints import SiLK

    return SiLK.from_checkpoint(parity_ckpt)


def original_to_ours(positions: np.ndarray) -> np.ndarray:
    """Original image-coordinate rows (y+0.5, x+0.5, score) -> ours (x, y, score), centres at integers."""
    return np.stack([positions[..., 1] - 0.5, positions[..., 0] - 0.5, positions[..., 2]], axis=-1)


def sort_rows(positions: np.ndarray) -> np.ndarray:
    """Order (x, y, ...) rows row-major by (y, x), as the original returns them."""
    return positions[np.lexsort((positions[:, 0], positions[:, 1]))]


def forked(target: Callable[..., int], *args) -> tuple[int, int]:
    """Run ``target(*args)`` in a forked child -> (its exit code (negative: killed by that signal), its pid)."""
    proc = mp.get_context("fork").Process(target=_child, args=(target, *args))
    proc.start()
    proc.join(120)
    return proc.exitcode, proc.pid


def forked_ranks(target: Callable[[], int], world: int = 2) -> list[int]:
    """Run ``target()`` in ``world`` forked children with torch.distributed's environment (RANK, WORLD_SIZE,
    a free MASTER_PORT on 127.0.0.1), as torchrun sets it -> their exit codes."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    procs = [mp.get_context("fork").Process(target=_child, args=(_as_rank, rank, env, target)) for rank in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    return [p.exitcode for p in procs]


def _as_rank(rank: int, env: dict, target: Callable[[], int]) -> int:
    os.environ.update(env, RANK=str(rank), LOCAL_RANK=str(rank))
    return target()


def _child(target: Callable[..., int], *args) -> None:
    torch.set_num_threads(1)
    os._exit(target(*args))
