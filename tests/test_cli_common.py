"""The options every command shares (cli/common.py) and the rule that CLI modules do not import each other."""

import argparse
import ast
from pathlib import Path

import pytest

from silk_keypoints import SilkError
from silk_keypoints.cli import build_parser
from silk_keypoints.cli.common import (
    add_matcher_args,
    image_name,
    load_model,
    matcher_options,
    progress_printer,
    weights_description,
)

CLI = Path(__file__).parents[1] / "silk_keypoints" / "cli"
MATCHING = {
    ("match", "A", "B"): {"refine": True, "max_distance": False},
    ("demo",): {"refine": True, "max_distance": False},
    ("match-pairs", "P", "--features", "F", "--out", "O"): {"refine": False, "max_distance": True},
    ("colmap", "--database", "D"): {"refine": False, "max_distance": True},
    ("eval", "pose", "P"): {"refine": True, "max_distance": False},
    ("eval", "registration", "R"): {"refine": True, "max_distance": False},
    ("eval", "imc2022", "T", "--submission", "S"): {"refine": True, "max_distance": False},
}


@pytest.mark.parametrize("command", list(MATCHING))
def test_every_command_has_the_same_matcher_options(command):
    args = build_parser().parse_args(list(command))
    assert args.matcher == "mnn" and args.match_threshold is None and args.temperature is None
    assert hasattr(args, "no_refine") == MATCHING[command]["refine"]
    assert hasattr(args, "max_distance") == MATCHING[command]["max_distance"]
    assert build_parser().parse_args([*command, "--matcher", "ratio"]).matcher == "ratio"


def test_method_is_a_deprecated_alias(capsys):
    p = argparse.ArgumentParser(prog="silk x")
    add_matcher_args(p)
    assert p.parse_args(["--method", "double-softmax"]).matcher == "double-softmax"
    assert capsys.readouterr().err == "silk x: --method is deprecated, use --matcher\n"
    assert p.parse_args([]).matcher == "mnn" and capsys.readouterr().err == ""
    assert "--method" not in p.format_help()
    with pytest.raises(SystemExit):
        p.parse_args(["--method", "nn"])


def test_matcher_options_leave_unset_options_out():
    p = argparse.ArgumentParser()
    add_matcher_args(p, refine=True, max_distance=True)
    assert matcher_options(p.parse_args([])) == {}
    assert matcher_options(p.parse_args(["--matcher", "ratio", "--match-threshold", "0.8", "--no-refine"])) == \
        {"ratio_threshold": 0.8, "refine": False}
    assert matcher_options(p.parse_args(["--match-threshold", "0.9", "--temperature", "0.2", "--max-distance", "1"])) \
        == {"threshold": 0.9, "temperature": 0.2, "max_distance": 1.0}


def test_load_model_checks_the_device():
    args = argparse.Namespace(device="banana", checkpoint=None, model=None)
    with pytest.raises(SilkError, match="--device 'banana': unknown device"):
        load_model(args)


def test_names_and_descriptions(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    assert image_name(tmp_path / "a" / "x.jpg", tmp_path) == "a/x.jpg"
    assert image_name(tmp_path / "a" / "x.jpg", None) == "x.jpg"
    assert weights_description(argparse.Namespace(checkpoint="w.pt", model=None)) == "checkpoint w.pt"
    assert weights_description(argparse.Namespace(checkpoint=None, model=None)).startswith("shipped weights '")
    progress_printer()("hello")
    assert capsys.readouterr().err.rstrip().endswith("s] hello")


def test_cli_modules_do_not_import_each_other():
    for path in CLI.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and path.name not in ("__init__.py", "__main__.py"):
                assert node.module == "common", f"{path.name} imports .{node.module}: shared things go in common.py"
