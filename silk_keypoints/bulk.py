"""Many images or pairs into one hloc file: resumable, parallel decoding, sharded across ``torchrun`` ranks.

:func:`extract_to_h5` is ``silk extract``: images are decoded and resized by ``DataLoader`` worker processes
(prefetch bounded to two batches per worker, so memory stays flat), which on CPU also run the network (on a GPU
the main process does), equal-size images run through the network in batches of up to ``batch_size``, and each
image is written to ``features.h5`` as it finishes
(:class:`~silk_keypoints.ecosystem.hloc.H5Store`): a rerun skips the images already there. An image that
fails (corrupt, too small) is reported and skipped, listed in ``<out>.failed.txt``.
:func:`match_to_h5` does the same for the pairs of ``silk match-pairs``.

Under ``torchrun`` (``WORLD_SIZE`` > 1) rank ``r`` of ``W`` takes the ``r``-th of ``W`` contiguous slices of
the item list (the same on every rank: names are sorted or listed), writes ``<stem>.part<r>of<W><suffix>``
beside the output, and rank 0 merges the parts into the output once every rank is done, then deletes them.
A killed sharded run resumes from the parts and the output on its next start.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .ecosystem.hloc import (
    FEATURE_KEYS,
    MATCH_KEYS,
    H5Store,
    check_pair_names,
    feature_provenance,
    match_into,
    matcher_provenance,
    pair_done,
)
from .ecosystem.pairs import unique_pairs
from .errors import SilkError
from .files import MAX_PIXELS, write_bytes
from .image_features import batch_features, prepare_image
from .matching import Matcher

T = TypeVar("T")


@dataclass
class RunSummary:
    """What a run did: items ``done`` now, ``skipped`` (already in the output), ``failed`` (name, reason),
    ``rejected`` (pairs done with no matches: the unrelated-pairs gate)."""

    done: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    rejected: int = 0

    def add(self, other: RunSummary) -> None:
        self.done += other.done
        self.skipped += other.skipped
        self.failed += other.failed
        self.rejected += other.rejected

    def check_some_done(self, problem: str, out: str | os.PathLike) -> None:
        """Raise :class:`SilkError` (``problem``, the count, the list file, the first reason) if every item of
        the run failed and none was done now or before."""
        if self.failed and not self.done and not self.skipped:
            raise SilkError(f"{problem} ({len(self.failed)} failed, listed in {failed_list_path(out)}; the first: "
                            f"{self.failed[0][1]})")

    def line(self, what: str, out: str | os.PathLike) -> str:
        """One line: ``wrote 480 images to OUT (20 already there, 2 failed: see OUT.failed.txt) in 63 s ...``."""
        rate = f", {self.done / self.seconds:.2f} {what}/s" if self.seconds > 0 and self.done else ""
        failed = f", {len(self.failed)} failed: see {failed_list_path(out)}" if self.failed else ""
        rejected = f", {self.rejected} with no matches: unrelated-pairs gate" if self.rejected else ""
        return (f"wrote {self.done} {what} to {out} ({self.skipped} already there{failed}{rejected}) in "
                f"{self.seconds:.1f} s{rate}")


def failed_list_path(out: str | os.PathLike) -> Path:
    """``<out>.failed.txt``: the items of the last run that failed, ``name<TAB>reason`` per line."""
    return Path(f"{os.fspath(out)}.failed.txt")


def part_path(out: str | os.PathLike, rank: int, world: int) -> Path:
    """The part file rank ``rank`` of ``world`` writes: ``<stem>.part<rank>of<world><suffix>`` beside ``out``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.part{rank}of{world}{out.suffix}")


