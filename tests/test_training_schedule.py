"""Learning-rate schedules and the weight average."""

import itertools
import math

import pytest
import torch

from silk_keypoints.training.schedule import WeightAverage, lr_factor


def test_constant_schedule_with_warmup():
    assert [lr_factor(k, 10, warmup=4) for k in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_factor(0, 10) == 1.0 and lr_factor(9, 10) == 1.0


def test_cosine_schedule_reaches_min_ratio_at_last_step():
    f = [lr_factor(k, 11, schedule="cosine", min_ratio=0.1) for k in range(11)]
    assert f[0] == pytest.approx(1.0) and f[-1] == pytest.approx(0.1)
    assert f[5] == pytest.approx(0.1 + 0.9 * 0.5)  # half way: half of the decay
    assert all(a > b for a, b in itertools.pairwise(f))
    assert lr_factor(50, 11, schedule="cosine", min_ratio=0.1) == pytest.approx(0.1)  # extended run: stays there
    warm = [lr_factor(k, 12, warmup=2, schedule="cosine") for k in range(3)]
    assert warm[0] == pytest.approx(0.5) and warm[1] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown learning-rate schedule"):
        lr_factor(0, 10, schedule="step")


def test_weight_average_follows_formula_and_copies_integer_buffers():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    average = WeightAverage(model, decay=0.5)
    assert not average.model.training and not any(p.requires_grad for p in average.model.parameters())
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model[1].num_batches_tracked += 7
    average.update(model)  # first update: d = min(0.5, 1/10) = 0.1
    torch.testing.assert_close(average.model[0].weight, 0.1 * start + 0.9 * (start + 1.0))
    assert int(average.model[1].num_batches_tracked) == 7
    for _ in range(200):
        average.update(model)
    torch.testing.assert_close(average.model[0].weight, model[0].weight)  # converges to constant weights
    copy = WeightAverage(model, decay=0.5)
    copy.load_state_dict(average.state_dict())
    assert copy.updates == 201
    torch.testing.assert_close(copy.model.state_dict(), average.model.state_dict())
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(model, decay=1.0)
    assert math.isclose(0.5, average.decay)
