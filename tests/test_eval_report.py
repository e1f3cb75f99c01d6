"""Reports: text tables, JSON without non-finite numbers, the MMA plot."""

import json

from silk_keypoints.evaluation.report import format_table, hpatches_table, plot_mma, write_json


def hpatches_result():
    summary = {
        g: {"pairs": 5, "keypoints": 100.0, "matches": 50.0, "failures": 1,
            "repeatability": {"1": 0.5, "3": 0.7}, "mma": {str(t): t / 10 for t in range(1, 11)},
            "h_acc": {"1": 0.2, "3": 0.4}, "h_auc": {"1": 0.1, "3": 0.3}}
        for g in ("illumination", "all")
    }
    return {"protocol": {"name": "test", "table": ("rep@1", "mma@3", "h_acc@3", "h_auc@1")}, "dense": False,
            "methods": {"a": {"summary": summary, "seconds_per_image": 0.01},
                        "b": {"summary": summary, "seconds_per_image": 0.002}}}


def test_format_table():
    text = format_table(["method", "x", "y"], [["sift", 0.12345, None], ["longer-name", float("inf"), 123.456]], "T")
    lines = text.splitlines()
    assert lines[0] == "T" and lines[1].split() == ["method", "x", "y"]
    assert lines[3].split() == ["sift", "0.123", "-"] and lines[4].split() == ["longer-name", "inf", "123.46"]
    assert len({len(line) for line in lines[1:]}) == 1  # aligned columns


def test_hpatches_table_columns_and_groups():
    text = hpatches_table(hpatches_result())
    assert "HPatches illumination (5 pairs, protocol test, sparse)" in text and "HPatches all" in text
    row = next(line for line in text.splitlines() if line.startswith("b "))
    assert row.split() == ["b", "0.500", "0.300", "0.400", "0.100", "100.00", "50.000", "1", "2.000"]


def test_write_json_replaces_non_finite(tmp_path):
    path = write_json(tmp_path / "out" / "r.json", {"a": float("inf"), "b": [1.0, float("nan")], 3: (1, 2)})
    assert json.loads(path.read_text()) == {"a": None, "b": [1.0, None], "3": [1, 2]}


def test_plot_mma(tmp_path):
    path = plot_mma(hpatches_result(), tmp_path / "plots" / "mma.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(path.read_bytes()) > 5000
