"""Shared fixtures: the original's parity checkpoint and outputs (small copies in tests/fixtures/parity)."""

from pathlib import Path

import numpy as np
import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"
PARITY = FIXTURES / "parity"

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


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