def shard(items: Sequence[T], rank: int, world: int) -> list[T]:
    """The ``rank``-th of ``world`` contiguous, near-equal slices of ``items`` (every item in exactly one)."""
    n = len(items)
    return list(items[rank * n // world : (rank + 1) * n // world])


def keep_memory_flat() -> bool:
    """Fix glibc's mmap threshold at 128 kB for this process (``mallopt(M_MMAP_THRESHOLD)``); True if set.

    glibc raises the threshold as large buffers are freed, after which the per-image tensors come from the heap,
    which fragments and grows with the number of images (measured: `silk extract` of one image 320 times,
    359 MB after 80, 488 MB after 320; with the threshold fixed 324 / 335 MB). A long extraction calls this
    once; elsewhere (not glibc) it does nothing.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, 128 * 1024))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


# ------------------------------------------------------------------------------------------------ decoding
class ImageDataset(Dataset):
    """``(name, path)`` images -> dicts ``name``, ``image`` (uint8, as the network sees it), ``scale``, ``size``
    (:func:`~silk_keypoints.image_features.prepare_image`), or ``name`` and ``error`` (the message) for an image
    that cannot be read: a bad file never stops a worker."""

    def __init__(self, images: Sequence[tuple[str, Path]], gray: bool, resize: int | None = None,
                 max_pixels: int | None = MAX_PIXELS) -> None:
        self.images, self.gray, self.resize, self.max_pixels = list(images), gray, resize, max_pixels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Any]:
        name, path = self.images[i]
        try:
            image, scale, size = prepare_image(path, self.gray, self.resize, max_pixels=self.max_pixels)
        except SilkError as e:
            return {"name": name, "error": str(e)}
        # a tensor travels from a worker through shared memory (a numpy array would be pickled through the pipe,
        # and the main process's heap would grow with every image it unpickles)
        return {"name": name, "image": torch.from_numpy(image), "scale": scale, "size": size}


def image_loader(dataset: ImageDataset, workers: int = 0, batch_size: int = 1,
                 network: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] | None = None,
                 ) -> Iterator[list[dict[str, Any]]]:
    """Items of ``dataset`` in order, in lists of up to ``batch_size`` consecutive ones, decoded by ``workers``
    processes (0: in this one), two lists ahead per worker; ``network`` (if given) runs on each list where it
    was decoded, so each worker also runs the network (on ``torch.get_num_threads() // workers`` threads).

    With workers, OpenCV's thread pool of this process is shut down while they run (``cv2.setNumThreads(1)``,
    restored after): forked workers that inherit a pool whose threads they do not have hang in their first
    OpenCV call, and the workers are the parallelism."""
    if workers < 0:
        raise SilkError(f"--workers must be >= 0, got {workers}")
    threads = cv2.getNumThreads()
    if workers:
        cv2.setNumThreads(1)
    try:
        yield from DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                              collate_fn=network or _as_is, prefetch_factor=2 if workers else None,
                              worker_init_fn=_WorkerThreads(max(1, torch.get_num_threads() // max(workers, 1))))
    finally:
        cv2.setNumThreads(threads)


def _as_is(items: Any) -> Any:
    return items


@dataclass
class _WorkerThreads:
    """``worker_init_fn``: torch threads of a worker (the ``DataLoader`` sets 1)."""

    threads: int

    def __call__(self, worker: int) -> None:
        torch.set_num_threads(self.threads)


@dataclass
class ImageNetwork:
    """Runs the network on a list of :class:`ImageDataset` items: each run of consecutive equal-size images is
    one batch (:func:`~silk_keypoints.image_features.batch_features`); returns the items with ``features``
    (hloc's arrays, as tensors of their own: they leave a worker through shared memory) in place of ``image``,
    or ``error`` for a batch that failed.
    It is the ``collate_fn`` of :func:`image_loader`, so on CPU it runs inside the decoding workers."""

    model: Any
    options: dict[str, Any]

    def __call__(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        i = 0
        while i < len(items):
            if "error" in items[i]:
                out.append(items[i])
                i += 1
                continue
            j = i + 1
            while j < len(items) and "error" not in items[j] and items[j]["image"].shape == items[i]["image"].shape:
                j += 1
            group, i = items[i:j], j
            try:
                feats = batch_features(self.model, [g["image"].numpy() for g in group], [g["scale"] for g in group],
                                       [g["size"] for g in group], **self.options)
            except SilkError as e:
                out += [{"name": g["name"], "error": str(e)} for g in group]
            else:
                out += [{"name": g["name"], "features": _tensors(f.to_numpy())} for g, f in zip(group, feats)]
        return out


def _tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}


# ------------------------------------------------------------------------------------------------ extraction
def extract_to_h5(
    model: Any,
    images: Sequence[tuple[str, Path]],
    out: str | os.PathLike,
    resize: int | None = None,
    options: dict[str, Any] | None = None,
    model_name: str | None = None,
    weights: str | os.PathLike | None = None,
    workers: int = 0,
    batch_size: int = 1,
    strict: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> RunSummary:
    """Extract ``(name, path)`` images into hloc's ``features.h5``, resuming it if it exists.

    Args:
        model: :class:`~silk_keypoints.SiLK` (or anything with its ``extract`` and ``config``).
        images: from :func:`~silk_keypoints.io.named_images`; the same list on every ``torchrun`` rank.
        out: ``features.h5``; an existing one is resumed (images in it skipped) if it was made with the same
            ``model_name``, ``weights`` and options (:func:`~silk_keypoints.ecosystem.hloc.feature_provenance`),
            else refused; ``overwrite`` starts over.
        resize, options: long side and detection options, as :func:`~silk_keypoints.image_features.extract_image`.
        workers: decoding processes (0: decode in this process); with the model on CPU each also runs the
            network, on ``torch.get_num_threads() // workers`` threads (at least 1).
        batch_size: run up to this many consecutive images of equal size as one batch (results then differ
            from single images by float rounding, ~1e-6).
        strict: stop at the first image that fails (:class:`SilkError`) instead of skipping it.
        progress: a progress bar (on rank 0).

    Returns:
        the :class:`RunSummary` of all ranks (on rank 0; the others return their own).
    """
    if batch_size < 1:
        raise SilkError(f"--batch-size must be >= 1, got {batch_size}")
    options = dict(options or {})
    attrs = feature_provenance(model_name, weights, {"resize": resize, **options})

    network = ImageNetwork(model, options)
    in_workers = workers > 0 and _device(model).type == "cpu"  # on a GPU the workers decode, this process infers

    def work(store: H5Store, todo: list[tuple[str, Path]], bar: tqdm) -> RunSummary:
        summary = RunSummary()
        dataset = ImageDataset(todo, model.config.in_channels == 1, resize, max_pixels=model.config.max_pixels)
        for items in image_loader(dataset, workers, batch_size, network if in_workers else None):
            for item in items if in_workers else network(items):
                if "error" in item:
                    if strict:
                        raise SilkError(f"{item['error']} (strict: stopped at the first failure)")
                    tqdm.write(f"skipped {item['name']}: {item['error']}", file=sys.stderr)
                    summary.failed.append((item["name"], item["error"]))
                else:
                    store.add_features(item["name"], {k: v.numpy() for k, v in item["features"].items()})
                    summary.done += 1
                bar.update(1)
        return summary

    return run_sharded(images, out, attrs, FEATURE_KEYS, lambda done, item: item[0] in done, work,
                       what="images", overwrite=overwrite, progress=progress)


def match_to_h5(
    features: str | os.PathLike,
    pairs: Sequence[tuple[str, str]],
    out: str | os.PathLike,
    matcher: Matcher,
    device: str | torch.device = "cpu",
    overwrite: bool = False,
    progress: bool = True,
    gate: bool = True,
    strict: bool = False,
) -> RunSummary:
    """Match ``pairs`` of ``features`` into hloc's ``matches.h5``, resuming it (pairs in it, either order,
    skipped) if it was made with the same matcher settings; sharded under ``torchrun`` as
    :func:`extract_to_h5`. ``gate``: the unrelated-pairs gate of
    :func:`~silk_keypoints.ecosystem.hloc.match_into`; a pair that fails (e.g. a broken image group) is
    skipped and listed in ``<out>.failed.txt`` (``strict``: stop there)."""
    check_pair_names(features, pairs)
    attrs = matcher_provenance(matcher, gate)

    def work(store: H5Store, todo: list[tuple[str, str]], bar: tqdm) -> RunSummary:
        try:
            rejected, failed = match_into(store, features, todo, matcher, device, bar.update, gate, strict)
        except SilkError as e:
            raise SilkError(f"{e} (strict: stopped at the first failure)") from None
        return RunSummary(done=len(todo) - len(failed), failed=failed, rejected=rejected)

    return run_sharded(unique_pairs(pairs), out, attrs, MATCH_KEYS, pair_done, work, what="pairs", overwrite=overwrite,
                       progress=progress, flush_seconds=1.0)


# ------------------------------------------------------------------------------------------------ sharding
def run_sharded(
    items: Sequence[T],
    out: str | os.PathLike,
    attrs: dict[str, str],
    keys: Sequence[str],
    is_done: Callable[[set[str], T], bool],
    work: Callable[[H5Store, list[T], tqdm], RunSummary],
    what: str,
    overwrite: bool = False,
    progress: bool = True,
    flush_seconds: float = 0.0,
) -> RunSummary:
    """Run ``work(store, items to do, progress bar)`` on this rank's shard of ``items`` into an
    :class:`~silk_keypoints.ecosystem.hloc.H5Store` (``out`` itself, or this rank's :func:`part_path` under
    ``torchrun``), then (rank 0) merge the parts into ``out`` and write or remove ``<out>.failed.txt``.

    Items already in ``out`` or in the rank's part are skipped (``is_done(done keys, item)``). Under
    ``torchrun`` a :class:`SilkError` on any rank (e.g. the output is locked) is raised on every rank."""
    start = time.perf_counter()
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    target = _gathered(world, lambda: H5Store(out, attrs, keys, overwrite, flush_seconds) if rank == 0 else None)
    try:
        mine = shard(items, rank, world)
        if world > 1:  # every rank needs to know what out holds; only rank 0 may open it
            shared = [None if target is None else sorted(target.done)]
            dist.broadcast_object_list(shared, src=0)
            done = set(shared[0])
            mine = [i for i in mine if not is_done(done, i)]
        skipped = len(shard(items, rank, world)) - len(mine)

        def run() -> RunSummary:
            store = target if world == 1 else H5Store(part_path(out, rank, world), attrs, keys, overwrite, flush_seconds)
            try:
                todo = [i for i in mine if not is_done(store.done, i)]
                bar = tqdm(total=len(todo), desc=what, unit=what[:-1], dynamic_ncols=True,
                           disable=not progress or rank != 0 or len(todo) < 2,
                           postfix=None if world == 1 else f"rank 0 of {world}")
                with bar:
                    summary = work(store, todo, bar)
                summary.skipped = skipped + len(mine) - len(todo)
                return summary
            finally:
                if store is not target:
                    store.close()

        summaries = _gathered(world, run, gather=True)
        if target is None:
            return summaries[rank]
        summary = RunSummary()
        for s in summaries:
            summary.add(s)
        if world > 1:  # the parts hold what the ranks did now
            for r in range(world):
                target.copy_from(part_path(out, r, world))
            target.file.flush()
            for r in range(world):
                part_path(out, r, world).unlink()
        summary.seconds = time.perf_counter() - start
        _write_failed(out, summary.failed)
        return summary
    finally:
        if target is not None:
            target.close()


def _gathered(world: int, step: Callable[[], Any], gather: bool = False) -> Any:
    """``step()`` on every rank; a :class:`SilkError` on any rank is raised on all. ``gather``: return the
    list of every rank's result (a list of one when not distributed)."""
    if world == 1:
        result = step()
        return [result] if gather else result
    try:
        result, error = step(), None
    except SilkError as e:
        result, error = None, f"rank {dist.get_rank()}: {e}"
    results: list[Any] = [None] * world
    dist.all_gather_object(results, (error, result if gather else None))
    errors = [e for e, _ in results if e is not None]
    if errors:
        if result is not None and hasattr(result, "close"):
            result.close()
        raise SilkError("; ".join(errors))
    return [r for _, r in results] if gather else result


def _device(model: Any) -> torch.device:
    return next(iter(model.parameters()), torch.empty(0)).device


def _write_failed(out: str | os.PathLike, failed: list[tuple[str, str]]) -> None:
    path = failed_list_path(out)
    if failed:
        write_bytes(path, "".join(f"{n}\t{r}\n" for n, r in failed).encode())
    else:
        path.unlink(missing_ok=True)
