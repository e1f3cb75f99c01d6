"""Rebuild the EXTRA set of real photographs for self-supervised keypoint training (random-homography pairs).

Same rules as ``shared/data/train-photos`` (see its README and SOURCES.txt): Debian 12 packages fetched by name
with ``apt-get download`` and unpacked with ``dpkg -x`` into a temporary folder (nothing is installed); only the
files picked by eye as real photographs (the ``SOURCES`` table below); long side <= 640 px (OpenCV ``INTER_AREA``,
never upscaled), 3 channels, JPEG quality 90; kept only if OpenCV SIFT finds >= 300 keypoints on the resized
grayscale image. A file whose license (the package's DEP-5 ``/usr/share/doc/<pkg>/copyright``: the last
``Files:`` stanza that matches, else the default ``Files: *`` one, marked "package default") is GFDL-only,
non-commercial or unclear is left out. Duplicates (64-bit DCT pHash, Hamming distance <= 8) of an image of the
existing set, or of one kept before, are left out; so are the files the existing set already took.

The packages and files reserved for evaluation, and the views of our multi-view validation (``DENY_PACKAGES``,
``DENY_FILES``), are never fetched or read.
Output: ``<package>_<basename>.jpg`` and ``CREDITS.txt`` (one line per file) in ``--out``, which must lie outside
the repository. Running it again gives the same folder. Run ``apt-get update`` once first.

    nice -n 19 python benchmarks/extra_photos.py --out /work/extra-photos --keep-downloads /tmp/extra-debs
"""

from __future__ import annotations

import argparse
import fnmatch
import re
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import NoReturn

import cv2
import numpy as np

LONG_SIDE = 640
JPEG_QUALITY = 90
MIN_SIFT = 300
MAX_DUP_DISTANCE = 8
REPO = Path(__file__).resolve().parents[1]
DEFAULT_EXISTING = REPO.parent / "shared" / "data" / "train-photos"

# Reserved for evaluation (DEVELOPERS.md), and the opencv-doc left*/right* views of our own multi-view
# validation (benchmarks/fetch_views.sh): never downloaded, never read.
DENY_PACKAGES = ("plasma-workspace-wallpapers", "lomiri-wallpapers*", "mate-backgrounds")
DENY_FILES = (  # (package glob, basename glob)
    ("opencv-doc", "graf*"),
    ("opencv-doc", "aloe*"),
    ("opencv-doc", "left*"),
    ("opencv-doc", "right*"),
    ("*", "stereo_motorcycle*"),
)
CREDITS_HEADER = (
    "# EXTRA real photographs for keypoint training, built by benchmarks/extra_photos.py (EXTRA-PHOTOS.md).",
    "# Author and license: the last Files: stanza of /usr/share/doc/<pkg>/copyright (DEP-5) matching the",
    "#   file; 'package default' = the Files: * stanza. Attribution / ShareAlike terms (CC-BY*, CC-BY-SA*,",
    "#   GPL, LGPL) apply when redistributing: keep this file with the images.",
    "# columns: file | original path in package | package version | author/copyright | license",
)
# A license alternative matching this is not usable; a file needs one usable alternative.
BAD_LICENSE = re.compile(r"GFDL|-NC\b|-NC-|sampling|unknown|^$", re.IGNORECASE)


@dataclass(frozen=True)
class Source:
    """Files of one Debian package that were checked by eye to be real photographs."""

    package: str
    include: tuple[str, ...]  # fnmatch globs on Member.orig
    kind: str = "file"  # "file", "rcc" (Qt resource bundle), "pzl" (jigzo puzzle) or "zip" (.jar)
    src_map: tuple[str, str] = ("", "")  # prefix of a located path -> prefix of its DEP-5 path


GC = "usr/share/gcompris-qt/rcc/"
DETAILS = ("Louvre_2007_02_24_c", "FanoeWindmill", "EgeskovSlotSpejling", "GizahPyramids", "EilanDonanCastle",
           "TowerBridgeLondon", "Chenonceau", "NDP", "Nagoya", "TajMahal", "TourEiffel", "Neuschwanstein",
           "OperaSidney")  # the photo puzzles of "details"; the others are paintings
