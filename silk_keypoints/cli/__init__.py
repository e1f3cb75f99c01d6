"""The ``silk`` command. Each sub-command lives in its own module with ``register(subparsers)``; the
modules parse arguments and call library functions, nothing more. Errors the user can fix
(:class:`SilkError`) are printed as one line, exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import SilkError

# one module per sub-command group, each exposing register(subparsers)
COMMAND_MODULES = [
    "train",
    "extract",
    "match",
    "demo",
    "ecosystem",
    "evaluate",
    "export",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="silk",
        description="SiLK keypoints: extract, match, train, evaluate and export learned keypoints.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except SilkError as e:
        print(f"silk {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"silk {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
