"""What changes over the steps of a run: the learning rate (warm-up, cosine decay) and an exponential
moving average (EMA) of the weights.

The SiLK keypoint head learns a moving target (which cells currently match), so the weights of single
checkpoints of a constant-rate run differ a lot in keypoint repeatability. Averaging the weights over the
last ~1/(1 - decay) steps and decaying the rate at the end both smooth that out.
"""

from __future__ import annotations

import copy
import math

import torch

SCHEDULES = ("constant", "cosine")


class WeightAverage:
    """``average = d * average + (1 - d) * weights`` after every step, with ``d = min(decay, (1 + k) / (10 + k))``
    at step ``k`` of this average (so an early average is not dominated by the initial weights).

    Floating-point parameters and buffers (BatchNorm statistics too) are averaged; integer buffers copied.
    ``model`` is a frozen eval-mode copy holding the average: validate and save that one.
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for avg, new in zip(self.model.state_dict().values(), model.state_dict().values()):
            if avg.is_floating_point():
                avg.lerp_(new.detach(), 1.0 - d)
            else:
                avg.copy_(new)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"updates": self.updates, "weights": {k: v.detach().cpu() for k, v in self.model.state_dict().items()}}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        self.model.load_state_dict(state["weights"])


def lr_factor(step: int, steps: int, warmup: int = 0, schedule: str = "constant", min_ratio: float = 0.0) -> float:
    """Multiplier of the base learning rate for optimisation step ``step`` (0-based) of ``steps``.

    A linear warm-up over ``warmup`` steps, then ``constant`` (the original) or ``cosine``: half a cosine from
    1 down to ``min_ratio`` at the last step.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; choose from {SCHEDULES}")
    factor = min(1.0, (step + 1) / max(1, warmup))
    if schedule == "cosine":
        t = min(1.0, max(0, step - warmup) / max(1, steps - warmup - 1))
        factor *= min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))
    return factor