VISP = "usr/share/visp-images-data/ViSP-images/"
SOURCES = (
    Source("gcompris-qt-data", (
        GC + "categorization.rcc :*/images/*.webp",
        *(GC + f"details.rcc :*/image/{name}_background.webp" for name in DETAILS),
    ), kind="rcc", src_map=("gcompris/", "")),
    Source("tuxpaint-data", (
        "usr/share/tuxpaint/templates/*.jpg",
        "usr/share/tuxpaint/starters/reef-back.png",
        "usr/share/tuxpaint/starters/skyline-sf-dusk-back.jpeg",
    ), src_map=("usr/share/tuxpaint/", "")),
    Source("jigzo-data", ("usr/share/games/jigzo/puzzles/*.pzl",), kind="pzl",
           src_map=("usr/share/games/jigzo/", "")),
    Source("libjxl-testdata", (
        "usr/share/libjxl-testdata/jxl/flower/flower.png",
        "usr/share/libjxl-testdata/jxl/hdr_room.png",
        "usr/share/libjxl-testdata/external/wesaturate/500px/*_srgb8.png",
    ), src_map=("usr/share/libjxl-testdata/", "")),
    Source("visp-images-data", tuple(VISP + name for name in (
        "Solvay/Solvay_conference_1927_Version2_1024x705.png", "AprilTag/AprilTag.pgm", "cube/image.0000.pgm",
        "mire-2/image.0001.pgm", "mbt-depth/castel/castel/image_0000.pgm",
    )), src_map=(VISP, "")),
    Source("puzzle-jigsaw", (
        "usr/share/puzzle-jigsaw/samples/*.jpg",
        "usr/share/puzzle-jigsaw/images/table.png",
    ), src_map=("usr/share/puzzle-jigsaw/", "")),
    Source("stellarium-data", (
        "usr/share/stellarium/scenery3d/Sterngarten/Sterngarten_20100320.png",
        "usr/share/stellarium/scenery3d/Sterngarten/Sterngarten_Wien_innerArea/Vegetation_Juniper2.jpg",
        "usr/share/stellarium/landscapes/garching/garching-gl[1-4].png",  # panorama tiles, sky cut away
        "usr/share/stellarium/landscapes/hurricane/hurricane[1-8].png",
    ), src_map=("usr/share/stellarium/", "")),
    Source("sweethome3d", tuple(f"usr/share/sweethome3d/sweethome3d.jar :*/textures/{name}.jpg" for name in (
        "boxTree", "grass", "marbleWall", "pebbles", "roughcast", "pavingStone", "blueTiles", "darkBlueTile",
        "veryCloudy",
    )), kind="zip", src_map=("", "src/")),
    Source("scribus-data", (
        "usr/share/scribus/templates/textbased/an_image.jpg",
        "usr/share/scribus/templates/nl2/flowers.jpg",
    ), src_map=("usr/share/scribus/", "scribus/")),
)


