"""``silk make-testdata`` and ``silk eval``: whole runs on generated data, outputs, errors, reproducibility."""

import json

import pytest
import torch

from silk_keypoints.cli import main
from silk_keypoints.model import SiLK
from silk_keypoints.model.zoo import variant_config


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    SiLK(variant_config("tiny")).eval().save(d / "tiny.safetensors")
    for kind, count in (("hpatches", 2), ("pose", 3), ("rgbd", 3)):
        assert main(["make-testdata", kind, "--out", str(d / kind), "--count", str(count), "--size", "160x120"]) == 0
    return d


def test_eval_hpatches_writes_table_json_and_plot(work, capsys):
    out = work / "res"
    common = ["eval", "hpatches", str(work / "hpatches"), "--protocol", "d2net", "--baselines", "sift",
              "--max-keypoints", "300", "--out", str(out), "--no-progress"]
    assert main([*common, "--checkpoint", str(work / "tiny.safetensors")]) == 0
    text = capsys.readouterr().out
    assert "HPatches viewpoint (5 pairs, protocol d2net, sparse)" in text and "\ntiny " in text and "\nsift " in text
    result = json.loads((out / "hpatches-d2net.json").read_text())
    assert set(result["methods"]) == {"tiny", "sift"} and (out / "hpatches-d2net-mma.png").is_file()
    assert main([*common, "--overwrite"]) == 0  # same seed, same numbers (the rule: --overwrite to replace)
    assert json.loads((out / "hpatches-d2net.json").read_text())["methods"]["sift"]["summary"] == \
        result["methods"]["sift"]["summary"]


def test_eval_hpatches_silk_protocol_dense(work, capsys):
    args = ["eval", "hpatches", str(work / "hpatches"), "--dense", "--short-side", "64", "--no-progress",
            "--checkpoint", str(work / "tiny.safetensors")]
    assert main(args) == 0
    assert "protocol silk, dense" in capsys.readouterr().out


def test_eval_hpatches_refine_switch(work, capsys):
    """d2net refines matched points by default; --no-refine keeps them on the cell grid: same keypoints and
    matches, different 1 px accuracy."""
    results = {}
    for flag in ("--refine", "--no-refine"):
        out = work / f"res{flag}"
        assert main(["eval", "hpatches", str(work / "hpatches"), "--protocol", "d2net", "--max-keypoints", "200",
                     "--checkpoint", str(work / "tiny.safetensors"), "--out", str(out), "--no-progress", flag]) == 0
        results[flag] = json.loads((out / "hpatches-d2net.json").read_text())
    assert results["--refine"]["protocol"]["refine"] and not results["--no-refine"]["protocol"]["refine"]
    a, b = (results[f]["methods"]["tiny"]["pairs"] for f in ("--refine", "--no-refine"))
    assert [p["matches"] for p in a] == [p["matches"] for p in b]
    assert [p["repeatability"] for p in a] == [p["repeatability"] for p in b]
    assert [p["mma"] for p in a] != [p["mma"] for p in b]


def test_eval_pose_and_imc2022(work, capsys):
    args = ["eval", "pose", str(work / "pose/pairs.json"), str(work / "pose/pairs.csv"), "--baselines", "sift",
            "--resize", "160", "--matcher", "ratio", "--match-threshold", "0.9", "--out", str(work / "res"),
            "--no-progress"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "Relative pose (6 pairs, protocol scannet, resize 160, matcher ratio" in text and "\nsift " in text
    assert json.loads((work / "res/pose-scannet.json").read_text())["methods"]["sift"]["summary"]["pairs"] == 6
    sub = work / "res/submission.csv"
    assert main(["eval", "imc2022", str(work / "pose/imc2022/test.csv"), "--submission", str(sub), "--baselines", "sift",
                 "--no-progress"]) == 0
    assert len(sub.read_text().splitlines()) == 4


def test_eval_registration(work, capsys):
    args = ["eval", "registration", str(work / "rgbd"), "--checkpoint", str(work / "tiny.safetensors"),
            "--baselines", "orb", "--out", str(work / "res"), "--no-progress"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "RGB-D registration (2 pairs" in text and "\ntiny " in text and "\norb " in text
    assert json.loads((work / "res/registration.json").read_text())["skipped_pairs"] == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["eval", "hpatches", "{tmp}"], "no i_*/v_* sequence folders"),
        (["eval", "hpatches", "{work}/hpatches", "--baselines", "sift", "--dense", "--no-progress"], "no dense"),
        (["eval", "pose", "{tmp}/missing.json"], "pair file not found"),
        (["eval", "registration", "{tmp}", "--baselines", "sift"], "no scene folders"),
        (["eval", "imc2022", "{work}/pose/imc2022/test.csv", "--submission", "{tmp}/s.csv", "--baselines", "sift,orb"],
         "exactly one"),
        (["make-testdata", "pose", "--out", "{tmp}/x", "--size", "big"], "--size must look like"),
        (["make-testdata", "hpatches", "--out", "{tmp}/x", "--images", "{tmp}"], "no images"),
        (["make-testdata", "hpatches", "--out", "{tmp}/x", "--strength", "0", "2"], "strength must be"),
    ],
)
def test_errors_are_one_line_messages(work, tmp_path, capsys, args, message):
    args = [a.format(tmp=tmp_path, work=work) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("silk ") and message in err
