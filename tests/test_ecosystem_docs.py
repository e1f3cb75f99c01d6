"""docs/ecosystem.md and docs/api.md: every command and Python block runs as written, in order, in a folder
holding ``images/{left,right,box}.jpg`` (the shipped test images at half size), and api.md names every
public function.
While no weights are shipped, the default model is a random-init ``tiny`` one (the commands are the same;
only the matches are meaningless).

``python tests/test_ecosystem_docs.py`` rewrites the reference part of docs/api.md (everything from
"## Reference" on) from the docstrings; the guide above it is written by hand.
"""

import argparse
import glob
import importlib
import importlib.util
import inspect
import pkgutil
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import pycolmap
import pytest

import silk_keypoints
from silk_keypoints.cli import main
from silk_keypoints.io import resize_long_side
from silk_keypoints.model import SiLK
from silk_keypoints.model.zoo import available_pretrained, variant_config

DOCS = Path(__file__).parents[1] / "docs"
IMAGES = Path(__file__).parent / "fixtures" / "images"


def blocks(text: str) -> list[tuple[str, str]]:
    return re.findall(r"```(bash|python)\n(.*?)```", text, flags=re.DOTALL)


def run_shell_line(line: str) -> None:
    argv = [a for arg in shlex.split(line) for a in (sorted(glob.glob(arg)) if "*" in arg else [arg])]
    if argv[0] == "silk":
        assert main(argv[1:]) == 0, line
    elif argv[:2] == ["mkdir", "-p"]:
        Path(argv[2]).mkdir(parents=True, exist_ok=True)
    elif argv[:2] == ["colmap", "mapper"]:
        opts = dict(zip(argv[2::2], argv[3::2]))
        if shutil.which("colmap"):
            subprocess.run(argv, check=True)
        else:  # the same incremental pipeline through pycolmap
            pycolmap.incremental_mapping(opts["--database_path"], opts["--image_path"], opts["--output_path"])
    elif argv[:2] == ["colmap", "matches_importer"]:
        opts = dict(zip(argv[2::2], argv[3::2]))
        if shutil.which("colmap"):
            subprocess.run(argv, check=True)
        else:  # the importer's verification step through pycolmap
            pycolmap.verify_matches(opts["--database_path"], opts["--match_list_path"])
    elif argv[:2] == ["python", "-m"]:  # a third-party tool (hloc): run where it is installed
        spec = importlib.util.find_spec(argv[2].split(".")[0])
        # a real package, not the empty namespace package a leftover hloc/ folder in the start folder makes
        if spec is not None and spec.origin not in (None, "namespace"):
            subprocess.run([sys.executable, *argv[1:]], check=True)
    else:
        raise AssertionError(f"docs/ecosystem.md runs {argv[0]!r}: teach this test to run it")


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    images = tmp_path / "images"
    images.mkdir()
    for src, name in [
        ("opencv_left.jpg", "left.jpg"),
        ("opencv_right.jpg", "right.jpg"),
        ("opencv_box.jpg", "box.jpg"),
    ]:
        small, _ = resize_long_side(cv2.imread(str(IMAGES / src)), 320)  # half size: 4x faster tests
        cv2.imwrite(str(images / name), small)
    if not available_pretrained():
        tiny = SiLK(variant_config("tiny")).eval()
        monkeypatch.setattr(SiLK, "from_pretrained", classmethod(lambda cls, name=None, **kw: tiny))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_doc(path: Path) -> list[tuple[str, str]]:
    found = blocks(path.read_text().split("\n## Reference\n")[0])  # api.md: the guide, not the docstrings
    for kind, code in found:
        if kind == "bash":
            for line in code.replace("\\\n", " ").splitlines():
                if line.strip() and not line.lstrip().startswith("#"):
                    run_shell_line(line)
        else:
            exec(compile(code, str(path), "exec"), {"__name__": "docs"})  # noqa: S102 - the doc's own example
    return found


def test_ecosystem_doc_runs_as_written(workdir, capsys):
    found = run_doc(DOCS / "ecosystem.md")
    capsys.readouterr()
    assert [kind for kind, _ in found].count("bash") >= 4 and [kind for kind, _ in found].count("python") >= 3
    for path in [
        "features.h5",
        "pairs.txt",
        "matches.h5",
        "colmap.db",
        "colmap2.db",
        "npz/left.jpg.npz",
        "npz-box/box.jpg.npz",
    ]:
        assert (workdir / path).is_file(), path
    assert (workdir / "pairs.txt").read_text().splitlines() == [
        "box.jpg left.jpg",
        "box.jpg right.jpg",
        "left.jpg right.jpg",
    ]
    database = pycolmap.Database.open(str(workdir / "colmap.db"))
    try:
        # the unrelated-pairs gate of match-pairs left the two pairs of the box with no matches
        assert database.num_images() == 3 and database.num_matched_image_pairs() == 1
    finally:
        database.close()
    database = pycolmap.Database.open(str(workdir / "colmap3.db"))  # --no-verify, then the importer
    try:
        assert database.num_matched_image_pairs() == 3 and database.num_verified_image_pairs() >= 1
    finally:
        database.close()


