"""``silk train``: self-supervised training on a folder of images (one CPU, one GPU, or many with torchrun)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import SilkError
from . import add_command

# command-line flag -> TrainConfig field
_FLAGS = {
    "images": "images",
    "out": "out",
    "model": "model",
    "steps": "steps",
    "batch_size": "batch_size",
    "lr": "lr",
    "crop": "crop",
    "device": "device",
    "init_from": "init_from",
    "seed": "seed",
    "val_every": "val_every",
    "ckpt_every": "ckpt_every",
    "augment": "augment",
    "workers": "workers",
    "threads": "threads",
    "small_images": "small_images",
    "lr_schedule": "lr_schedule",
    "ema": "ema_decay",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "train",
        description="Train SiLK on image pairs made by random homographies. Defaults follow the original: Adam, "
        "lr 1e-4, one 164x164 pair per step, 100k steps. Multi-GPU: torchrun --nproc_per_node N -m "
        "silk_keypoints.cli train ...  Unset options come from --config FILE, then the defaults.",
    )
    p.add_argument("--images", metavar="DIR", help="folder of training images (searched recursively)")
    p.add_argument("--out", metavar="RUN_DIR", required=True,
                   help="run folder: checkpoints, logs, final weights; one that holds a run needs --resume or --overwrite")
    p.add_argument("--model", metavar="NAME", help="architecture: vgg4 (default), fast, tiny")
    p.add_argument("--steps", type=int, metavar="N", help="optimisation steps (default 100000)")
    p.add_argument("--batch-size", type=int, metavar="B", help="image pairs per step and process (default 1)")
    p.add_argument("--lr", type=float, help="learning rate for one pair per step (default 1e-4; sqrt-scaled)")
    p.add_argument("--lr-schedule", choices=("constant", "cosine"),
                   help="constant (default, as the original) or cosine decay to lr_min_ratio x lr at the last step")
    p.add_argument("--ema", type=float, metavar="DECAY", help="keep a moving average of the weights (e.g. 0.999) "
                   "and validate, select and save it (default 0: off)")
    p.add_argument("--crop", type=int, metavar="PX", help="square crop size (default 164)")
    p.add_argument("--device", help="cpu (default) or cuda")
    p.add_argument("--init-from", metavar="NAME|PATH", help="fine-tune from shipped weights or a checkpoint")
    p.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR from last.pt")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run in a RUN_DIR that holds one (its checkpoints, weights and logs are replaced)")
    p.add_argument("--config", metavar="FILE", help="JSON or TOML file with TrainConfig fields")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--val-every", type=int, metavar="K", help="validate every K steps (default 1000, 0: never)")
    p.add_argument("--ckpt-every", type=int, metavar="K", help="write last.pt every K steps (default 1000)")
    p.add_argument("--augment", help="photometric augmentation: silk (default), hpatches, lighting, none")
    p.add_argument("--small-images", choices=("pad", "skip", "error"),
                   help="images smaller than the crop: zero-pad (default, as the original), skip, or stop with an error")
    p.add_argument("--workers", type=int, help="data-loader processes (default 0)")
    p.add_argument("--threads", type=int, help="torch CPU threads per process (default: torch's; 1 is often "
                   "fastest on a busy or small machine)")
    p.add_argument("--loss-cells", type=int, metavar="N",
                   help="compute the loss on N random cells per view (default: all; e.g. 1024 for fast CPU training)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..training.trainer import (
        TrainConfig,
        check_run_folder,
        load_run_config,
        read_config_file,
        resume_config,
        train,
    )

    changes = read_config_file(args.config) if args.config else {}
    changes.update({field: getattr(args, flag) for flag, field in _FLAGS.items() if getattr(args, flag) is not None})
    if args.loss_cells is not None:
        changes["loss"] = {**changes.get("loss", {}), "cells": args.loss_cells}
    if args.resume:
        check_run_folder(Path(args.out), resume=True, overwrite=args.overwrite)
        config = resume_config(load_run_config(args.out), changes)
    else:
        if not changes.get("images"):
            raise SilkError("--images DIR is required (or 'images' in --config)")
        config = TrainConfig.from_dict(changes)
    result = train(config, resume=args.resume, overwrite=args.overwrite)
    if result["rank"] != 0:  # under torchrun, rank 0 reports
        return 130 if result["interrupted"] else 0
    if result["interrupted"]:
        print(f"silk train: interrupted at step {result['step']}; saved {result['last']} "
              f"(continue with: silk train --out {config.out} --resume)", file=sys.stderr)
        return 130
    print(f"trained {result['step']} steps; weights: {result['weights']}; checkpoint: {result['last']}"
          + (f"; best: {result['best']}" if result["best"] else ""))
    return 0
