"""The honest validation: our models beside XFeat, ALIKED-N16, DISK, SIFT and ORB on hard, real and rotated pairs.

Every model decision (sub-pixel keypoints, training campaigns, the default model) is made on this one run.
All methods get the same images, the same keypoint budget (2048) and the same matcher: plain mutual nearest
neighbours on the descriptors of ``extract()`` (dot product of L2-normalised descriptors); ours also appear as
``<model>+pairref`` rows, matched points refined below the cell size as ``Matcher`` does
(:mod:`silk_keypoints.refinement`; it needs both images, so hloc / COLMAP users never get it). Peers run with
their own weights from ``../shared/peers`` (``benchmarks/peers.py``). Keypoints in our convention (pixel
centres at integers). Three sets:

``hard``: HPatches-layout sequences from the *validation* split of the photo folder (never trained on):
    ``--strength 0.5 2`` ramps the change from image 2 to image 6 up to rotations of +-30 deg, scales 0.64-1.56,
    shear 0.2 and strong perspective (corner shifts ~20 % of the size) on ``v_*``, and strong gamma / gain / tint /
    shading / noise on ``i_*``; ``--viewpoint-light 1`` gives the viewpoint images that photometric change too.
    Columns: repeatability@3, MMA@1/3, homography accuracy @1/3 px (mean corner error of a 3-px RANSAC fit) and
    its AUC up to 1/3 px, #matches, ms/img.
``rotation``: in-plane rotations (``--angles``) of validation photos (no black corners, mild photometric
    change so that 0 deg is not a copy): homography accuracy @3 px and MMA@3 per angle.
``colmap``: real multi-view photos (``--views``, e.g. the 26 ``left*/right*`` views of opencv-doc, fetched by
    ``benchmarks/fetch_views.sh``; they hold two rigid motions: a board moved in front of a static room) through
    COLMAP's geometric verification (RANSAC seeded) and pycolmap's incremental mapper, one shared SIMPLE_RADIAL
    camera;
    registered images, 3-D points, mean track length, mean reprojection error (px), verified inlier matches
    per pair (the mapper-free count of geometrically consistent matches), next to pycolmap's own SIFT
    pipeline on the same images. No ground truth exists for these images: this set says whether the features
    build a consistent model of a real 3-D scene, and how precisely. ``+pairref`` rows cannot feed COLMAP
    (refined positions differ per pair); in their place, ``<model>+adjust`` rows: the keypoints adjusted
    over the tracks of COLMAP's verified inliers (``silk colmap --adjust-keypoints``), one position per
    keypoint and image.

    bash benchmarks/fetch_views.sh /tmp/views
    nice -n 10 env OMP_NUM_THREADS=2 python benchmarks/honest_validation.py --views /tmp/views \\
        --out runs/honest-validation
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from extra_photos import phash  # benchmarks/extra_photos.py
from peers import PEERS, peer_extractors  # benchmarks/peers.py
from validation import add_set_args, parse_size, validation_photos, validation_set  # the same validation set

from silk_keypoints import Matcher, SiLK
from silk_keypoints.ecosystem.colmap import adjusted_for_import, write_database
from silk_keypoints.evaluation.extractors import Extractor, ModelExtractor, OpenCVExtractor
from silk_keypoints.evaluation.hpatches import evaluate_hpatches, get_protocol, read_hpatches
from silk_keypoints.evaluation.metrics import accuracy
from silk_keypoints.evaluation.report import format_table, hpatches_table, write_json
from silk_keypoints.evaluation.testdata import make_rotations
from silk_keypoints.features import Features
from silk_keypoints.io import list_images, load_image
from silk_keypoints.matching import match_descriptors
from silk_keypoints.model.config import POSITIONS
from silk_keypoints.training.data import split_train_val

COLUMNS = ("rep@3", "mma@1", "mma@3", "h_acc@1", "h_acc@3", "h_auc@1", "h_auc@3")
SETS = ("timing", "geometry", "hard", "rotation", "colmap")


def build(args: argparse.Namespace) -> list[Extractor]:
    """Every row, in table order: ours plain, ours + pair refinement, peers, OpenCV baselines."""
    k = args.max_keypoints
    models = list(args.models) + (["vgg4"] if args.vgg4 else [])
    ours = [(Path(name).stem, SiLK.from_checkpoint(name).eval()) if Path(name).is_file()  # a weight file
            else (name, SiLK.from_pretrained(name).eval()) for name in models]
    # one row per model and --positions choice; a choice other than the model's default is named in the row
    ours = [(name if pos in (None, m.config.positions) else f"{name}:{pos}", m, pos)
            for name, m in ours for pos in (args.positions or [None])]
    out: list[Extractor] = [ModelExtractor(m, name, max_keypoints=k, neighbours=False, positions=pos)
                            for name, m, pos in ours]
    out += [ModelExtractor(m, f"{name}+pairref", max_keypoints=k, neighbours=True, positions=pos)
            for name, m, pos in ours]
    out += peer_extractors(list(args.peers), args.peers_dir, k)
    out += [OpenCVExtractor(b, k) for b in args.baselines]
    return out


def reset_timers(extractors: list[Extractor], size: tuple[int, int] | None = None) -> None:
    """Each set reports its own ms/img; with ``size`` (W, H), each extractor first runs once on a random image
    of that size, so that no set times a first call (allocation, kernel selection)."""
    for e in extractors:
        if size:
            e((np.random.default_rng(0).random((size[1], size[0], 3)) * 255).astype(np.uint8))
        e.seconds.clear()


def timing(extractors: list[Extractor], size: tuple[int, int], rounds: int) -> str:
    """ms per image of every extractor on one validation-size image, in ``rounds`` interleaved rounds (each round
    runs every method once, so a changing load on a shared machine hits all methods alike); the median."""
    image = (np.random.default_rng(1).random((size[1], size[0], 3)) * 255).astype(np.uint8)
    reset_timers(extractors, size)
    for _ in range(rounds):
        for e in extractors:
            e(image)
    rows = [[e.name, 1000 * float(np.median(e.seconds)), 1000 * float(np.min(e.seconds))] for e in extractors]
    reset_timers(extractors)
    return format_table(["method", "median_ms", "min_ms"], rows,
                        f"Extraction time, {size[0]}x{size[1]} random RGB image, {rounds} interleaved rounds")


def geometry_table(data: Path, size: tuple[int, int]) -> str:
    """What the viewpoint pairs of a generated set hold: per image index, the range over sequences of the
    in-plane rotation and scale at the image centre, of the perspective (largest / smallest local scale over the
    four corners) and of the mean corner shift (px)."""
    w, h = size
    corners = np.array([[0, 0, 1], [w - 1, 0, 1], [0, h - 1, 1], [w - 1, h - 1, 1]], dtype=np.float64)

    def jacobian(H: np.ndarray, x: np.ndarray) -> np.ndarray:
        f = [(H @ (x + d)) for d in ([1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0])]
        f = [q[:2] / q[2] for q in f]
        return np.stack([(f[0] - f[1]) / 2, (f[2] - f[3]) / 2], axis=1)

    stats: dict[int, list] = {}
    for seq in read_hpatches(data):
        if seq.kind != "viewpoint":
            continue
        for k, H in enumerate(seq.homographies, start=2):
            J = jacobian(H, np.array([(w - 1) / 2, (h - 1) / 2, 1.0]))
            local = [np.sqrt(abs(np.linalg.det(jacobian(H, c)))) for c in corners]
            moved = corners @ H.T
            shift = np.linalg.norm(moved[:, :2] / moved[:, 2:] - corners[:, :2], axis=1).mean()
            stats.setdefault(k, []).append((np.degrees(np.arctan2(J[1, 0] - J[0, 1], J[0, 0] + J[1, 1])),
                                            np.sqrt(abs(np.linalg.det(J))), max(local) / min(local), shift))
    rows = []
    for k, v in stats.items():
        a = np.array(v)
        rows.append([f"{k}.ppm", f"{a[:, 0].min():+.0f}..{a[:, 0].max():+.0f}", f"{a[:, 1].min():.2f}..{a[:, 1].max():.2f}",
                     f"{a[:, 2].min():.2f}..{a[:, 2].max():.2f}", f"{a[:, 3].min():.0f}..{a[:, 3].max():.0f}"])
    return format_table(["image", "rotation_deg", "scale", "perspective", "corner_shift_px"], rows,
                        f"Viewpoint pairs of the hard set: ranges over the {len(next(iter(stats.values())))} sequences")


def rotation_table(result: dict, angles: list[float]) -> str:
    """Homography accuracy @3 px and MMA@3 per rotation angle (columns) and method (rows)."""
    blocks = []
    for what in ("h_acc@3", "mma@3"):
        rows = []
        for method, r in result["methods"].items():
            row: list = [method]
            for k in range(2, len(angles) + 2):
                pairs = [p for p in r["pairs"] if p["index"] == k]
                if what == "h_acc@3":
                    errors = [np.inf if p["corner_error"] is None else p["corner_error"] for p in pairs]
                    row.append(accuracy(errors, (3,))[3])
                else:
                    row.append(float(np.mean([p["mma"]["3"] for p in pairs])))
            rows.append(row + [1000 * r["seconds_per_image"]])
        headers = ["method", *[f"{a:g}deg" for a in angles], "ms/img"]
        pairs_per_angle = len(next(iter(result["methods"].values()))["pairs"]) // len(angles)
        blocks.append(format_table(headers, rows, f"Rotated pairs: {what} per in-plane angle "
                                                  f"({pairs_per_angle} pairs per angle)"))
    return "\n\n".join(blocks)


def largest_model(database: Path, images: Path, work: Path, threads: int, seed: int) -> tuple:
    """pycolmap's incremental mapping of ``database``: (its largest model (most registered images) or None, the
    number of models)."""
    import pycolmap

    options = pycolmap.IncrementalPipelineOptions()
    options.num_threads = threads
    options.random_seed = seed
    work.mkdir(parents=True, exist_ok=True)
    recs = pycolmap.incremental_mapping(str(database), str(images), str(work), options)
    return (max(recs.values(), key=lambda r: r.num_reg_images()) if recs else None), len(recs)


def reconstruct(database: Path, images: Path, work: Path, threads: int, seed: int) -> dict:
    """pycolmap's incremental mapping of ``database``: numbers of its largest model (zeros if none)."""
    rec, models = largest_model(database, images, work, threads, seed)
    if rec is None:
        return {"models": 0, "registered": 0, "points3D": 0, "track_length": 0.0, "reprojection_error": None}
    return {"models": models, "registered": rec.num_reg_images(),
            "points3D": rec.num_points3D(), "track_length": float(rec.compute_mean_track_length()),
            "reprojection_error": float(rec.compute_mean_reprojection_error())}


