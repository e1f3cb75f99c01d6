"""Self-supervised SiLK training: one loop, readable top to bottom.

Each step takes ``batch_size`` random crops (per process), makes a second view of each through a random
homography, augments both views independently, runs the network on the interleaved batch
``[view0_0, view1_0, view0_1, ...]`` (BatchNorm in train mode: the pairs are the batch, as in the original),
computes the dense correspondences of the two output maps and the SiLK loss, and takes an Adam step.

Defaults follow the original: Adam (betas 0.9, 0.999, no weight decay), lr 1e-4 for one pair per step, no
schedule, 164 x 164 crops, one pair per step, the ``silk`` augmentation recipe, 100k steps. With more pairs per
step (``batch_size`` x processes) the learning rate is scaled by ``sqrt(pairs)`` (``lr_scaling``). Not in the
original, off by default: a cosine decay of the rate (``lr_schedule``) and a moving average of the weights
(``ema_decay``; validation, ``best.pt`` selection and the final weights then use the average).

Determinism: every random draw of step ``k`` on process ``r`` comes from a generator seeded with
``(seed, r, k)``, and the crops depend on ``(seed, epoch, image)``, so a run is reproducible and ``resume``
continues exactly as an uninterrupted run (CPU; on GPU up to cuDNN non-determinism).

Run folder: ``last.pt`` (every ``ckpt_every`` steps, at the end and on Ctrl-C), ``best.pt`` (best validation
``best_metric``), ``model.safetensors`` (final weights), ``metrics.jsonl`` and TensorBoard events. Checkpoints are
plain dicts (``torch.load(weights_only=True)``) with ``model``, ``optimizer``, ``scheduler``, ``scaler``,
``ema`` (the weight average or None), ``step``, ``rng``, ``best`` and ``config`` = ``{"model": SiLKConfig dict,
"train": TrainConfig dict}``; :meth:`SiLK.from_checkpoint` reads them (the average when there is one).
"""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import tomllib
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..devices import setup_distributed
from ..errors import SilkError
from ..evaluation.metrics import matching_accuracy, repeatability
from ..files import atomic_write, make_dir
from ..io import load_image, to_batch
from ..matching import match_descriptors
from ..model import SiLK, SiLKConfig
from ..model.checkpoint import check_finite, check_state_dict, load_error
from ..model.config import dataclass_from_dict
from ..model.zoo import variant_config
from .augment import RECIPES, augment
from .data import EpochSampler, ImageCrops, batches_per_epoch, crop_image, scan_images, split_train_val
from .deform import DeformConfig, deform_view, deformed_correspondences, sample_deformation
from .homography import HomographyConfig, dense_correspondences, sample_homographies, warp_images
from .loss import SCALARS, LossConfig, silk_loss
from .schedule import SCHEDULES, WeightAverage, lr_factor

CHECKPOINT_FORMAT = "silk-keypoints-train"
BEST_METRICS = ("f1", "mma", "repeatability")
# settings a resumed run may change (everything else is taken from the checkpoint, to continue exactly)
RESUME_OVERRIDES = ("images", "out", "steps", "device", "threads", "workers", "val_every", "ckpt_every", "log_every")


