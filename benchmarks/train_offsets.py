"""Train keypoint-offset heads (silk_keypoints.model.offsets) on frozen shipped models, one process, CPU.

Every step takes ``--batch`` random crops of the *training* split (``split_train_val``), a random homography
view of each, the photometric recipe on both views, runs each frozen model (``SiLK.from_pretrained``, eval mode,
no gradients) and trains only its head with :func:`silk_keypoints.training.offsets.offset_loss`. Several models
train in the same loop on the same pairs (``--models fast tiny``), each with its own head and optimiser.

Every ``--log-every`` steps, per model: a JSON line in ``<out>/<model>/log.jsonl`` (training loss / error
averaged since the last line, offset histogram summary, and a validation on fixed pairs made from the
*validation* split: repeatability at 0.5 / 1 px of the top keypoints with and without the offsets), the head
in ``last.pt`` (with the optimiser, for ``--resume``) and, when the validation improved, ``model.safetensors``:
the frozen model with the head, loadable with ``SiLK.from_checkpoint`` (its ``extract()`` returns the moved
keypoints). Design, runs and results: docs/subpixel.md.

    python benchmarks/train_offsets.py --models fast tiny --out /tmp/offsets/run1 --steps 20000 --pool 256 --reuse 4
    python benchmarks/train_offsets.py --models fast tiny --out /tmp/offsets/run1 --steps 40000 --pool 256 --resume
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from silk_keypoints import SiLK
from silk_keypoints.evaluation.metrics import repeatability
from silk_keypoints.io import list_images, load_image, to_batch
from silk_keypoints.model.coords import cell_grid
from silk_keypoints.model.offsets import OffsetHead
from silk_keypoints.training.augment import augment
from silk_keypoints.training.data import ImageCrops, crop_image, split_train_val
from silk_keypoints.training.homography import HomographyConfig, sample_homographies, warp_images
from silk_keypoints.training.offsets import OffsetLossConfig, detection_weight, offset_loss, offset_stats

HOMOGRAPHIES = {
    "default": HomographyConfig(),
    # stronger: zoom out as well as in, wider in-plane rotation
    "strong": HomographyConfig(scale=(0.5, 1.0), rotate_z=(-0.6, 0.6)),
}
# keypoints per cell at the benchmark's budget (2048 keypoints at 480x360): fast 2048 / 43200, tiny 2048 / 10800
TEST_DENSITY = {2: 2048 / (240 * 180), 4: 2048 / (120 * 90)}


def make_pair(crops: torch.Tensor, hcfg: HomographyConfig, recipe: str, g: torch.Generator, identity: float = 0.0):
    images = crops.float() / 255.0
    b, _, h, w = images.shape
    hom = sample_homographies(b, h, w, hcfg, g)
    if torch.rand((), generator=g) < 0.5:  # either view may be the zoomed one
        hom = torch.linalg.inv(hom)
    if identity > 0:  # pairs with only a lighting change
        keep = torch.rand(b, generator=g) < identity
        hom[keep] = torch.eye(3, dtype=hom.dtype)
    warped = warp_images(images, hom)
    v0, v1 = augment(images, recipe, g), augment(warped, recipe, g)
    return to_batch(v0, 1), to_batch(v1, 1), hom


def validation_pairs(paths, crop: int, count: int = 16, seed: int = 12345):
    crops = [torch.from_numpy(np.ascontiguousarray(crop_image(load_image(p), crop))).permute(2, 0, 1)
             for p in paths[:count]]
    g = torch.Generator().manual_seed(seed)
    return make_pair(torch.stack(crops), HomographyConfig(), "lighting", g)


@torch.no_grad()
def validate(model, head, pair) -> dict[str, float]:
    v0, v1, hom = pair
    f0, pr0 = model(v0, ("features", "probability"))
    f1, pr1 = model(v1, ("features", "probability"))
    o0, o1 = head(f0, v0), head(f1, v1)
    b, _, hf, wf = pr0.shape
    k = max(8, int(TEST_DENSITY[int(model.grid.stride)] * hf * wf))
    centres = model.grid.to_image(cell_grid(hf, wf))
    out = {"rep@0.5": 0.0, "rep@1": 0.0, "rep@0.5_grid": 0.0, "rep@1_grid": 0.0}
    size = (v0.shape[-1], v0.shape[-2])
    for i in range(b):
        i0, i1 = pr0[i].flatten().topk(k).indices, pr1[i].flatten().topk(k).indices
        c0, c1 = centres[i0], centres[i1]
        r0, r1 = c0 + o0[i].flatten(1).t()[i0], c1 + o1[i].flatten(1).t()[i1]
        for name, (a, c) in (("", (r0, r1)), ("_grid", (c0, c1))):
            rep = repeatability(a, c, hom[i].numpy(), size, size, (0.5, 1))
            for t in (0.5, 1):
                out[f"rep@{t:g}{name}"] += rep[t] / b
    return out


def with_head(model: SiLK, head: OffsetHead) -> SiLK:
    """A copy of the frozen ``model`` with ``head`` as its offset head (``SiLK.save`` writes both)."""
    c = model.config.replace(offset_hidden=head.hidden_size, offset_bound=head.bound, offset_pixels=head.pixels)
    out = SiLK(c)
    out.load_state_dict({**model.state_dict(), **{f"offset_head.{k}": v for k, v in head.state_dict().items()}})
    return out.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--photos", default="../shared/data/train-photos")
    p.add_argument("--models", nargs="+", default=["fast", "tiny"])
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--crop", type=int, default=192)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--bound", type=float, default=0.75, help="largest offset per axis, in cells")
    p.add_argument("--no-pixels", action="store_true", help="features only (no full-resolution pixel window)")
    p.add_argument("--delta", type=float, default=1.0)
    p.add_argument("--weighting", default="top", choices=["top", "prob", "top*prob"])
    p.add_argument("--top-fraction", type=float, default=0.25)
    p.add_argument("--uniformity", type=float, default=0.0)
    p.add_argument("--centring", type=float, default=1.0)
    p.add_argument("--homography", default="default", choices=sorted(HOMOGRAPHIES))
    p.add_argument("--augment", default="lighting")
    p.add_argument("--identity", type=float, default=0.0, help="share of pairs with identity geometry (lighting only)")
    p.add_argument("--log-every", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--pool", type=int, default=0, help="replay pool of this many pairs (0: every step new pairs)")
    p.add_argument("--reuse", type=int, default=4, help="with --pool: steps per new batch of pairs")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "args.json").write_text(json.dumps(vars(args), indent=1))

    train_paths, val_paths = split_train_val(list_images(args.photos))
    dataset = ImageCrops(train_paths, args.crop, args.seed)
    val_pair = validation_pairs(val_paths, 256)
    runs = {}
    models: dict[str, SiLK] = {}
    start = 0
    # "fast" or e.g. "fast:hidden=64:top=0.1:pixels=0:lr=0.002" (an ablation), "fast:init=FILE" (start from a head)
    for spec in args.models:
        base, *opts = spec.split(":")
        o = dict(kv.split("=") for kv in opts)
        if base not in models:
            models[base] = SiLK.from_pretrained(base).eval().requires_grad_(False)
        model = models[base]
        head = OffsetHead(model.backbone.out_channels, int(model.grid.stride), int(o.get("hidden", args.hidden)),
                          float(o.get("bound", args.bound)), bool(int(o.get("pixels", int(not args.no_pixels)))),
                          model.config.in_channels)
        if "init" in o:  # a model file with a head of the same shape (e.g. an earlier run's model.safetensors)
            head.load_state_dict(SiLK.from_checkpoint(o["init"]).offset_head.state_dict())
        opt = torch.optim.Adam(head.parameters(), lr=float(o.get("lr", args.lr)))
        cfg = OffsetLossConfig(float(o.get("delta", args.delta)), float(o.get("top", args.top_fraction)),
                               o.get("weighting", args.weighting), float(o.get("uniformity", args.uniformity)),
                               float(o.get("centring", args.centring)))
        label = ":".join([base] + [kv for kv in opts if not kv.startswith("init=")])
        folder = out / label.replace(":", "_").replace("=", "")
        folder.mkdir(exist_ok=True)
        run = {"model": model, "base": base, "head": head, "opt": opt, "cfg": cfg, "folder": folder, "best": -1.0,
               "acc": {}}
        if args.resume and (folder / "last.pt").exists():
            state = torch.load(folder / "last.pt", weights_only=True)
            head.load_state_dict(state["head"])
            opt.load_state_dict(state["opt"])
            run["best"] = state["best"]
            start = max(start, state["step"])
        runs[spec] = run
    print(f"{len(train_paths)} training photos, {len(val_paths)} validation photos; models {args.models}; "
          f"head params " + ", ".join(f"{n}: {sum(q.numel() for q in r['head'].parameters())}" for n, r in runs.items())
          + f"; starting at step {start}", flush=True)

    hcfg = HOMOGRAPHIES[args.homography]
    g = torch.Generator()
    t0 = time.time()
    pool: list[dict] = []  # replay pool of pairs with the frozen models' outputs (--pool)

    def new_pairs(step: int) -> dict:
        g.manual_seed(args.seed * 1_000_003 + step)
        idx = torch.randint(len(dataset), (args.batch,), generator=g).tolist()
        crops = torch.stack([dataset[(i, step)] for i in idx])
        v0, v1, hom = make_pair(crops, hcfg, args.augment, g, args.identity)
        batch = torch.cat([v0, v1])
        item = {"batch": batch, "hom": hom}
        with torch.no_grad():
            for name, model in models.items():
                feats, prob = model(batch, ("features", "probability"))
                item[name] = (feats.half() if args.pool else feats, prob)
        return item

    for step in range(start + 1, args.steps + 1):
        if not args.pool:
            item = new_pairs(step)
        else:  # every --reuse steps a new batch of pairs enters the pool; each step trains on pool pairs
            if (step - 1) % args.reuse == 0 or not pool:
                fresh = new_pairs(step)
                b = fresh["hom"].shape[0]
                for i in range(b):
                    pool.append({"v": fresh["batch"][[i, b + i]], "hom": fresh["hom"][i],
                                 **{n: (fresh[n][0][[i, b + i]], fresh[n][1][[i, b + i]]) for n in models}})
                del pool[: max(0, len(pool) - args.pool)]
            pick = torch.randint(len(pool), (args.batch,), generator=g).tolist()
            pick[-1] = len(pool) - 1  # always include the newest pair
            cat = lambda xs: torch.cat([x[0::2] for x in xs] + [x[1::2] for x in xs])
            item = {"batch": cat([pool[i]["v"] for i in pick]), "hom": torch.stack([pool[i]["hom"] for i in pick]),
                    **{n: (cat([pool[i][n][0] for i in pick]).float(), cat([pool[i][n][1] for i in pick]))
                       for n in models}}
        batch, hom = item["batch"], item["hom"]
        b = hom.shape[0]
        v0 = batch[:b]
        for name, run in runs.items():
            model, head = run["model"], run["head"]
            feats, prob = item[run["base"]]
            loss_cfg = run["cfg"]
            off = head(feats, batch)
            terms = offset_loss(off[:b], off[b:], prob[:b], prob[b:], hom, model.grid, tuple(v0.shape[-2:]), loss_cfg)
            if not torch.isfinite(terms["loss"]):
                raise SystemExit(f"{name}: non-finite loss at step {step}")
            run["opt"].zero_grad(set_to_none=True)
            terms["loss"].backward()
            run["opt"].step()
            acc = run["acc"]
            for k, v in terms.items():
                acc[k] = acc.get(k, 0.0) + float(v.detach())
            acc["n"] = acc.get("n", 0) + 1
            if step % 50 == 0:  # offset histogram of a recent batch
                w = detection_weight(prob, loss_cfg)
                run["stats"] = offset_stats(off, w, head.bound * head.stride)
            if step % args.log_every == 0 or step == args.steps:
                head.eval()
                val = validate(model, head, val_pair)
                head.train()
                n = acc.pop("n")
                line = {"step": step, "model": name, **{k: round(v / n, 4) for k, v in acc.items()},
                        **{k: round(v, 4) for k, v in run.get("stats", {}).items()},
                        **{f"val_{k}": round(v, 4) for k, v in val.items()},
                        "minutes": round((time.time() - t0) / 60, 2)}
                run["acc"] = {}
                score = val["rep@0.5"] + val["rep@1"]
                if score > run["best"]:
                    run["best"] = score
                    with_head(model, head).save(run["folder"] / "model.safetensors",
                                                {"step": step, "model": name, "val": val, "args": vars(args)})
                    line["saved"] = True
                torch.save({"head": head.state_dict(), "opt": run["opt"].state_dict(), "step": step,
                            "best": run["best"]}, run["folder"] / "last.tmp")
                (run["folder"] / "last.tmp").replace(run["folder"] / "last.pt")
                with (run["folder"] / "log.jsonl").open("a") as f:
                    f.write(json.dumps(line) + "\n")
                print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
