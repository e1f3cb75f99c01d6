"""One protocol lookup for every benchmark."""

from dataclasses import dataclass

import pytest

from silk_keypoints import SilkError
from silk_keypoints.evaluation import hpatches, pose
from silk_keypoints.evaluation.protocols import Protocols


@dataclass(frozen=True)
class Toy:
    name: str
    size: int = 1


def test_lookup_with_overrides():
    table = Protocols("toy", Toy("a"), Toy("b", 2))
    assert list(table) == ["a", "b"] and table["b"].size == 2
    assert table.get_protocol("a", size=5) == Toy("a", 5) and table.get_protocol("b", size=None) == Toy("b", 2)
    with pytest.raises(SilkError, match="unknown toy protocol 'c'; available: a, b"):
        table.get_protocol("c")


def test_both_benchmarks_use_it():
    assert hpatches.get_protocol("d2net").max_keypoints == 4096 and pose.get_protocol("megadepth").resize == 1600
    with pytest.raises(SilkError, match="unknown HPatches protocol"):
        hpatches.get_protocol("scannet")
    with pytest.raises(SilkError, match="unknown pose protocol"):
        pose.get_protocol("silk")
