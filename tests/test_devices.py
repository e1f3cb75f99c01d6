"""The one device check."""

import pytest
import torch

from silk_keypoints import SilkError
from silk_keypoints.devices import resolve_device


def test_cpu_names_and_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("cpu:0") == torch.device("cpu", 0)


@pytest.mark.parametrize("name, message", [
    ("banana", "device 'banana': unknown device; use one of cpu, cuda, cuda:N, mps"),
    ("", "device '': unknown device"),
    ("meta", "device meta: unsupported device type 'meta'"),
])
def test_unknown_names_are_one_line_errors(name, message):
    with pytest.raises(SilkError, match=message) as e:
        resolve_device(name)
    assert "\n" not in str(e.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_cuda_on_a_machine_without_it_names_the_input():
    with pytest.raises(SilkError, match="^--device cuda:1: CUDA is not available on this machine$"):
        resolve_device("cuda:1", "--device")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_index_beyond_the_machine():
    assert resolve_device("cuda").type == "cuda"
    with pytest.raises(SilkError, match="CUDA device"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="checks a machine without MPS")
def test_mps_off_apple_silicon():
    with pytest.raises(SilkError, match="mps: MPS .* not available"):
        resolve_device("mps")
