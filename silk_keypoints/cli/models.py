"""``silk models``: the shipped models with file size, cost and a one-line description (no torch import)."""

from __future__ import annotations

import argparse
import re

from ..model.zoo import DEFAULT_PRETRAINED, WEIGHTS_DIR, available_pretrained
from . import add_command

DESCRIPTIONS = {
    "vgg4": "the original SiLK VGG-4: full resolution, 1-px grid; the most accurate and the slowest",
    "fast": "local contrast normalisation, output stride 2; SuperPoint-class cost, robust to lighting",
    "fast-rot": "fast trained with full in-plane rotation: matches pairs turned by any angle",
    "tiny": "output stride 4, 64-D descriptors; XFeat-class cost, for small CPUs",
}
_GMAC = re.compile(r"([\d.]+) GMAC at 480")


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "models", description="List the models shipped in the package (use a name with "
                    "--model). GMAC: multiply-accumulates per 480x640 image, from the model cards.")
    p.set_defaults(func=run)


def model_rows() -> list[tuple[str, str, str, str]]:
    """(name, size in MB, GMAC at 480x640, description) of each shipped model; '?' where unknown."""
    rows = []
    for name in available_pretrained():
        card = WEIGHTS_DIR / f"{name}.md"
        found = _GMAC.search(card.read_text(encoding="utf-8")) if card.is_file() else None
        size = (WEIGHTS_DIR / f"{name}.safetensors").stat().st_size / 1e6
        default = " (default)" if name == DEFAULT_PRETRAINED else ""
        rows.append((name, f"{size:.1f}", found.group(1) if found else "?",
                     DESCRIPTIONS.get(name, "see its model card") + default))
    return rows


def run(args: argparse.Namespace) -> int:
    rows = [("name", "MB", "GMAC", "description"), *model_rows()]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row[:3], widths)) + "  " + row[3])
    return 0