def sift_database(database: Path, images: Path, threads: int, max_features: int, seed: int) -> float:
    """pycolmap's own SIFT (at most ``max_features`` per image) of ``images`` into ``database``, exhaustively
    matched with the seeded verification; returns the extraction's milliseconds per image."""
    import pycolmap

    extraction = pycolmap.FeatureExtractionOptions()
    extraction.num_threads = threads
    extraction.sift.max_num_features = max_features
    start = time.perf_counter()
    pycolmap.extract_features(str(database), str(images), camera_mode=pycolmap.CameraMode.SINGLE,
                              extraction_options=extraction, device=pycolmap.Device.cpu)
    ms = 1000 * (time.perf_counter() - start) / len(list_images(images))
    pycolmap.match_exhaustive(str(database), verification_options=seeded_verification(seed), device=pycolmap.Device.cpu)
    return ms


def colmap_set(extractors: list[Extractor], views: Path, tmp: Path, threads: int, seed: int,
               max_views: int | None = None, matchers: dict[str, Matcher] | None = None,
               photos: str | None = None) -> dict:
    """Extract, match (mutual NN, or each of ``matchers``: rows ``<extractor>+<name>``), verify and map the
    images of ``views`` (at most ``max_views``, evenly spaced in name order) with every plain extractor, and
    with pycolmap's own SIFT (``colmap-sift``, at most as many features as the others). Views that are copies
    of a training photo of ``photos`` (:func:`training_copies`) are left out first."""
    import pycolmap

    images = tmp / "views"
    images.mkdir(parents=True)
    paths = sorted(list_images(views))
    left_out = training_copies(paths, photos) if photos else []
    paths = [p for p in paths if p not in left_out]
    if max_views and len(paths) > max_views:
        paths = paths[:: -(-len(paths) // max_views)]
    for path in paths:
        shutil.copy(path, images / path.name)
    names = sorted(p.name for p in list_images(images))
    loaded = {n: load_image(images / n) for n in names}
    pairs = len(names) * (len(names) - 1) // 2
    results = {}
    for e in extractors:
        if e.name.endswith("+pairref"):
            results.update(adjusted_row(e, names, loaded, images, tmp, threads, seed, pairs))
            continue
        feats = {n: e(loaded[n]) for n in names}
        table = {n: {"keypoints": f.keypoints[0].double().numpy(), "image_size": f.image_size[0].numpy()}
                 for n, f in feats.items()}
        for label, matcher in (matchers or {"": None}).items():
            name = f"{e.name}+{label}" if label else e.name
            matches = [(a, b, match_pair(feats[a], feats[b], matcher)) for i, a in enumerate(names) for b in names[i + 1:]]
            db = tmp / f"{name}.db"
            counts = write_database(db, table, matches, camera_model="SIMPLE_RADIAL", single_camera=True,
                                    verify_options=seeded_verification(seed))
            results[name] = {**reconstruct(db, images, tmp / name, threads, seed),
                             "verified_pairs": counts["verified_pairs"],
                             "inliers_per_pair": inliers_per_pair(db, pairs),
                             "ms_per_image": 1000 * e.seconds_per_image}
    db = tmp / "colmap-sift.db"
    ms = sift_database(db, images, threads, max(len(table[n]["keypoints"]) for n in names) if results else 2048, seed)
    database = pycolmap.Database.open(str(db))
    verified = database.num_verified_image_pairs()
    database.close()
    results["colmap-sift"] = {**reconstruct(db, images, tmp / "colmap-sift", threads, seed),
                              "verified_pairs": verified, "inliers_per_pair": inliers_per_pair(db, pairs),
                              "ms_per_image": ms}
    return {"images": len(names), "pairs": pairs, "methods": results,
            "views": names, "left_out": [p.name for p in left_out]}


def adjusted_row(e: Extractor, names: list[str], loaded: dict, images: Path, tmp: Path, threads: int, seed: int,
                 pairs: int) -> dict:
    """The ``<model>+adjust`` row of the colmap set from a ``+pairref`` extractor (features with neighbour
    descriptors): mutual NN, COLMAP's verification, the keypoints adjusted on its inliers
    (:func:`~silk_keypoints.refinement.adjust_keypoints`, what ``silk colmap --adjust-keypoints`` does),
    verified again and mapped."""
    feats = {n: e(loaded[n]) for n in names}
    matches = [(a, b, match_pair(feats[a], feats[b], None)) for i, a in enumerate(names) for b in names[i + 1:]]
    options = {"camera_model": "SIMPLE_RADIAL", "single_camera": True, "verify_options": seeded_verification(seed)}
    table = adjusted_for_import({n: f.to_numpy() for n, f in feats.items()}, matches, **options)
    name = e.name.replace("+pairref", "+adjust")
    db = tmp / f"{name}.db"
    counts = write_database(db, table, matches, **options)
    return {name: {**reconstruct(db, images, tmp / name, threads, seed), "verified_pairs": counts["verified_pairs"],
                   "inliers_per_pair": inliers_per_pair(db, pairs), "ms_per_image": 1000 * e.seconds_per_image}}


def training_copies(paths: list[Path], photos: str, max_bits: int = 2) -> list[Path]:
    """The images of ``paths`` that are copies (resized, re-encoded) of a photo of the training split of
    ``photos``: 64-bit DCT pHash within ``max_bits`` bits (other views of the same scene differ by >= 6)."""
    import cv2

    codes = [phash(cv2.imread(str(p))) for p in split_train_val(list_images(photos))[0]]
    views = {p: phash(cv2.imread(str(p))) for p in paths}
    return [p for p, code in views.items() if min((code ^ c).bit_count() for c in codes) <= max_bits]


def seeded_verification(seed: int):
    """COLMAP's default two-view verification with a fixed RANSAC seed (its default, -1, draws a new one each
    run, so that two runs on the same matches verify, and then map, differently)."""
    import pycolmap

    options = pycolmap.TwoViewGeometryOptions()
    options.ransac.random_seed = seed
    return options


def match_pair(feats0: Features, feats1: Features, matcher: Matcher | None) -> np.ndarray:
    """(K, 2) index pairs: mutual NN of the descriptors, or ``matcher``'s matches."""
    if matcher is None:
        return match_descriptors(feats0.descriptors[0], feats1.descriptors[0], "mnn")[0].numpy()
    return matcher({"image0": feats0, "image1": feats1})["matches"][0].numpy()


def inliers_per_pair(database: Path, pairs: int) -> float:
    """Matches that COLMAP's two-view verification kept as inliers (consistent with the pair's epipolar or
    homography geometry) in ``database``, divided by the number of image ``pairs`` (all of them, verified
    or not)."""
    import pycolmap

    db = pycolmap.Database.open(str(database))
    try:
        return db.num_inlier_matches() / pairs
    finally:
        db.close()


def colmap_table(result: dict) -> str:
    headers = ["method", "registered", "points3D", "track_len", "reproj_px", "verified_pairs", "inliers/pair",
               "models", "ms/img"]
    rows = [[m, r["registered"], r["points3D"], r["track_length"], r["reprojection_error"], r["verified_pairs"],
             r["inliers_per_pair"], r["models"], r["ms_per_image"]] for m, r in result["methods"].items()]
    return format_table(headers, rows, f"Real multi-view photos through pycolmap ({result['images']} images, "
                                       f"{result['pairs']} pairs, mutual NN unless named, COLMAP verification, "
                                       "largest model)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_set_args(p)
    p.set_defaults(sequences=10, strength=(0.5, 2.0), viewpoint_light=1.0)
    p.add_argument("--models", nargs="*", default=["fast", "tiny"], help="shipped model names or weight files")
    p.add_argument("--positions", nargs="*", choices=POSITIONS, default=None,
                   help="rows per model for these keypoint placements (default: the model's own)")
    p.add_argument("--vgg4", action="store_true", help="also the (slow) vgg4 model")
    p.add_argument("--peers", nargs="*", default=list(PEERS), choices=PEERS)
    p.add_argument("--peers-dir", default="../shared/peers", help="folder of the peers' weight files")
    p.add_argument("--baselines", nargs="*", default=["sift", "orb"], choices=["sift", "orb"])
    p.add_argument("--sets", nargs="*", default=list(SETS), choices=SETS)
    p.add_argument("--rotations", type=int, default=5, help="photos of the rotation set")
    p.add_argument("--angles", type=float, nargs="*", default=[0, 15, 30, 45, 60, 90, 135, 180])
    p.add_argument("--views", default=None, help="folder of real multi-view photos for the colmap set")
    p.add_argument("--max-views", type=int, default=13, help="at most this many views (evenly spaced by name)")
    p.add_argument("--timing-rounds", type=int, default=5, help="interleaved rounds of the timing set")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="folder for the text tables and JSON results")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if "colmap" in args.sets and not args.views:
        p.error("the colmap set needs --views DIR (benchmarks/fetch_views.sh makes one), or leave it out: --sets")

    extractors = build(args)
    k = args.max_keypoints
    protocol = get_protocol("d2net", max_keypoints=k, table=COLUMNS, refine=True)  # refines the +pairref rows
    out = Path(args.out) if args.out else None
    texts, results = [], {}

    def emit(name: str, text: str, result: dict) -> None:
        print(text + "\n", flush=True)
        texts.append(text)
        results[name] = result
        if out:
            out.mkdir(parents=True, exist_ok=True)
            (out / f"{name}.txt").write_text(text + "\n")
            write_json(out / f"{name}.json", result)

    with tempfile.TemporaryDirectory() as tmp:
        if "timing" in args.sets:
            emit("timing", timing(extractors, parse_size(args.size), args.timing_rounds), {})
        if "geometry" in args.sets and "hard" not in args.sets:  # the hard set's table has it too
            data, _ = validation_set(args, tmp)
            emit("geometry", geometry_table(data, parse_size(args.size)), {})
        if "hard" in args.sets:
            reset_timers(extractors, parse_size(args.size))
            start = time.perf_counter()
            data, photos = validation_set(args, tmp)
            result = evaluate_hpatches(data, extractors, protocol, seed=args.seed, progress=False)
            head = (f"Hard homography set: {photos} validation photos -> {args.sequences} sequences of {args.size}, "
                    f"strength {args.strength[0]:g}-{args.strength[1]:g}, viewpoint light {args.viewpoint_light:g}, "
                    f"{k} keypoints, plain mutual NN (+pairref: pair refinement), seed {args.seed}, "
                    f"{args.threads} threads; {time.perf_counter() - start:.0f} s\n")
            emit("hard", head + hpatches_table(result) + "\n\n" + geometry_table(data, parse_size(args.size)), result)
        if "rotation" in args.sets:
            reset_timers(extractors, parse_size(args.size))
            start = time.perf_counter()
            folder, _ = validation_photos(args.photos, tmp)
            seqs = make_rotations(Path(tmp) / "rotations", folder, args.rotations, parse_size(args.size),
                                  args.angles, args.seed)
            result = evaluate_hpatches(seqs, extractors, protocol, seed=args.seed, progress=False)
            head = (f"Rotation set: {args.rotations} validation photos of {args.size}, rotated in-plane; {k} keypoints, "
                    f"plain mutual NN, 3-px RANSAC homography; {time.perf_counter() - start:.0f} s\n")
            emit("rotation", head + rotation_table(result, list(args.angles)), result)
        if "colmap" in args.sets:
            reset_timers(extractors, (640, 480))
            start = time.perf_counter()
            result = colmap_set(extractors, Path(args.views), Path(tmp) / "colmap", args.threads, args.seed,
                                args.max_views, photos=args.photos)
            head = (f"Multi-view set: {args.views}, views {' '.join(result['views'])} (left out as training "
                    f"photos: {' '.join(result['left_out']) or 'none'}); {time.perf_counter() - start:.0f} s\n")
            emit("colmap", head + colmap_table(result), result)
    if out:
        (out / "tables.txt").write_text("\n\n".join(texts) + "\n")


if __name__ == "__main__":
    main()
