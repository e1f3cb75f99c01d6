"""The one device check: a device name (``cpu``, ``cuda``, ``cuda:1``, ``mps``) -> a usable ``torch.device``."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from .errors import SilkError

BACKENDS = ("cpu", "cuda", "mps")


def resolve_device(name: str | torch.device, what: str = "device") -> torch.device:
    """``name`` as a ``torch.device`` that this machine has.

    ``what`` names the input in the error (e.g. ``"--device"``). Raises :class:`SilkError` with one line for
    an unknown name (``"banana"``), a backend other than :data:`BACKENDS`, and a backend or CUDA index this
    machine does not have (``cuda`` on a CPU-only torch, ``mps`` off Apple silicon).
    """
    try:
        device = name if isinstance(name, torch.device) else torch.device(str(name).strip())
    except (RuntimeError, ValueError):
        raise SilkError(f"{what} {name!r}: unknown device; use one of cpu, cuda, cuda:N, mps") from None
    if device.type not in BACKENDS:
        raise SilkError(f"{what} {name}: unsupported device type {device.type!r}; use one of cpu, cuda, cuda:N, mps")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SilkError(f"{what} {name}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise SilkError(f"{what} {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise SilkError(f"{what} {name}: MPS (Apple GPU) is not available on this machine")
    return device


def setup_distributed(name: str | torch.device, what: str = "--device") -> tuple[int, int, torch.device]:
    """``(rank, world size, device)`` of this process; under ``torchrun`` (``WORLD_SIZE`` > 1) also joins the
    process group: nccl with ``cuda:LOCAL_RANK`` when ``name`` is a CUDA device, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(name, what)
    cuda = device.type == "cuda"
    if world == 1:
        return 0, 1, device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return rank, world, device