class UsageError(Exception):
    """Bad input: reported as one ``error:`` line and exit code 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


@dataclass(frozen=True)
class Member:
    orig: str  # original path in the package ("<file> :<inner path>" inside a container)
    located: str  # the path that src_map turns into the DEP-5 path
    data: bytes
    crop: tuple[int, int, int, int] | None = None  # x, y, w, h


@dataclass(frozen=True)
class Stanza:
    patterns: tuple[str, ...]
    author: str
    license: str


def denied_package(package: str) -> bool:
    return any(fnmatch.fnmatchcase(package, pattern) for pattern in DENY_PACKAGES)


def denied_file(package: str, path: str) -> bool:
    name = PurePosixPath(path).name.lower()
    return any(fnmatch.fnmatchcase(package, pkg) and fnmatch.fnmatchcase(name, pat) for pkg, pat in DENY_FILES)


def rcc_entries(blob: bytes) -> Iterator[tuple[str, bytes | None]]:
    """(path, data) of each file in a Qt binary resource bundle (data None: zstd, not readable here)."""
    if blob[:4] != b"qres":
        raise ValueError("not a Qt resource bundle")
    version, tree, data, names = struct.unpack(">IIII", blob[4:20])
    node_size = 22 if version >= 2 else 14

    def name(offset: int) -> str:
        (length,) = struct.unpack_from(">H", blob, names + offset)
        return blob[names + offset + 6:names + offset + 6 + 2 * length].decode("utf-16-be")

    def walk(index: int, prefix: str) -> Iterator[tuple[str, bytes | None]]:
        pos = tree + index * node_size
        name_offset, flags = struct.unpack_from(">IH", blob, pos)
        path = f"{prefix}/{name(name_offset)}" if index else ""
        if flags & 2:  # directory
            count, first = struct.unpack_from(">II", blob, pos + 6)
            for child in range(first, first + count):
                yield from walk(child, path)
            return
        (offset,) = struct.unpack_from(">I", blob, pos + 10)
        (size,) = struct.unpack_from(">I", blob, data + offset)
        raw = blob[data + offset + 4:data + offset + 4 + size]
        yield path, (zlib.decompress(raw[4:]) if flags & 1 else None if flags & 4 else raw)

    yield from walk(0, "")


def pzl_image(blob: bytes) -> tuple[str, bytes, tuple[int, int, int, int]]:
    """The full picture of a jigzo puzzle: (name, JPEG data, crop rectangle of the picture in it)."""
    lines = blob.split(b"\n", 4)  # magic, version, name, url, then (file name, size, data) entries
    if lines[0] != b"PzlF":
        raise ValueError("not a jigzo puzzle")
    rest = lines[4]
    entries: dict[str, bytes] = {}
    while rest.strip():
        name, size, rest = rest.lstrip(b"\n").split(b"\n", 2)
        entries[name.decode()] = rest[:int(size)]
        rest = rest[int(size):]
    rect = re.search(rb"^image (\d+) (\d+) (\d+) (\d+)", next(v for k, v in entries.items() if k.endswith(".map")),
                     re.MULTILINE)
    if rect is None:
        raise ValueError("puzzle map without an image rectangle")
    name = next(k for k in entries if k.endswith(".jpg") and not k.endswith("-t.jpg"))
    x, y, w, h = (int(v) for v in rect.groups())
    return name, entries[name], (x, y, w, h)


def members(root: Path, source: Source) -> Iterator[Member]:
    """The files of an unpacked package that the source's include globs pick."""
    def picked(orig: str) -> bool:
        return any(fnmatch.fnmatchcase(orig, pattern) for pattern in source.include)

    suffix = {"rcc": ".rcc", "pzl": ".pzl", "zip": ".jar"}.get(source.kind, "")
    for path in sorted(p for p in root.rglob(f"*{suffix}") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if denied_file(source.package, rel):
            continue
        if source.kind == "rcc":
            for inner, data in rcc_entries(path.read_bytes()):
                orig = f"{rel} :{inner}"
                if picked(orig) and not denied_file(source.package, inner) and data is not None:
                    yield Member(orig, inner.lstrip(":/"), data)
        elif source.kind == "zip":
            with zipfile.ZipFile(path) as archive:
                for inner in archive.namelist():
                    if picked(f"{rel} :{inner}") and not denied_file(source.package, inner):
                        yield Member(f"{rel} :{inner}", inner, archive.read(inner))
        elif picked(rel) and source.kind == "pzl":
            name, data, crop = pzl_image(path.read_bytes())
            yield Member(f"{rel} :{name}", rel, data, crop)
        elif picked(rel):
            yield Member(rel, rel, path.read_bytes())


def read_copyright(path: Path) -> list[Stanza] | None:
    """The ``Files:`` stanzas of a DEP-5 copyright file, in file order; None if it is not DEP-5."""
    paragraphs = [p for p in re.split(r"\n[ \t]*\n", path.read_text(errors="replace")) if p.strip()]
    if not paragraphs or "copyright-format" not in paragraphs[0].split("\n", 1)[0]:
        return None
    stanzas = []
    for paragraph in paragraphs:
        fields: dict[str, str] = {}
        key = ""
        for line in paragraph.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
        if "Files" in fields:
            url = re.search(r"https?://\S+", fields.get("Comment", ""))
            author = " ".join(fields.get("Copyright", "").split()) + (f" ({url.group()})" if url else "")
            lic = fields.get("License", "").split("\n")[0].strip()
            stanzas.append(Stanza(tuple(fields["Files"].split()), author, lic))
    return stanzas


def pattern_matches(path: str, pattern: str) -> bool:
    """DEP-5 glob match; a literal file name also matches the same name with another extension
    (GCompris ships its .jpg/.png sources as .webp)."""
    if fnmatch.fnmatchcase(path, pattern):
        return True
    literal = PurePosixPath(pattern)
    return bool(literal.suffix) and not any(c in pattern for c in "*?[") and \
        PurePosixPath(path).with_suffix("") == literal.with_suffix("")


def license_of(stanzas: list[Stanza], path: str) -> tuple[str, str] | None:
    """(author, license) of the last stanza matching the path; the default ``*`` one is marked."""
    for stanza in reversed(stanzas):
        if "*" in stanza.patterns:
            return stanza.author, f"{stanza.license} (package default)"
        if any(pattern_matches(path, pattern) for pattern in stanza.patterns):
            return stanza.author, stanza.license
    return None


def usable(license_name: str) -> bool:
    core = license_name.removesuffix(" (package default)")
    return any(not BAD_LICENSE.search(alt.strip()) for alt in re.split(r"\s+or\s+", core))


def decode(member: Member) -> np.ndarray | None:
    """3-channel 8-bit image; one with an alpha channel is cut to its longest run of fully opaque rows
    (Stellarium landscape tiles have a transparent sky). None if unreadable or with no opaque row."""
    buffer = np.frombuffer(member.data, np.uint8)
    image = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    if image is None:
        return None
    raw = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    if raw.ndim == 3 and raw.shape[2] == 4:
        opaque = np.flatnonzero((raw[..., 3] == np.iinfo(raw.dtype).max).all(axis=1))
        if opaque.size == 0:
            return None
        rows = max(np.split(opaque, np.flatnonzero(np.diff(opaque) > 1) + 1), key=len)
        image = image[rows[0]:rows[-1] + 1]
    if member.crop:
        x, y, w, h = member.crop
        image = image[y:y + h, x:x + w]
    return image


def resize(image: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    scale = LONG_SIDE / max(height, width)
    if scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def phash(image: np.ndarray) -> int:
    """64-bit DCT perceptual hash: low 8x8 DCT coefficients of the 32x32 grayscale image above their median."""
    gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    small = cv2.resize(gray, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:8, :8].flatten()
    return sum(1 << i for i, bit in enumerate(low > np.median(low)) if bit)


def is_duplicate(code: int, codes: list[int]) -> bool:
    return any((code ^ other).bit_count() <= MAX_DUP_DISTANCE for other in codes)


def existing_set(folder: Path) -> tuple[set[tuple[str, str]], list[int]]:
    """(package, original path) pairs listed in the existing set's SOURCES.txt, and the pHash of its JPEGs."""
    taken = set()
    sources = folder / "SOURCES.txt"
    if sources.is_file():
        for line in sources.read_text().splitlines():
            cols = line.split(" | ")
            if not line.startswith("#") and len(cols) > 4:
                taken.add((cols[3].split()[0], cols[4]))
    codes = []
    for path in sorted(folder.glob("*.jpg")):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is not None:
            codes.append(phash(image))
    return taken, codes


def fetch(package: str, debs: Path) -> Path:
    """The package's .deb in ``debs``, downloaded with ``apt-get download`` unless already there."""
    if denied_package(package):
        raise RuntimeError(f"refusing {package}: reserved for evaluation")
    found = sorted(debs.glob(f"{package}_*.deb"))
    if not found:
        run = subprocess.run(["apt-get", "download", package], cwd=debs, capture_output=True, text=True,
                             check=False)
        found = sorted(debs.glob(f"{package}_*.deb"))
        if run.returncode or not found:
            reason = (run.stderr.strip().splitlines() or ["no .deb"])[-1]
            raise RuntimeError(f"apt-get download {package} failed: {reason}")
    return found[-1]


def output_name(package: str, orig: str, taken: set[str]) -> str:
    """``<package>_<basename>.jpg``; ``<package>_<folder>_<basename>.jpg`` when that is taken."""
    path = PurePosixPath(orig.split(" :")[-1])
    name = f"{package}_{path.stem}.jpg"
    if name in taken:
        name = f"{package}_{path.parent.name}_{path.stem}.jpg"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def previous_credits(out: Path) -> dict[str, str]:
    """The lines of an earlier run's CREDITS.txt whose file is still there, by file name."""
    path = out / "CREDITS.txt"
    lines = path.read_text().splitlines() if path.is_file() else []
    return {line.split(" | ")[0]: line for line in lines
            if not line.startswith("#") and (out / line.split(" | ")[0]).is_file()}


def build(out: Path, sources: list[Source], debs: Path, existing: Path) -> None:
    """Fill ``out`` with the photos of ``sources``; what an earlier run made from the other SOURCES stays."""
    taken, codes = existing_set(existing)
    others = {source.package for source in SOURCES} - {source.package for source in sources}
    credits = previous_credits(out)
    for name in [name for name, line in credits.items() if line.split(" | ")[2].split()[0] not in others]:
        del credits[name]
        (out / name).unlink()
    codes += [phash(cv2.imread(str(out / name), cv2.IMREAD_COLOR)) for name in sorted(credits)]
    sift = cv2.SIFT_create()
    for source in sources:
        deb = fetch(source.package, debs)
        version = subprocess.run(["dpkg-deb", "--field", str(deb), "Version"], capture_output=True, text=True,
                                 check=True).stdout.strip()
        counts: Counter[str] = Counter()
        with tempfile.TemporaryDirectory(prefix="extra-photos-") as tmp:
            root = Path(tmp)
            subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
            copyright_file = root / "usr/share/doc" / source.package / "copyright"
            stanzas = read_copyright(copyright_file) if copyright_file.is_file() else None
            for member in members(root, source):
                counts["picked"] += 1
                if (source.package, member.orig) in taken:
                    counts["already in the existing set"] += 1
                    continue
                located = member.located
                if located.startswith(source.src_map[0]):
                    located = source.src_map[1] + located[len(source.src_map[0]):]
                credit = license_of(stanzas, located) if stanzas else None
                if credit is None or not usable(credit[1]):
                    counts["license"] += 1
                    continue
                image = decode(member)
                if image is None:
                    counts["unreadable or transparent"] += 1
                    continue
                small = resize(image)
                if len(sift.detect(cv2.cvtColor(small, cv2.COLOR_BGR2GRAY), None)) < MIN_SIFT:
                    counts[f"< {MIN_SIFT} SIFT keypoints"] += 1
                    continue
                code = phash(small)
                if is_duplicate(code, codes):
                    counts["duplicate"] += 1
                    continue
                codes.append(code)
                name = output_name(source.package, member.orig, set(credits))
                ok, jpeg = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
                if not ok:
                    raise RuntimeError(f"cannot encode {member.orig}")
                (out / name).write_bytes(jpeg.tobytes())
                credits[name] = " | ".join((name, member.orig, f"{source.package} {version}", *credit))
                counts["kept"] += 1
        dropped = ", ".join(f"{n} {why}" for why, n in counts.items() if why not in ("kept", "picked"))
        print(f"{source.package} {version}: {counts['kept']} kept of {counts['picked']} picked"
              + (f" (left out: {dropped})" if dropped else ""))
    lines = [*CREDITS_HEADER, *(credits[name] for name in sorted(credits))]
    (out / "CREDITS.txt").write_text("\n".join(lines) + "\n")
    print(f"total: {len(credits)} photos in {out}")


def main(argv: list[str] | None = None) -> int:
    parser = Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder (outside the repository)")
    parser.add_argument("--packages", nargs="+", metavar="PKG", help="only these packages of the SOURCES table")
    parser.add_argument("--keep-downloads", type=Path, metavar="DIR", help="keep (and reuse) the .deb files here")
    parser.add_argument("--existing", type=Path, default=DEFAULT_EXISTING,
                        help=f"existing set to skip and de-duplicate against (default {DEFAULT_EXISTING})")
    try:
        args = parser.parse_args(argv)
        known = {source.package for source in SOURCES}
        for package in args.packages or ():
            if denied_package(package):
                raise UsageError(f"package {package} is reserved for evaluation and is never fetched")
            if package not in known:
                raise UsageError(f"unknown package {package} (known: {', '.join(sorted(known))})")
        out = args.out.resolve()
        if out == REPO or REPO in out.parents:
            raise UsageError(f"--out {out} is inside the repository; the photos must never be committed")
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out {out} is not a folder")
        if not args.existing.is_dir():
            raise UsageError(f"existing set {args.existing} not found (pass --existing DIR)")
        if args.keep_downloads is not None and args.keep_downloads.exists() and not args.keep_downloads.is_dir():
            raise UsageError(f"--keep-downloads {args.keep_downloads} is not a folder")
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sources = [s for s in SOURCES if not args.packages or s.package in args.packages]
    out.mkdir(parents=True, exist_ok=True)
    try:
        if args.keep_downloads is not None:
            args.keep_downloads.mkdir(parents=True, exist_ok=True)
            build(out, sources, args.keep_downloads.resolve(), args.existing)
        else:
            with tempfile.TemporaryDirectory(prefix="extra-debs-") as debs:
                build(out, sources, Path(debs), args.existing)
    except (RuntimeError, ValueError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
