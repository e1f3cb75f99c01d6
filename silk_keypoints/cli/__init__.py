"""The ``silk`` command. Each sub-command lives in a module of this package with ``register(subparsers)``; the
modules parse arguments and call library functions, nothing more. Errors the user can fix
(:class:`SilkError`) are printed as one line, exit code 2.

Start-up stays short: ``silk --help`` imports no command module (the one-line helps are in
:data:`COMMANDS`), and ``silk NAME ...`` imports only the module of NAME, which imports torch and the rest.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import SilkError

# command -> (module of this package that registers it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("train", "train a SiLK model on a folder of images (self-supervised, random homographies)"),
    "extract": ("extract", "detect and describe keypoints, write hloc's features.h5"),
    "match": ("match", "match two images, fit a homography, draw the matches"),
    "demo": ("demo", "match the shipped sample image pair and write matches.png / keypoints.png"),
    "models": ("models", "list the shipped models: size, cost, description"),
    "pairs": ("ecosystem", "write an hloc pairs.txt (exhaustive or sequential)"),
    "match-pairs": ("ecosystem", "match the pairs of a pairs.txt, write hloc's matches.h5"),
    "adjust-keypoints": ("ecosystem", "move keypoints below the cell size so that tracks of verified matches agree"),
    "merge-features": ("ecosystem", "merge the part files of a sharded (torchrun) silk extract into features.h5"),
    "merge-matches": ("ecosystem", "merge the part files of a sharded (torchrun) silk match-pairs into matches.h5"),
    "colmap": ("ecosystem", "import keypoints and verified matches into a COLMAP database"),
    "export-npz": ("ecosystem", "one .npz of keypoints and descriptors per image"),
    "eval": ("evaluate", "benchmarks: HPatches, relative pose, RGB-D registration, IMC2022"),
    "make-testdata": ("evaluate", "write small benchmark data sets from an image folder"),
    "export": ("export", "export a model to another runtime (ONNX)"),
}


def add_command(sub: argparse._SubParsersAction, name: str, **kwargs) -> argparse.ArgumentParser:
    """The parser of sub-command ``name``, with its one-line help from :data:`COMMANDS`."""
    return sub.add_parser(name, help=COMMANDS[name][1], **kwargs)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``silk`` parser: every sub-command in full, or (``command`` given) that one in full and the others
    by name and help only (their modules are not imported)."""
    parser = argparse.ArgumentParser(
        prog="silk",
        description="SiLK keypoints: extract, match, train, evaluate and export learned keypoints.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    wanted = {module for module, _ in COMMANDS.values()} if command is None else set()
    if command in COMMANDS:
        wanted.add(COMMANDS[command][0])
    for name, (module, _) in COMMANDS.items():
        if module in wanted:
            importlib.import_module(f"{__name__}.{module}").register(sub)
            wanted.discard(module)
        elif name not in sub.choices:
            add_command(sub, name, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), "")
    parser = build_parser(command)
    args = parser.parse_args(argv)
    try:
        result = int(args.func(args) or 0)
    except SilkError as e:
        print(f"silk {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the last line of defence: the environment (disk, permissions), not the input
        where = f"{e.filename}: " if e.filename else ""
        print(f"silk {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"silk {args.command}: error: out of memory (try --resize or a smaller --max-pixels)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"silk {args.command}: interrupted", file=sys.stderr)
        result = 130
    if result == 130:  # interrupted: a further Ctrl-C must not break the shutdown with an atexit traceback
        _ignore_interrupts()
    return result


def _ignore_interrupts() -> None:
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


if __name__ == "__main__":
    sys.exit(main())