def test_api_doc_examples_run(workdir, capsys):
    found = run_doc(DOCS / "api.md")
    capsys.readouterr()
    assert [kind for kind, _ in found].count("python") >= 6
    for path in [
        "api-features.h5",
        "api-pairs.txt",
        "api-matches.h5",
        "api-colmap.db",
        "api-npz/box.jpg.npz",
    ]:
        assert (workdir / path).is_file(), path


def test_rest_tables_become_markdown_tables():
    doc = (
        "Outputs:\n\n"
        "====== ============ ========\n"
        "name   shape        meaning\n"
        "====== ============ ========\n"
        "``a``  (B, N)       first,\n"
        "                    continued\n"
        "b      (B,)         x | y\n"
        "====== ============ ========\n\n"
        "==== ====\n"
        "``c`` no header\n"
        "==== ====\n"
    )
    text = _markdown(doc)
    assert "| name | shape | meaning |\n| --- | --- | --- |\n| `a` | (B, N) | first, continued |" in text
    assert "| b | (B,) | x \\| y |" in text
    assert "```text\n`c` no header\n```" in text and "=" not in text
    api = (DOCS / "api.md").read_text()
    assert "| input `images` | (B, C, H, W) |" in api  # the ONNX table of ecosystem.onnx renders as a table


def test_api_doc_names_every_public_function_and_class():
    text = (DOCS / "api.md").read_text()
    missing = []
    for info in pkgutil.walk_packages(silk_keypoints.__path__, "silk_keypoints."):
        if ".cli" in info.name or info.name.endswith("__main__"):
            continue
        if _deprecated(info.name):
            continue
        module = importlib.import_module(info.name)
        if module.__name__ != info.name:  # a deprecated alias of a documented module
            continue
        if f"### `{info.name}`" not in text and any(True for _ in _public(module)):
            missing.append(info.name)
        missing += [f"{info.name}.{name}" for name, _ in _public(module) if f"`{name}" not in text]
    assert not missing, f"docs/api.md lacks {missing}"


def _public(module):
    for name, obj in vars(module).items():
        mine = not name.startswith("_") and getattr(obj, "__module__", None) == module.__name__
        if mine and (inspect.isfunction(obj) or inspect.isclass(obj)):
            yield name, obj


# --- the generated reference of docs/api.md ---------------------------------------------------------------
DEPRECATED = ("_deprecated", "interop", "integrations", "export", "demo", "extraction", "model.fast")  # old paths


def _deprecated(name: str) -> bool:
    short = name.removeprefix("silk_keypoints.")
    return any(short == d or short.startswith(d + ".") for d in DEPRECATED)


ORDER = [
    "errors",
    "features",
    "model.silk",
    "model.config",
    "model.zoo",
    "model.coords",
    "model.sparse",
    "model.checkpoint",
    "model.backbone",
    "model.heads",
    "model.fused",
    "io",
    "image_features",
    "matching",
    "refinement",
    "geometry",
    "files",
    "ecosystem.hloc",
    "ecosystem.pairs",
    "bulk",
    "ecosystem.colmap",
    "ecosystem.npz",
    "ecosystem.lightglue",
    "ecosystem.kornia",
    "ecosystem.onnx",
    "pair",
    "viz",
]  # then the rest (evaluation, training) alphabetically


