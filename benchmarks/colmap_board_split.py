"""Where the 3-D points of a COLMAP model of the opencv-doc stereo views come from: the chessboard or the room.

The views (``benchmarks/fetch_views.sh``) show a chessboard moved in front of a fixed stereo rig: all views of one
camera show the room at the same pixels, only the board moves. This script runs what the ``colmap`` set of
``honest_validation.py`` runs (extract, mutual NN, COLMAP's seeded verification, pycolmap's incremental mapper,
the same views) for each method and splits the largest model's 3-D points into board points (most of their
observations inside the board region of :mod:`board_views`) and room points, with the mean reprojection error
of each part; and, from the same mutual-NN matches, how far a method's room keypoints move between two
views of one camera, where the room is at the same pixels (sensor noise alone). CPU.

    python benchmarks/colmap_board_split.py --views /tmp/views --models fast tiny --positions cells extrema \
        --baselines sift --threads 1 --seed 0 --out runs/board-views/colmap-split-seed0.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch
from board_views import board_polygon, find_corners, inside  # benchmarks/board_views.py
from honest_validation import (
    build,
    largest_model,
    match_pair,
    seeded_verification,
    sift_database,
    training_copies,
)

from silk_keypoints.ecosystem.colmap import write_database
from silk_keypoints.evaluation.report import format_table
from silk_keypoints.io import list_images, load_image


def split_model(rec, polygons: dict[str, np.ndarray | None]) -> dict:
    """Counts and mean reprojection errors (px) of the board and room points of a pycolmap Reconstruction."""
    errors: dict[str, list[float]] = {"board": [], "room": []}
    for point in rec.points3D.values():
        votes = []
        for el in point.track.elements:
            image = rec.images[el.image_id]
            polygon = polygons.get(image.name)
            if polygon is not None:
                votes.append(bool(inside(np.asarray(image.points2D[el.point2D_idx].xy)[None], polygon)[0]))
        if votes:
            errors["board" if np.mean(votes) > 0.5 else "room"].append(point.error)
    return {f"{part}_{k}": v for part, e in errors.items()
            for k, v in (("points", len(e)), ("reproj", float(np.mean(e)) if e else None))}


def room_displacement(table: dict, matches: list, polygons: dict) -> dict:
    """Mutual-NN matches of room keypoints between two views of one camera (the room is at the same pixels in
    both): how many lie within 3 px of each other, the share at exactly the same position and their mean
    distance (px), i.e. how much a method's keypoints move with the sensor noise alone."""
    moved = []
    for a, b, m in matches:
        if a[:4] != b[:4] or polygons.get(a) is None or polygons.get(b) is None:
            continue
        pa, pb = table[a]["keypoints"][m[:, 0]], table[b]["keypoints"][m[:, 1]]
        room = np.ones(len(pa), bool)
        for points in (pa, pb):
            for polygon in (polygons[a], polygons[b]):
                room &= ~inside(points, polygon)
        d = np.linalg.norm(pa[room] - pb[room], axis=1)
        moved.append(d[d < 3])
    d = np.concatenate(moved) if moved else np.zeros(0)
    return {"room_matches": len(d), "room_same_position": float(np.mean(d < 1e-6)) if len(d) else None,
            "room_displacement_px": float(d.mean()) if len(d) else None}


def mapped(database: Path, images: Path, work: Path, seed: int, polygons: dict) -> dict:
    """The largest model's numbers (one thread), its points split into board and room."""
    rec, _ = largest_model(database, images, work, 1, seed)
    if rec is None:
        return {"registered": 0, "points3D": 0, "reprojection": None}
    return {"registered": rec.num_reg_images(), "points3D": rec.num_points3D(),
            "reprojection": float(rec.compute_mean_reprojection_error()), **split_model(rec, polygons)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--views", required=True)
    p.add_argument("--photos", default="../shared/data/train-photos")
    p.add_argument("--models", nargs="*", default=["fast"])
    p.add_argument("--positions", nargs="*", choices=("cells", "extrema"), default=None)
    p.add_argument("--baselines", nargs="*", choices=("sift", "orb"), default=["sift"])
    p.add_argument("--max-views", type=int, default=11, help="evenly spaced in name order, as honest_validation.py")
    p.add_argument("--max-keypoints", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="JSON file of the results")
    args = p.parse_args()
    args.vgg4, args.peers, args.peers_dir = False, [], ""
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)

    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        images = tmp / "views"
        images.mkdir()
        paths = sorted(list_images(args.views))
        left_out = set(training_copies(paths, args.photos)) if args.photos else set()
        paths = [q for q in paths if q not in left_out]
        if args.max_views and len(paths) > args.max_views:
            paths = paths[:: -(-len(paths) // args.max_views)]
        for q in paths:
            shutil.copy(q, images / q.name)
        names = sorted(q.name for q in paths)
        polygons = {}
        for n in names:
            corners = find_corners(cv2.imread(str(images / n), cv2.IMREAD_GRAYSCALE))
            polygons[n] = None if corners is None else board_polygon(corners)
        loaded = {n: load_image(images / n) for n in names}
        results = {}
        for e in build(args):
            if e.name.endswith("+pairref"):
                continue
            feats = {n: e(loaded[n]) for n in names}
            table = {n: {"keypoints": f.keypoints[0].double().numpy(), "image_size": f.image_size[0].numpy()}
                     for n, f in feats.items()}
            matches = [(a, b, match_pair(feats[a], feats[b], None)) for i, a in enumerate(names) for b in names[i + 1:]]
            db = tmp / f"{e.name}.db"
            write_database(db, table, matches, camera_model="SIMPLE_RADIAL", single_camera=True,
                           verify_options=seeded_verification(args.seed))
            results[e.name] = {**mapped(db, images, tmp / e.name, args.seed, polygons),
                               **room_displacement(table, matches, polygons)}
            print(e.name, results[e.name], flush=True)
        db = tmp / "colmap-sift.db"
        sift_database(db, images, 1, args.max_keypoints, args.seed)
        results["colmap-sift"] = mapped(db, images, tmp / "colmap-sift", args.seed, polygons)

    headers = ["method", "registered", "points3D", "reproj_px", "board_points", "board_reproj", "room_points",
               "room_reproj", "room_same_cam", "same_position", "moved_px"]
    rows = [[m, r["registered"], r["points3D"], r["reprojection"], r.get("board_points"), r.get("board_reproj"),
             r.get("room_points"), r.get("room_reproj"), r.get("room_matches"), r.get("room_same_position"),
             r.get("room_displacement_px")] for m, r in results.items()]
    print(format_table(headers, rows, f"COLMAP models of {len(names)} views ({', '.join(names)}), seed {args.seed}: "
                                      "board points and room points"))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"views": names, "seed": args.seed, "methods": results}, indent=1))


if __name__ == "__main__":
    main()
