"""The options every command shares (cli/common.py) and the rule that CLI modules do not import each other."""

import argparse
import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from silk_keypoints import SilkError
from silk_keypoints.cli import COMMANDS, build_parser, main
from silk_keypoints.cli.common import (
    add_matcher_args,
    load_model,
    matcher_options,
    min_inliers,
    progress_printer,
    weights_description,
)
from silk_keypoints.cli.models import model_rows
from silk_keypoints.files import check_overwrite
from silk_keypoints.model.zoo import available_pretrained

CLI = Path(__file__).parents[1] / "silk_keypoints" / "cli"
MATCHING = {  # "gate": --no-gate, the unrelated-pairs gate (of a fitted model, or of a pair list's homography)
    ("match", "A", "B"): {"refine": True, "max_distance": True, "gate": True},
    ("demo",): {"refine": True, "max_distance": True, "gate": True},
    ("match-pairs", "P", "--features", "F", "--out", "O"): {"refine": False, "max_distance": True, "gate": True},
    ("colmap", "--database", "D"): {"refine": False, "max_distance": True, "gate": True},
    ("eval", "pose", "P"): {"refine": True, "max_distance": False, "gate": False},
    ("eval", "registration", "R"): {"refine": True, "max_distance": False, "gate": False},
    ("eval", "imc2022", "T", "--submission", "S"): {"refine": True, "max_distance": False, "gate": False},
}


@pytest.mark.parametrize("command", list(MATCHING))
def test_every_command_has_the_same_matcher_options(command):
    args = build_parser().parse_args(list(command))
    assert args.matcher == "mnn" and args.match_threshold is None and args.temperature is None
    assert hasattr(args, "no_refine") == MATCHING[command]["refine"]
    assert hasattr(args, "max_distance") == MATCHING[command]["max_distance"]
    assert hasattr(args, "no_gate") == MATCHING[command]["gate"]
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
    add_matcher_args(p, refine=True)
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
    assert weights_description(argparse.Namespace(checkpoint="w.pt", model=None)) == "checkpoint w.pt"
    assert weights_description(argparse.Namespace(checkpoint=None, model=None)).startswith("shipped weights '")
    progress_printer()("hello")
    assert capsys.readouterr().err.rstrip().endswith("s] hello")


def test_cli_modules_do_not_import_each_other():
    for path in CLI.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and path.name not in ("__init__.py", "__main__.py"):
                if node.module is None:  # the package itself: only its parser helper
                    assert [a.name for a in node.names] == ["add_command"], path.name
                    continue
                assert node.module == "common", f"{path.name} imports .{node.module}: shared things go in common.py"