def reference_markdown() -> str:
    """The "## Reference" part of docs/api.md: the CLI commands, then every public class and function."""
    from silk_keypoints.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parts = [
        "## Reference",
        (
            "Generated from the docstrings by `python tests/test_ecosystem_docs.py`. Shapes are as stated; "
            "coordinates follow the conventions above."
        ),
        "### Command line",
        (
            "Each sub-command parses its arguments and calls the functions below; `silk COMMAND --help` "
            "lists its options."
        ),
        "| command | does |\n| --- | --- |\n"
        + "\n".join(f"| `silk {c.dest}` | {c.help} |" for c in sub._choices_actions),
        "### `silk_keypoints`",
        "Top-level names: " + ", ".join(f"`{n}`" for n in silk_keypoints.__all__ if n != "__version__") + ".",
    ]
    found = [m.name for m in pkgutil.walk_packages(silk_keypoints.__path__, "silk_keypoints.")
             if not _deprecated(m.name)]
    first = [f"silk_keypoints.{n}" for n in ORDER if f"silk_keypoints.{n}" in found]
    for name in first + sorted(
        n for n in found if n not in first and ".cli" not in n and "__main__" not in n
    ):
        module = importlib.import_module(name)
        items = list(_public(module))
        if not items:
            continue
        parts.append(f"### `{name}`\n\n{_markdown(inspect.getdoc(module) or '')}")
        for n, obj in items:
            if not inspect.isclass(obj):
                parts.append(f"#### `{n}{_signature(obj)}`\n\n{_markdown(inspect.getdoc(obj) or '')}")
                continue
            signature = "" if issubclass(obj, Exception) else _signature(obj)
            parts.append(f"#### class `{n}{signature}`\n\n{_markdown(inspect.getdoc(obj) or '')}")
            for k, v in vars(obj).items():
                if k.startswith("_") or not (
                    inspect.isfunction(v) or isinstance(v, (classmethod, staticmethod))
                ):
                    continue
                f = v.__func__ if isinstance(v, (classmethod, staticmethod)) else v
                sig = re.sub(r"^\((self|cls)(, )?", "(", _signature(f))
                doc = _markdown(inspect.cleandoc(f.__doc__)) if f.__doc__ else ""
                prefix = "@classmethod " if isinstance(v, classmethod) else ""
                parts.append(
                    f"- {prefix}`{n}.{k}{sig}`" + ("\n\n  " + doc.replace("\n", "\n  ") if doc else "")
                )
    return re.sub(r"\n{3,}", "\n\n", "\n\n".join(parts)) + "\n"


class _Text:
    """An annotation shown as written (``from __future__ import annotations`` makes them strings)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _signature(obj) -> str:
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return "(...)"

    def text(a):
        return _Text(a) if isinstance(a, str) else a

    params = [p.replace(annotation=text(p.annotation)) for p in sig.parameters.values()]
    return str(sig.replace(parameters=params, return_annotation=text(sig.return_annotation)))


def _rest_table(match: re.Match) -> str:
    """A reST simple table (rule, header, rule, rows, rule) -> a markdown table; a row whose first cell is empty
    continues the row above."""
    rule, header, body = match.group(1), match.group(2), match.group(3)
    starts = [m.start() for m in re.finditer(r"=+", rule)]

    def cells(line: str) -> list[str]:
        return [line[a:b].strip().replace("|", "\\|") for a, b in zip(starts, [*starts[1:], None])]

    rows: list[list[str]] = []
    for line in body.splitlines():
        row = cells(line)
        if rows and not row[0]:
            rows[-1] = [f"{a} {b}".strip() for a, b in zip(rows[-1], row)]
        else:
            rows.append(row)
    head = cells(header)
    lines = [head, ["---"] * len(head), *rows]
    return "\n".join("| " + " | ".join(r) + " |" for r in lines)


def _markdown(text: str) -> str:
    """Google-style docstring with reST markup -> markdown."""
    # reST simple tables with a header -> markdown tables (before the markup changes the column widths)
    text = re.sub(r"^(=+(?: +=+)+)\n([^\n]*)\n\1\n(.*?)\n\1$", _rest_table, text, flags=re.MULTILINE | re.DOTALL)
    text = re.sub(r":(?:class|func|meth|data|mod|attr|ref):`~?([^`]+)`", r"`\1`", text).replace("``", "`")
    out, section = [], None
    for line in text.splitlines():
        if re.fullmatch(r"(Args|Returns|Raises|Attributes|Yields):", line):
            section = line[:-1]
            out.append(f"\n*{section}:*\n")
        elif section and line.startswith("    "):
            body = line[4:]
            item = re.match(r"(\*{0,2}[\w, .*]+?)( \([^)]*\))?: (.*)", body)
            if not body.startswith(" ") and item and section in ("Args", "Attributes", "Raises"):
                out.append(f"- `{item.group(1)}`{item.group(2) or ''}: {item.group(3)}")
            elif not body.startswith(" ") and not out[-1].startswith(("- ", "  ")):
                out.append(f"- {body}")
            else:
                out.append("  " + body.strip())
        else:
            section = None if not line.strip() else section
            out.append(line)
    text = "\n".join(out) + "\n"
    # reST simple tables without a header and literal blocks -> fenced blocks
    text = re.sub(
        r"^(=+(?: +=+)+)\n(.*?)\n\1$",
        lambda m: f"```text\n{m.group(2)}\n```",
        text,
        flags=re.MULTILINE | re.DOTALL,
    )
    literal = re.compile(r"::\n\n((?:    .*\n|\n)+)")
    text = literal.sub(
        lambda m: ":\n\n```python\n" + "\n".join(x[4:] for x in m.group(1).rstrip().splitlines()) + "\n```\n",
        text,
    )
    return text.strip()


if __name__ == "__main__":
    api = DOCS / "api.md"
    guide = api.read_text().split("\n## Reference\n")[0].rstrip()
    api.write_text(guide + "\n\n" + reference_markdown())
    print(f"wrote {api}")
