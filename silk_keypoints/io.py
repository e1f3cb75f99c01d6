"""Reading images and turning user inputs into the network's batch layout.

Every image handed to a model goes through :func:`to_batch`, which returns a float32 (B, C, H, W) tensor
in [0, 1] with the model's channel count, or raises :class:`SilkError` saying what is wrong.
Grayscale from RGB uses 0.299 R + 0.587 G + 0.114 B (the original's training conversion).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from .errors import SilkError
from .files import MAX_PIXELS, check_input_file

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp")
_GRAY_WEIGHTS = (0.299, 0.587, 0.114)
# stored depth and colour type; without IMREAD_UNCHANGED OpenCV applies the EXIF orientation
_READ_FLAGS = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR
_REDUCED = {1: _READ_FLAGS, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}
UNIT_TOLERANCE = 0.01  # float images may leave [0, 1] by this much (rounding of conversions)


def image_file_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """(W, H) as stored in the header of an image file, read without decoding the pixels (Pillow's lazy
    open); None if Pillow does not know the format (OpenCV may still decode it)."""
    header = _header(path)
    return None if header is None else header[0]


def _header(path: str | os.PathLike) -> tuple[tuple[int, int], str, int] | None:
    """((W, H) as stored, Pillow's format name, EXIF orientation) from the header; None: unknown format."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                try:
                    orientation = int(img.getexif().get(0x0112, 1))
                except Exception:  # noqa: BLE001 -- a broken EXIF block: OpenCV ignores it too
                    orientation = 1
                return (int(img.size[0]), int(img.size[1])), str(img.format), orientation
    except Image.DecompressionBombError:
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        raise SilkError(f"image {path}: its header declares more than {limit / 1e6:.0f} MP (Pillow's "
                        "decompression-bomb limit); refused before decoding") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None


def upright_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """(W, H) of the image :func:`load_image` returns (EXIF orientation applied), from the header only."""
    header = _header(path)
    if header is None:
        return None
    (w, h), _, orientation = header
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def jpeg_reduction(path: str | os.PathLike, long_side: int | None) -> int:
    """The largest factor f of 1, 2, 4, 8 by which ``path`` can be decoded already shrunk (a JPEG: libjpeg's
    DCT scaling, ``cv2.IMREAD_REDUCED_COLOR_f``) with its long side still >= ``long_side``; 1 for other
    formats or no ``long_side``."""
    header = _header(path) if long_side else None
    if header is None or header[1] != "JPEG":
        return 1
    longest = max(header[0])
    return next((f for f in (8, 4, 2) if longest / f >= long_side), 1)


def check_image_file_size(path: str | os.PathLike, max_pixels: int, reduce: int = 1) -> None:
    """Raise :class:`SilkError` if the header of image file ``path`` declares more than ``max_pixels``
    pixels (after decoding shrunk by ``reduce``): the check made before any pixel is decoded."""
    size = image_file_size(path)
    if size is None:
        return
    w, h = size
    if -(-w // reduce) * -(-h // reduce) > max_pixels:
        raise SilkError(
            f"image {path} is {w}x{h} ({w * h / 1e6:.1f} MP), more than the limit of {max_pixels / 1e6:g} MP; "
            f"refused before decoding: pass --max-pixels {w * h} (Python: max_pixels={w * h}) if you have "
            f"the memory (see docs/reliability.md), or --resize PX (JPEG files are then decoded shrunk), or "
            "shrink the file")


def load_image(
    path: str | os.PathLike, gray: bool = False, max_pixels: int | None = MAX_PIXELS, reduce: int = 1
) -> np.ndarray:
    """Read an image file -> uint8 (H, W) if ``gray`` else (H, W, 3) RGB, upright.

    The EXIF orientation is applied, as ``cv2.imread``, hloc and image viewers do (a phone JPEG with
    orientation 6 comes back rotated, with width and height swapped). 16-bit files are scaled to 8 bit, alpha
    is dropped (composited on black is *not* done: the colour channels are kept as stored).
    ``max_pixels`` (None: no limit) is checked on the file's header, before any pixel is decoded. ``reduce``
    (2, 4 or 8, JPEG only, see :func:`jpeg_reduction`) decodes the image shrunk by that factor (pixel ``i``
    of the result covers pixels ``i * reduce ... (i + 1) * reduce - 1`` of the file).

    Raises:
        SilkError: missing, empty, corrupt or unsupported file, a folder, more than ``max_pixels`` pixels.
    """
    if Path(path).is_dir():
        raise SilkError(f"image {path} is a folder, not an image file (silk extract FOLDER reads the images "
                        "in a folder)")
    path = check_input_file(path, "image")
    if reduce not in _REDUCED:
        raise SilkError(f"reduce must be one of {sorted(_REDUCED)}, got {reduce!r}")
    if max_pixels is not None:
        check_image_file_size(path, max_pixels, reduce)
    data = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(data, _REDUCED[reduce])
    if img is None:
        raise SilkError(f"cannot decode image {path}: corrupt or unsupported format")
    if img.dtype == np.uint16:
        img = (img.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    elif img.dtype != np.uint8:
        img = np.clip(img.astype(np.float32) * (255.0 if img.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, :3]
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if gray and img.ndim == 3:
        img = rgb_to_gray_uint8(img)
    if not gray and img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return np.ascontiguousarray(img)


def resize_long_side(
    image: np.ndarray, long_side: int | None, upscale: bool = False
) -> tuple[np.ndarray, tuple[float, float]]:
    """Resize so that max(H, W) = ``long_side`` (only if larger unless ``upscale``; None: unchanged).

    INTER_AREA when shrinking, INTER_LINEAR when enlarging. Returns (image, (sx, sy)) with ``sx`` = new width /
    old width, ``sy`` the same for heights.
    """
    h, w = image.shape[:2]
    if not long_side or max(h, w) == long_side or (max(h, w) < long_side and not upscale):
        return image, (1.0, 1.0)
    r = long_side / max(h, w)
    size = (max(1, round(w * r)), max(1, round(h * r)))
    resized = cv2.resize(image, size, interpolation=cv2.INTER_AREA if r < 1 else cv2.INTER_LINEAR)
    return resized, (size[0] / w, size[1] / h)


def rgb_to_gray_uint8(img: np.ndarray) -> np.ndarray:
    w = np.asarray(_GRAY_WEIGHTS, dtype=np.float32)
    return np.clip(img.astype(np.float32) @ w + 0.5, 0, 255).astype(np.uint8)


def _numpy_to_tensor(img: np.ndarray) -> torch.Tensor:
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
        raise SilkError(f"numpy image must be (H, W), (H, W, 3) or (H, W, 4), got shape {img.shape}")
    img = img[:, :, :3]
    if img.dtype == np.uint8:
        t = torch.from_numpy(np.ascontiguousarray(img)).float() / 255.0
    elif img.dtype == np.uint16:
        t = torch.from_numpy(img.astype(np.float32)) / 65535.0
    elif np.issubdtype(img.dtype, np.floating):
        t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))
    else:
        raise SilkError(f"unsupported numpy image dtype {img.dtype}: use uint8, uint16 or float in [0, 1]")
    return t.permute(2, 0, 1)[None]


def check_unit_range(x: torch.Tensor) -> None:
    """Raise :class:`SilkError` if float image ``x`` has values outside [0, 1] (by more than
    :data:`UNIT_TOLERANCE`): a 0..255 float image would otherwise give silently wrong keypoints."""
    if x.numel() == 0:
        return
    lo, hi = float(x.amin()), float(x.amax())
    if hi > 1 + UNIT_TOLERANCE or lo < -UNIT_TOLERANCE:
        hint = " (a 0..255 image: divide it by 255, or pass it as uint8)" if hi > 1 + UNIT_TOLERANCE else ""
        raise SilkError(f"float image values must be in [0, 1], got values from {lo:g} to {hi:g}{hint}")


def to_batch(image: torch.Tensor | np.ndarray, channels: int) -> torch.Tensor:
    """Any supported image form -> float (B, channels, H, W) in [0, 1].

    Accepts torch (B, C, H, W) / (C, H, W) / (H, W) float in [0, 1] (C = 1 or 3) and numpy (H, W) /
    (H, W, 3) uint8, uint16 or float in [0, 1]; float images with values outside [0, 1] (a 0..255 float
    image) are refused with a :class:`SilkError`, not rescaled. RGB is converted to gray for 1-channel models, gray is
    repeated for 3-channel ones.
    """
    if isinstance(image, np.ndarray):
        x = _numpy_to_tensor(image)
        floating = np.issubdtype(image.dtype, np.floating)
    elif isinstance(image, torch.Tensor):
        x = image
        if x.ndim == 2:
            x = x[None, None]
        elif x.ndim == 3:
            x = x[None]
        if x.ndim != 4:
            raise SilkError(f"image tensor must be (B, C, H, W), (C, H, W) or (H, W), got shape {tuple(image.shape)}")
        floating = torch.is_floating_point(x)
        if not floating:
            if x.dtype == torch.uint8:
                x = x.float() / 255.0
            else:
                raise SilkError(f"image tensor must be float in [0, 1] or uint8, got {x.dtype}")
    else:
        raise SilkError(f"expected a torch.Tensor or numpy.ndarray image, got {type(image).__name__}")
    if floating:
        check_unit_range(x)
    c = x.shape[1]
    if c not in (1, 3):
        raise SilkError(f"image must have 1 or 3 channels, got {c} (shape {tuple(x.shape)})")
    if c == 3 and channels == 1:
        w = torch.tensor(_GRAY_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        x = (x * w).sum(1, keepdim=True)
    elif c == 1 and channels == 3:
        x = x.expand(-1, 3, -1, -1)
    return x.float() if x.dtype not in (torch.float32, torch.float16, torch.bfloat16) else x


def list_images(root: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Image files under ``root`` (sorted), by suffix."""
    root = Path(root)
    if not root.is_dir():
        raise SilkError(f"image folder not found: {root}")
    it = root.rglob("*") if recursive else root.iterdir()
    return sorted(p for p in it if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def named_images(
    inputs: Sequence[str | os.PathLike] = (),
    root: str | os.PathLike | None = None,
    image_list: str | os.PathLike | None = None,
) -> list[tuple[str, Path]]:
    """(name, path) of the images to process, named as hloc names them, in input order.

    Args:
        inputs: image files (named by their path relative to ``root``, else by their file name) and folders
            (every image below, sorted, named by its path relative to that folder).
        root: the folder image names are relative to; also the folder of ``image_list``'s paths (default: the
            current folder).
        image_list: a text file of image paths relative to ``root``, one per line (hloc's ``image_list``).

    Raises:
        SilkError: a missing file or folder, a folder without images, two images with the same name, no images.
    """
    base = Path(root) if root is not None else None
    out: list[tuple[str, Path]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = list_images(path)
            if not found:
                raise SilkError(f"no images in folder {path} (suffixes: {', '.join(IMAGE_SUFFIXES)})")
            out += [(p.relative_to(path).as_posix(), p) for p in found]
        elif not path.is_file():
            raise SilkError(f"image not found: {path}")
        elif base is not None:
            try:
                out.append((path.resolve().relative_to(base.resolve()).as_posix(), path))
            except ValueError:
                raise SilkError(f"image {path} is not inside --root {base}") from None
        else:
            out.append((path.name, path))
    if image_list is not None:
        listed = check_input_file(image_list, "image list")
        for line in listed.read_text().splitlines():
            name = line.strip()
            if name:
                path = (base or Path(".")) / name
                if not path.is_file():
                    raise SilkError(f"image not found: {path} (line '{name}' of {listed})")
                out.append((Path(name).as_posix(), path))
    if not out:
        raise SilkError("no images given")
    seen: dict[str, Path] = {}
    for name, path in out:
        if name in seen:
            raise SilkError(f"two images get the name {name!r} ({seen[name]} and {path}): pass --root to name "
                            "them by their relative path")
        seen[name] = path
    return out


def read_text_matrix(path: str | os.PathLike, what: str, shapes: tuple[tuple[int, int], ...]) -> np.ndarray:
    """A whitespace-separated text matrix (HPatches ``H_1_k``, ScanNet poses and intrinsics) -> float64 array.

    Raises a :class:`SilkError` naming ``what`` (e.g. "homography") if the file is missing, not numbers, or
    not of one of ``shapes``. Values are not checked (non-finite entries are returned as they are).
    """
    path = Path(path)
    if not path.is_file():
        raise SilkError(f"{what} file not found: {path}")
    try:
        m = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except (ValueError, OSError) as e:
        raise SilkError(f"malformed {what} file {path}: {e}") from None
    if m.shape not in shapes:
        wanted = " or ".join(f"{r} rows of {c} numbers" for r, c in shapes)
        raise SilkError(f"malformed {what} file {path}: expected {wanted}, got shape {m.shape}")
    return m