def _imports_torch(argv: list[str]) -> tuple[bool, str]:
    code = ("import sys\nfrom silk_keypoints.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n"
            "    pass\nprint('torch' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True)
    *out, flag = run.stdout.strip().splitlines()
    return flag == "True", "\n".join(out)


def test_help_and_models_start_without_torch():
    """`silk --help` and `silk models` import no command module and no torch (start-up, docs/performance.md)."""
    loaded, out = _imports_torch(["--help"])
    assert not loaded and all(name in out for name in COMMANDS)
    loaded, out = _imports_torch(["models"])
    assert not loaded and all(name in out for name in available_pretrained())
    assert _imports_torch(["extract", "--help"])[0]  # a real command loads what it needs


def test_parser_registers_only_the_command_asked_for():
    sub = next(a for a in build_parser("models")._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == list(COMMANDS)
    assert sub.choices["extract"].format_help().count("--") == 0  # a name and a help only
    helps = {c.dest: c.help for c in sub._choices_actions}
    assert helps == {name: help for name, (_, help) in COMMANDS.items()}
    full = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert "--max-keypoints" in full.choices["extract"].format_help()


def test_models_command_and_model_help(capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "MB", "GMAC", "description"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert sorted(rows) == available_pretrained()
    for name, size, gmac, description in model_rows():
        assert float(size) > 0 and (gmac == "?" or float(gmac) > 0) and description in rows[name]
        assert not description.startswith("see its")  # every shipped model has its line
    assert sum("(default)" in line for line in rows.values()) == 1
    help_text = " ".join(build_parser("extract")._subparsers._group_actions[0].choices["extract"]
                         .format_help().split())
    assert all(name in help_text for name in available_pretrained()) and "see silk models" in help_text


def test_help_texts_are_plain_and_short():
    texts = []

    def walk(parser: argparse.ArgumentParser, where: str) -> None:
        texts.append((where, parser.description or ""))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                texts.extend((f"{where} {c.dest}", c.help or "") for c in action._choices_actions)
                for name, child in action.choices.items():
                    walk(child, f"{where} {name}")
            elif action.help and action.help != argparse.SUPPRESS:
                texts.append((f"{where} {action.option_strings}", action.help))

    walk(build_parser(), "silk")
    for where, text in texts:
        assert "``" not in text and not re.search(r":[a-z]+:`", text), where
        assert len(text) <= 600, (where, len(text))


def test_overwrite_rule_is_one_sentence(tmp_path):
    path = tmp_path / "x.txt"
    assert check_overwrite(path, False) == path
    path.write_text("keep")
    assert check_overwrite(path, True) == path
    with pytest.raises(SilkError, match=r"x.txt exists: pass --overwrite \(Python: overwrite=True\) to replace it"):
        check_overwrite(path, False)
    writers = ["extract", "match", "demo", "pairs", "match-pairs", "export-npz"]
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in writers:
        assert "replace existing output files" in sub.choices[name].format_help(), name
    onnx = sub.choices["export"]._subparsers._group_actions[0].choices["onnx"]
    assert "replace existing output files" in onnx.format_help()


def test_python_api_and_command_line_share_their_defaults():
    """Model, keypoints, matcher and gate: what silk match / extract use is what the Python API does by default."""
    import inspect

    import pycolmap

    from silk_keypoints import Matcher, SiLK
    from silk_keypoints.cli.common import detection_options
    from silk_keypoints.ecosystem.kornia import SiLKFeature
    from silk_keypoints.ecosystem.lightglue import SiLKExtractor
    from silk_keypoints.matching import GATE_MIN_INLIER_RATIO, GATE_MIN_INLIERS
    from silk_keypoints.model.zoo import DEFAULT_MAX_KEYPOINTS, DEFAULT_PRETRAINED, pretrained_path
    from silk_keypoints.pair import match_pair

    for command in (["match", "A", "B"], ["extract", "A", "--out", "F"], ["colmap", "--database", "D"]):
        args = build_parser().parse_args(command)
        # model: --model unset loads SiLK.from_pretrained(None), the default shipped weights
        assert args.model is None and args.checkpoint is None
        assert weights_description(args) == f"shipped weights '{DEFAULT_PRETRAINED}' ({pretrained_path()})"
        # detection: every option unset, so the model's defaults apply as in SiLK.extract()
        assert set(detection_options(args).values()) == {None}
        if command[0] != "extract":  # matcher: Matcher()'s defaults, the gate included
            assert args.matcher == Matcher().method == "mnn" and matcher_options(args) == {}
    assert Matcher().conf["max_distance"] is None and Matcher().refine
    gate = inspect.signature(match_pair).parameters
    assert gate["min_inliers"].default == GATE_MIN_INLIERS and gate["min_inlier_ratio"].default == GATE_MIN_INLIER_RATIO
    assert min_inliers(build_parser().parse_args(["match", "A", "B"])) == {}
    assert pycolmap.TwoViewGeometryOptions().min_num_inliers == GATE_MIN_INLIERS  # silk colmap's verification
    if available_pretrained():
        model = SiLK.from_pretrained()
        assert model.config.max_keypoints == DEFAULT_MAX_KEYPOINTS == 2048
        assert SiLK.from_pretrained(max_keypoints=10).config.max_keypoints == 10
    assert SiLKExtractor.default_conf["max_num_keypoints"] == DEFAULT_MAX_KEYPOINTS
    assert inspect.signature(SiLKFeature).parameters["max_keypoints"].default == DEFAULT_MAX_KEYPOINTS
