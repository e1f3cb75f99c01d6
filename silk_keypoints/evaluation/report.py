"""Turning results into what people read: plain-text tables, JSON files and the MMA plot."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..files import atomic_write, make_dir


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> str:
    """Fixed-width text table; floats with 3 decimals (2 for values >= 100), None as ``-``."""

    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            if not math.isfinite(v):
                return "inf" if v > 0 else "nan"
            return f"{v:.2f}" if abs(v) >= 100 else f"{v:.3f}"
        return str(v)

    cells = [[cell(v) for v in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    line = "  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(headers, widths)))
    out = [title] if title else []
    out += [line, "-" * len(line)]
    out += ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells]
    return "\n".join(out)


def hpatches_table(result: dict) -> str:
    """Tables of :func:`.hpatches.evaluate_hpatches` output: one per group, one row per method, the protocol's
    columns (``rep@t`` repeatability, ``mma@t``, ``h_acc@t`` / ``h_auc@t`` homography accuracy / AUC) plus
    keypoints per image, matches per pair, estimation failures and milliseconds per image."""
    columns = result["protocol"]["table"]
    names = {"rep": "repeatability", "mma": "mma", "h_acc": "h_acc", "h_auc": "h_auc"}
    headers = ["method", *columns, "kpts", "matches", "fail", "ms/img"]
    blocks = []
    groups = next(iter(result["methods"].values()))["summary"]
    for group in groups:
        rows = []
        for method, r in result["methods"].items():
            s = r["summary"][group]
            vals = [s[names[c.split("@")[0]]].get(c.split("@")[1]) for c in columns]
            rows.append([method, *vals, s["keypoints"], s["matches"], s["failures"], 1000 * r["seconds_per_image"]])
        mode = "dense" if result["dense"] else "sparse"
        title = f"HPatches {group} ({s['pairs']} pairs, protocol {result['protocol']['name']}, {mode})"
        blocks.append(format_table(headers, rows, title))
    return "\n\n".join(blocks)


def pose_table(result: dict) -> str:
    """Table of :func:`.pose.evaluate_pose` output: AUC of the pose error at 5/10/20 deg, median rotation /
    translation errors (deg), mean matches and inliers, failures, milliseconds per image."""
    headers = ["method", "auc@5", "auc@10", "auc@20", "med_R", "med_t", "matches", "inliers", "fail", "ms/img"]
    rows = []
    for method, r in result["methods"].items():
        s = r["summary"]
        rows.append([method, s["auc"]["5"], s["auc"]["10"], s["auc"]["20"], s["median_rotation_error"],
                     s["median_translation_error"], s["matches"], s["inliers"], s["failures"],
                     1000 * r["seconds_per_image"]])
    p = result["protocol"]
    pairs = next(iter(result["methods"].values()))["summary"]["pairs"]
    title = (f"Relative pose ({pairs} pairs, protocol {p['name']}, resize {p['resize']}, "
             f"matcher {result['matcher']}, RANSAC {p['ransac_threshold']} px)")
    return format_table(headers, rows, title)


def registration_table(result: dict) -> str:
    """Table of :func:`.registration.evaluate_registration` output: accuracy at rotation 5/10/45 deg,
    translation 5/10/25 cm, chamfer 1/5/10 (UnsupervisedR&R units), the mean of each, failures, ms per image."""
    headers = ["method", "R@5", "R@10", "R@45", "R_mean", "t@5", "t@10", "t@25", "t_mean",
               "C@1", "C@5", "C@10", "C_mean", "fail", "ms/img"]
    rows = []
    for method, r in result["methods"].items():
        s = r["summary"]
        row = [method]
        for key in ("rotation", "translation", "chamfer"):
            row += [*s[key]["accuracy"].values(), s[key]["mean"]]
        rows.append([*row, s["failures"], 1000 * r["seconds_per_image"]])
    pairs = next(iter(result["methods"].values()))["summary"]["pairs"]
    return format_table(headers, rows, f"RGB-D registration ({pairs} pairs; R deg, t cm, chamfer 1000 x m^2)")


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON (atomically); non-finite floats become null."""

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    path = Path(path)
    make_dir(path.parent)
    text = json.dumps(clean(data), indent=1)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return path


def plot_mma(result: dict, path: str | os.PathLike) -> Path:
    """PNG of MMA vs threshold (1..10 px) for illumination / viewpoint / all, one curve per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(next(iter(result["methods"].values()))["summary"])
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.6), squeeze=False)
    for ax, group in zip(axes[0], groups):
        for method, r in result["methods"].items():
            mma = r["summary"][group]["mma"]
            ax.plot([float(t) for t in mma], list(mma.values()), marker="o", ms=3, label=method)
        ax.set_title(f"{group} ({result['methods'][method]['summary'][group]['pairs']} pairs)")
        ax.set_xlabel("threshold (px)")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("MMA")
    axes[0][-1].legend(loc="lower right", fontsize=8)
    fig.suptitle(f"HPatches MMA, protocol {result['protocol']['name']}" + (" (dense)" if result["dense"] else ""))
    fig.tight_layout()
    path = Path(path)
    make_dir(path.parent)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path