@dataclass
class TrainConfig:
    """Everything a training run depends on. Print it, save it, load it from JSON (``--config FILE``)."""

    images: str = ""  # folder of training images (recursive)
    out: str = "runs/silk"  # run folder
    model: str | dict = "vgg4"  # variant name (vgg4, fast, tiny) or a SiLKConfig dict
    init_from: str | None = None  # shipped weights name or a weight/checkpoint path to fine-tune from
    steps: int = 100_000
    batch_size: int = 1  # image pairs per step and process
    lr: float = 1e-4  # for one pair per step; scaled by lr_scaling with more
    lr_scaling: str = "sqrt"  # none | sqrt | linear in the number of pairs per step (all processes)
    warmup_steps: int = 0  # linear learning-rate warm-up
    lr_schedule: str = "constant"  # constant (the original) | cosine: decay to lr_min_ratio x lr at the last step
    lr_min_ratio: float = 0.05
    ema_decay: float = 0.0  # 0: off; e.g. 0.999: validate, select and save a moving average of the weights
    crop: int = 164
    small_images: str = "pad"  # images smaller than the crop: pad | skip | error
    augment: str = "silk"  # photometric recipe: silk | hpatches | lighting | none
    homography: HomographyConfig = field(default_factory=HomographyConfig)
    deform: DeformConfig = field(default_factory=DeformConfig)  # non-planar pairs (off by default)
    loss: LossConfig = field(default_factory=LossConfig)
    device: str = "cpu"
    threads: int | None = None  # torch CPU threads of each process while training (None: leave as is)
    amp: bool = True  # float16 autocast on CUDA (ignored on CPU)
    seed: int = 0
    workers: int = 0  # data-loader processes
    val_every: int = 1000  # steps between validations (0: never)
    val_pairs: int = 32  # synthetic homography pairs made from the validation images
    val_keypoints: int = 256  # keypoints per view for repeatability / MMA
    val_threshold: float = 3.0  # pixel threshold of repeatability / MMA
    best_metric: str = "f1"  # validation metric selecting best.pt: f1 | mma | repeatability
    ckpt_every: int = 1000
    log_every: int = 10

    def __post_init__(self) -> None:
        if isinstance(self.homography, dict):
            self.homography = dataclass_from_dict(HomographyConfig, self.homography, "training config", "homography.")
        if isinstance(self.deform, dict):
            self.deform = dataclass_from_dict(DeformConfig, self.deform, "training config", "deform.")
        if isinstance(self.loss, dict):
            self.loss = dataclass_from_dict(LossConfig, self.loss, "training config", "loss.")
        if isinstance(self.model, dict):
            dataclass_from_dict(SiLKConfig, self.model, "model config in the training config", "model.")
        else:
            variant_config(self.model)
        problems = self.deform.problems()
        if self.augment not in RECIPES:
            problems.append(f"augment must be one of {RECIPES}")
        if self.lr_schedule not in SCHEDULES:
            problems.append(f"lr_schedule must be one of {SCHEDULES}")
        if not 0.0 <= self.lr_min_ratio <= 1.0:
            problems.append("lr_min_ratio must be in [0, 1]")
        if not 0.0 <= self.ema_decay < 1.0:
            problems.append("ema_decay must be in [0, 1) (0: no weight average)")
        if self.lr_scaling not in ("none", "sqrt", "linear"):
            problems.append("lr_scaling must be none, sqrt or linear")
        if self.best_metric not in BEST_METRICS:
            problems.append(f"best_metric must be one of {BEST_METRICS}")
        if self.steps < 1 or self.batch_size < 1 or self.crop < 1 or not self.lr > 0:
            problems.append("steps, batch_size, crop and lr must be positive")
        if self.threads is not None and self.threads < 1:
            problems.append(f"threads must be >= 1 (or unset: torch's default), got {self.threads}")
        if self.workers < 0:
            problems.append(f"workers must be >= 0 (0: load data in the training process), got {self.workers}")
        loss = self.loss
        if not loss.temperature > 0 or any(v is not None and v < 1 for v in (loss.cells, loss.block_size)):
            problems.append("loss.temperature must be > 0, loss.cells and loss.block_size >= 1 (or null)")
        if self.ckpt_every < 1 or self.log_every < 1 or self.val_every < 0:
            problems.append("ckpt_every and log_every must be >= 1, val_every >= 0")
        if problems:
            raise SilkError("invalid training config: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return dataclass_from_dict(cls, d, "training config")


# ---------------------------------------------------------------------------------------------- the loop
def train(
    config: TrainConfig,
    resume: bool = False,
    callback: Callable[[int, dict[str, float]], None] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train a SiLK model; returns ``{"step", "interrupted", "last", "best", "weights", "metrics", "rank"}``.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) runs data-parallel (nccl on CUDA, gloo on CPU); rank 0 logs and
    writes files. ``resume`` continues from ``<out>/last.pt``. ``callback(step, metrics)`` is called after
    every step on every process (metrics: the loss terms of that process). A run folder that already
    holds a run is refused unless ``resume`` (continue it) or ``overwrite`` (replace it by a new run).

    Raises:
        SilkError: bad folder / images / config, a non-finite loss (the last good checkpoint is kept), a
        checkpoint that cannot be written.
    """
    threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    rank, world, device = setup_distributed(config.device)
    try:
        return _train(config, resume, callback, rank, world, device, overwrite)
    finally:
        torch.set_num_threads(threads)
        if world > 1:
            dist.destroy_process_group()


def _train(
    config: TrainConfig,
    resume: bool,
    callback: Callable[[int, dict[str, float]], None] | None,
    rank: int,
    world: int,
    device: torch.device,
    overwrite: bool = False,
) -> dict[str, Any]:
    loop = _setup(config, resume, rank, world, device, overwrite)
    logs = _Logs(loop.run, rank, config.steps, loop.step)
    stop = _StopOnSignal()
    metrics: dict[str, float] = {}
    try:
        while loop.step < config.steps and not stop.requested:
            for crops in _loader(loop):
                step_metrics = _train_step(loop, crops, stop)
                if step_metrics is None:  # a stop was requested on some process
                    break
                metrics = step_metrics
                if callback is not None:
                    callback(loop.step, metrics)
                _after_step(loop, metrics, logs)
                if loop.step >= config.steps or stop.requested:
                    break
        if rank == 0 and stop.requested:
            loop.save(loop.last_path)
        if rank == 0 and not stop.requested:
            final = loop.model if loop.average is None else loop.average.model
            final.save(loop.run / "model.safetensors", info={"step": loop.step, "train": config.to_dict()})
    finally:
        stop.restore()
        logs.close()
    return {
        "step": loop.step,
        "interrupted": stop.requested,
        "last": str(loop.last_path),
        "best": str(loop.best_path) if loop.best is not None else None,
        "weights": None if stop.requested else str(loop.run / "model.safetensors"),
        "metrics": metrics,
        "rank": rank,
    }


@dataclass
class _Loop:
    """What one process of a run holds: model, optimiser state, data, the step and the best validation."""

    config: TrainConfig
    rank: int
    world: int
    device: torch.device
    run: Path
    model: SiLK
    net: torch.nn.Module  # the model, wrapped in DistributedDataParallel when world > 1
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    average: WeightAverage | None
    dataset: ImageCrops
    sampler: EpochSampler
    per_epoch: int
    use_amp: bool
    val_pairs: dict[str, torch.Tensor] | None
    step: int = 0
    best: dict | None = None
    generator: torch.Generator = field(default_factory=torch.Generator)

    @property
    def last_path(self) -> Path:
        return self.run / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.run / "best.pt"

    def save(self, path: Path) -> None:
        _save_checkpoint(path, self.model, self.optimizer, self.scheduler, self.scaler, self.step, self.best,
                         self.config, self.average)


RUN_FILES = ("last.pt", "best.pt", "model.safetensors", "metrics.jsonl")


def check_run_folder(run: Path, resume: bool, overwrite: bool) -> None:
    """The rule for ``--out`` of a new run: a missing or empty folder, or one holding a run with ``overwrite``
    (its checkpoints, weights and logs are removed first); ``--resume`` continues the run there instead."""
    if resume and overwrite:
        raise SilkError("--resume continues the run in --out and --overwrite starts a new one there: pass one")
    if run.exists() and not run.is_dir():
        raise SilkError(f"--out {run} is a file, expected a run folder")
    if resume or not run.is_dir():
        return
    held = [name for name in RUN_FILES if (run / name).exists()] + [p.name for p in run.glob("events.out.tfevents.*")]
    if held and not overwrite:
        raise SilkError(f"{run} exists and holds a run ({', '.join(held[:3])}): pass --resume to continue it, "
                        "or --overwrite (Python: overwrite=True) to replace it with a new run")
    for name in held:
        (run / name).unlink()


def _setup(config: TrainConfig, resume: bool, rank: int, world: int, device: torch.device,
           overwrite: bool = False) -> _Loop:
    """Model, data, optimiser and validation pairs of a new run, or of the run in ``config.out`` to resume."""
    run = Path(config.out)
    if rank == 0:
        check_run_folder(run, resume, overwrite)
    state = _load_checkpoint(run / "last.pt") if resume else None
    if rank == 0:
        make_dir(run, "run folder")
    torch.manual_seed(config.seed)  # the initial weights
    model = _build_model(config, state).to(device).train()
    train_paths, val_paths = split_train_val(scan_images(config.images, config.crop, config.small_images))
    dataset = ImageCrops(train_paths, config.crop, config.seed)
    pairs = config.batch_size * world
    lr = config.lr * {"none": 1.0, "sqrt": math.sqrt(pairs), "linear": float(pairs)}[config.lr_scaling]
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: lr_factor(
        k, config.steps, config.warmup_steps, config.lr_schedule, config.lr_min_ratio))
    average = WeightAverage(model, config.ema_decay) if config.ema_decay and rank == 0 else None
    use_amp = config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    step, best = 0, None
    if state is not None:
        try:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            torch.set_rng_state(state["rng"]["torch"])
            if average is not None and state.get("ema") is not None:
                average.load_state_dict(state["ema"])
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
            raise SilkError(f"{run / 'last.pt'} is a damaged training checkpoint: its optimiser, scheduler or "
                            f"random state does not fit this run ({str(e).splitlines()[0] if str(e) else e!r})") from None
        step, best = state["step"], state.get("best")
    net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None) if world > 1 else model
    val_pairs = _validation_pairs(val_paths, config) if rank == 0 and config.val_every else None
    if rank == 0 and config.val_every and val_pairs is None:
        warnings.warn("no validation images (see split_train_val): validation and best.pt are disabled", stacklevel=3)
    return _Loop(config, rank, world, device, run, model, net, optimizer, scheduler, scaler, average, dataset,
                 EpochSampler(dataset, world, rank, config.seed),
                 batches_per_epoch(len(dataset), config.batch_size, world), use_amp, val_pairs, step, best)


def _loader(loop: _Loop) -> DataLoader:
    """The batches of the current epoch from the current step on (exact resume in the middle of an epoch)."""
    epoch, batch_in_epoch = divmod(loop.step, loop.per_epoch)
    loop.sampler.set_epoch(epoch)
    loop.sampler.start = batch_in_epoch * loop.config.batch_size
    return DataLoader(loop.dataset, batch_size=loop.config.batch_size, sampler=loop.sampler, drop_last=True,
                      num_workers=loop.config.workers, pin_memory=loop.device.type == "cuda")


def _train_step(loop: _Loop, crops: torch.Tensor, stop: _StopOnSignal) -> dict[str, float] | None:
    """One optimisation step on uint8 ``crops`` (B, 3, S, S); returns the loss terms, or None (and sets
    ``stop.requested``) when any process was asked to stop. Raises :class:`SilkError` on a non-finite loss."""
    config = loop.config
    loop.generator.manual_seed(_step_seed(config.seed, loop.rank, loop.step))
    losses = _loss_of_batch(loop.net, loop.model, crops.to(loop.device, non_blocking=True), config, loop.generator,
                            loop.use_amp)
    flags = torch.tensor([float(not torch.isfinite(losses["loss"])), float(stop.requested)], device=loop.device)
    if loop.world > 1:
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    if flags[0]:
        kept = f"the last good checkpoint is {loop.last_path}" if loop.last_path.exists() else "no checkpoint was written"
        raise SilkError(
            f"the loss became {float(losses['loss'].detach())} at step {loop.step + 1}: training stopped; {kept}. "
            "Try a lower --lr, or check the images"
        )
    if flags[1]:
        stop.requested = True
        return None
    loop.optimizer.zero_grad(set_to_none=True)
    loop.scaler.scale(losses["loss"]).backward()
    loop.scaler.step(loop.optimizer)
    loop.scaler.update()
    loop.scheduler.step()
    if loop.average is not None:
        loop.average.update(loop.model)
    loop.step += 1
    return {k: float(v.detach()) for k, v in losses.items()}


def _after_step(loop: _Loop, metrics: dict[str, float], logs: _Logs) -> None:
    """Logging every ``log_every`` steps, validation (and ``best.pt``) every ``val_every``, ``last.pt`` every
    ``ckpt_every``, each also at the last step; files are written by rank 0."""
    config, step, rank = loop.config, loop.step, loop.rank
    last = step == config.steps
    if step % config.log_every == 0 or last:
        logged = _average(metrics, loop.world, loop.device)
        if rank == 0:
            logs.write("train", step, {**logged, "lr": loop.scheduler.get_last_lr()[0]})
            logs.bar.set_postfix(loss=f"{logged['loss']:.3f}", f1=f"{logged['f1']:.3f}")
    logs.bar.update(1)
    if rank == 0 and loop.val_pairs is not None and (step % config.val_every == 0 or last):
        val = validate(loop.model if loop.average is None else loop.average.model, loop.val_pairs, config)
        logs.write("val", step, val)
        if loop.best is None or val[config.best_metric] > loop.best["value"]:
            loop.best = {"metric": config.best_metric, "value": val[config.best_metric], "step": step}
            loop.save(loop.best_path)
    if rank == 0 and (step % config.ckpt_every == 0 or last):
        loop.save(loop.last_path)


def _loss_of_batch(
    net: torch.nn.Module,
    model: SiLK,
    crops: torch.Tensor,
    config: TrainConfig,
    generator: torch.Generator,
    use_amp: bool,
) -> dict[str, torch.Tensor]:
    """uint8 crops (B, 3, S, S) -> SiLK loss terms of the pairs (crop, random homography view of it, deformed
    and occluded when ``config.deform`` says so)."""
    images = crops.float() / 255.0
    b, _, h, w = images.shape
    homographies = sample_homographies(b, h, w, config.homography, generator)
    deformation = sample_deformation(images, config.deform, generator) if config.deform.active else None
    if deformation is None:
        warped = warp_images(images, homographies)
    else:
        warped = deform_view(images, homographies, deformation, generator)
    view0 = augment(images, config.augment, generator)
    view1 = augment(warped, config.augment, generator)
    batch = to_batch(torch.stack([view0, view1], 1).flatten(0, 1), model.config.in_channels)
    with torch.autocast(device_type=images.device.type, dtype=torch.float16, enabled=use_amp):
        logits, desc = net(batch, outputs=("logits", "dense_descriptors"))
    map_size = tuple(logits.shape[-2:])
    if deformation is None:
        corr0, corr1 = dense_correspondences(homographies.to(images.device), model.grid, map_size)
    else:
        corr0, corr1 = deformed_correspondences(homographies.to(images.device), deformation, model.grid, map_size)
    return silk_loss(desc[0::2], desc[1::2], logits[0::2], logits[1::2], corr0, corr1, config.loss, generator)


# ---------------------------------------------------------------------------------------------- validation
def _validation_pairs(paths: list[Path], config: TrainConfig) -> dict[str, torch.Tensor] | None:
    """Fixed synthetic pairs: a centre crop of each validation image and a fixed random homography."""
    crops = []
    for path in paths[: config.val_pairs]:
        try:
            crops.append(torch.from_numpy(np.ascontiguousarray(crop_image(load_image(path), config.crop))))
        except SilkError as e:
            warnings.warn(f"skipping unreadable validation image: {e}", stacklevel=2)
    if not crops:
        return None
    generator = torch.Generator().manual_seed(config.seed + 12345)
    homographies = sample_homographies(len(crops), config.crop, config.crop, config.homography, generator)
    return {"images": torch.stack(crops).permute(0, 3, 1, 2), "homographies": homographies}


@torch.no_grad()
def validate(model: SiLK, pairs: dict[str, torch.Tensor], config: TrainConfig, chunk: int = 8) -> dict[str, float]:
    """Loss metrics (eval-mode BatchNorm), repeatability and MMA at ``val_threshold`` px on synthetic pairs.

    ``pairs``: ``images`` (P, 3, S, S) uint8 and ``homographies`` (P, 3, 3) view 0 -> view 1.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    sums: dict[str, float] = {}
    count = pairs["images"].shape[0]
    full_loss = replace(config.loss, cells=None)  # every cell: deterministic, comparable across runs
    for s in range(0, count, chunk):
        images = pairs["images"][s : s + chunk].to(device).float() / 255.0
        hom = pairs["homographies"][s : s + chunk]
        batch = to_batch(torch.stack([images, warp_images(images, hom)], 1).flatten(0, 1), model.config.in_channels)
        logits, desc, kpts, kdesc = model(
            batch,
            outputs=("logits", "dense_descriptors", "sparse_positions", "sparse_descriptors"),
            max_keypoints=config.val_keypoints,
        )
        corr0, corr1 = dense_correspondences(hom.to(device), model.grid, tuple(logits.shape[-2:]))
        terms = silk_loss(desc[0::2], desc[1::2], logits[0::2], logits[1::2], corr0, corr1, full_loss)
        values = {k: float(v) * hom.shape[0] for k, v in terms.items()}
        size, t = (config.crop, config.crop), config.val_threshold
        for i in range(hom.shape[0]):
            k0, k1, h = kpts[2 * i][:, :2].cpu(), kpts[2 * i + 1][:, :2].cpu(), hom[i]
            m = match_descriptors(kdesc[2 * i].cpu().float(), kdesc[2 * i + 1].cpu().float(), "mnn")[0]
            values["repeatability"] = values.get("repeatability", 0.0) + repeatability(k0, k1, h, size, size, (t,))[t]
            values["mma"] = values.get("mma", 0.0) + matching_accuracy(k0[m[:, 0]], k1[m[:, 1]], h, (t,))[t]
        for k, v in values.items():
            sums[k] = sums.get(k, 0.0) + v
    model.train(was_training)
    return {k: v / count for k, v in sums.items()}


# ---------------------------------------------------------------------------------------------- helpers
def _build_model(config: TrainConfig, state: dict | None) -> SiLK:
    if state is not None:
        model = SiLK(SiLKConfig.from_dict(state["config"]["model"]))
        check_state_dict(model, state["model"], str(Path(config.out) / "last.pt"))
        check_finite(state["model"], str(Path(config.out) / "last.pt"))
        model.load_state_dict(state["model"])
        return model
    if config.init_from:
        source = Path(config.init_from)
        return SiLK.from_checkpoint(source) if source.exists() else SiLK.from_pretrained(config.init_from)
    if isinstance(config.model, dict):
        try:
            return SiLK(SiLKConfig.from_dict(config.model))
        except (TypeError, ValueError) as e:
            raise SilkError(f"invalid model config: {e}") from None
    return SiLK(variant_config(config.model))


def _step_seed(seed: int, rank: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _save_checkpoint(
    path: Path,
    model: SiLK,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    step: int,
    best: dict | None,
    config: TrainConfig,
    average: WeightAverage | None = None,
) -> None:
    state = {
        "format": CHECKPOINT_FORMAT,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "ema": None if average is None else average.state_dict(),
        "step": step,
        "best": best,
        "rng": {"torch": torch.get_rng_state()},
        "config": {"model": model.config.to_dict(), "train": config.to_dict()},
    }
    def write(tmp: Path) -> None:
        try:
            torch.save(state, tmp)
        except RuntimeError as e:  # torch's zip writer reports a full disk as "[enforce fail at inline_container.cc]"
            raise OSError(errno.EIO, f"torch.save failed: {str(e).splitlines()[0]}") from None

    atomic_write(path, write)  # a failed write: SilkError "cannot write ...; the existing file is kept"


def _load_checkpoint(path: Path) -> dict:
    if not path.is_file():
        raise SilkError(f"nothing to resume: {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file
        raise load_error(path, e) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise SilkError(f"{path} is not a silk-keypoints training checkpoint")
    kinds = {"model": dict, "optimizer": dict, "scheduler": dict, "scaler": dict, "step": int, "rng": dict,
             "config": dict}
    wrong = [k for k, kind in kinds.items() if not isinstance(state.get(k), kind) or isinstance(state.get(k), bool)]
    if not wrong:
        config = state["config"]
        wrong = [f"config.{k}" for k in ("model", "train") if not isinstance(config.get(k), dict)]
        wrong += [] if isinstance(state["rng"].get("torch"), torch.Tensor) else ["rng.torch"]
        wrong += [] if all(isinstance(v, torch.Tensor) for v in state["model"].values()) else ["model"]
    if wrong:
        raise SilkError(f"{path} is a damaged training checkpoint: missing or malformed {wrong}")
    return state


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """TrainConfig fields from a ``.json`` or ``.toml`` file."""
    file = Path(path)
    if not file.is_file():
        raise SilkError(f"config file not found: {file}")
    try:
        data = tomllib.loads(file.read_text()) if file.suffix == ".toml" else json.loads(file.read_text())
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise SilkError(f"cannot parse config file {file}: {e}") from None
    if not isinstance(data, dict):
        raise SilkError(f"invalid training config in {file}: the top level must be a table of settings, got "
                        f"{type(data).__name__}")
    return data


def load_run_config(run: str | os.PathLike) -> TrainConfig:
    """The training config stored in ``<run>/last.pt`` (what ``--resume`` continues with)."""
    return TrainConfig.from_dict(_load_checkpoint(Path(run) / "last.pt")["config"]["train"])


def resume_config(stored: TrainConfig, changes: dict[str, Any]) -> TrainConfig:
    """``stored`` with the ``changes`` a resumed run may make (:data:`RESUME_OVERRIDES`); others are refused."""
    old = stored.to_dict()
    merged = {k: {**old[k], **v} if isinstance(v, dict) and isinstance(old.get(k), dict) else v
              for k, v in changes.items()}
    wanted = TrainConfig.from_dict({**old, **merged})
    new = wanted.to_dict()
    refused = sorted(k for k in new if new[k] != old[k] and k not in RESUME_OVERRIDES)
    if refused:
        raise SilkError(
            f"--resume continues the stored run exactly; these settings cannot change: {refused} "
            f"(allowed: {list(RESUME_OVERRIDES)})"
        )
    return wanted


def _average(metrics: dict[str, float], world: int, device: torch.device) -> dict[str, float]:
    if world == 1:
        return metrics
    values = torch.tensor([metrics[k] for k in SCALARS], dtype=torch.float64, device=device)
    dist.all_reduce(values)
    return {k: float(v) / world for k, v in zip(SCALARS, values)}


def _summary_writer(run: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        warnings.warn("tensorboard is not installed (pip install tensorboard): no TensorBoard logs", stacklevel=2)
        return None
    return SummaryWriter(str(run))


def _log(writer: Any, log_file: Any, prefix: str, step: int, values: dict[str, float]) -> None:
    if writer is not None:
        for k, v in values.items():
            writer.add_scalar(f"{prefix}/{k}", v, step)
    log_file.write(json.dumps({"split": prefix, "step": step, "time": time.time(), **values}) + "\n")
    log_file.flush()


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the lines of ``metrics.jsonl`` up to ``step`` (the step a resumed run continues from), so that
    steps re-run after a resume are not logged twice; a torn last line (a killed run) is dropped too."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(line + "\n")
    atomic_write(path, lambda tmp: tmp.write_text("".join(kept)))


class _Logs:
    """Rank 0's TensorBoard events, ``metrics.jsonl`` and progress bar (other ranks: a hidden bar only)."""

    def __init__(self, run: Path, rank: int, total: int, initial: int) -> None:
        self.writer = _summary_writer(run) if rank == 0 else None
        if rank == 0:
            truncate_metrics(run / "metrics.jsonl", initial)
        self.file = (run / "metrics.jsonl").open("a") if rank == 0 else None
        self.bar = tqdm(total=total, initial=initial, disable=rank != 0, dynamic_ncols=True, desc="silk train")

    def write(self, prefix: str, step: int, values: dict[str, float]) -> None:
        _log(self.writer, self.file, prefix, step, values)

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()
        if self.file is not None:
            self.file.close()


class _StopOnSignal:
    """Turns Ctrl-C (SIGINT) and SIGTERM into a flag checked between steps; restores the handlers after."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no handler, Ctrl-C raises as usual
                pass

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:  # a second Ctrl-C: stop at once
            raise KeyboardInterrupt
        self.requested = True

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
