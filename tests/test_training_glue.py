"""SiLKGlue training: ground truth from a known warp, the NLL, one step on tiny data, a resumed run."""

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from silk_keypoints import SiLK
from silk_keypoints.errors import SilkError
from silk_keypoints.glue import SiLKGlue
from silk_keypoints.io import load_image
from silk_keypoints.model.checkpoint import read_safetensors
from silk_keypoints.training.glue import (
    IGNORE,
    UNMATCHED,
    GlueTrainConfig,
    Pair,
    _init_from,
    _placement,
    collate,
    glue_loss,
    ground_truth,
    labels_from_warps,
    learning_rate,
    main,
    make_pairs,
    make_zoom_pairs,
    pair_loss,
    train,
)
from silk_keypoints.training.homography import HomographyConfig

IMAGES = Path(__file__).parent / "fixtures" / "images"
SIZE = torch.tensor([[100.0, 80.0]])


def test_ground_truth_labels_from_a_shift():
    H = torch.tensor([[[1.0, 0, 10], [0, 1, 0], [0, 0, 1]]])  # view 1 = view 0 moved 10 px right
    k0 = torch.tensor([[[20.0, 20], [50, 50], [95, 10], [30, 60]]])
    # match of 0 (1 px off), of 1 (2.5 px off), none for 2 (lands outside view 1), 4 px from point 3 (ignored)
    k1 = torch.tensor([[[31.0, 20], [62.5, 50], [10, 70], [44, 60], [10, 10]]])
    l0, l1 = ground_truth(k0, k1, H, SIZE, SIZE)
    assert l0.tolist() == [[0, 1, UNMATCHED, IGNORE]]
    # point 2 of view 1 is far from every warped point; 4 of view 1 comes from outside view 0
    assert l1.tolist() == [[0, 1, UNMATCHED, IGNORE, UNMATCHED]]
    l0, _ = ground_truth(k0, k1, H, SIZE, SIZE, match_px=1.5, unmatched_px=3.0)  # labels for sub-pixel keypoints
    assert l0.tolist() == [[0, IGNORE, UNMATCHED, UNMATCHED]]
    l0, l1 = ground_truth(k0, k1, H, SIZE, SIZE, related=torch.tensor([False]))  # two different photos
    assert l0.tolist() == [[UNMATCHED] * 4] and l1.tolist() == [[UNMATCHED] * 5]
    mask1 = torch.tensor([[False, True, True, True, True]])
    l0, l1 = ground_truth(k0, k1, H, SIZE, SIZE, mask1=mask1)
    assert l1[0, 0] == IGNORE and l0[0, 0] == UNMATCHED  # a padded keypoint is no correspondence


def test_loss_is_the_nll_of_the_labelled_assignment():
    log_p = torch.log(torch.tensor([[[0.5, 0.1], [0.2, 0.3]]]))
    un0, un1 = torch.log(torch.tensor([[0.4, 0.6]])), torch.log(torch.tensor([[0.7, 0.2]]))
    terms = glue_loss(log_p, un0, un1, torch.tensor([[0, UNMATCHED]]), torch.tensor([[0, IGNORE]]))
    expected = 0.5 * -torch.log(torch.tensor(0.5)) + 0.5 * -torch.log(torch.tensor(0.6))
    assert torch.allclose(terms["loss"], expected) and terms["matches"] == 1 and terms["unmatched"] == 1


def tiny_pairs(n: int = 2, k: int = 20, dim: int = 16) -> list:
    g = torch.Generator().manual_seed(0)
    pairs = []
    for i in range(n):
        k0 = torch.rand(k - i, 2, generator=g) * 90
        H = torch.tensor([[1.0, 0, 5], [0, 1, -3], [0, 0, 1]])
        d0 = F.normalize(torch.randn(k - i, dim, generator=g), dim=1)
        noise = 0.1 * torch.randn(k - i, dim, generator=g)
        pairs.append(Pair.from_homography(k0, d0.half(), k0 + torch.tensor([5.0, -3.0]),
                                          F.normalize(d0 + noise, dim=1).half(), H, (100, 80)))
    return pairs


def test_one_training_step_is_finite_and_reaches_every_parameter():
    torch.manual_seed(0)
    model = SiLKGlue(descriptor_dim=16, width=16, heads=2, layers=2)
    batch = collate(tiny_pairs())
    assert batch["mask0"].sum(1).tolist() == [20, 19]  # unequal counts padded
    terms = pair_loss(model, batch)
    assert torch.isfinite(terms["loss"]) and terms["matches"] > 0
    terms["loss"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = float(terms["loss"].detach())
    for _ in range(3):
        opt.zero_grad()
        loss = pair_loss(model, batch)["loss"]
        loss.backward()
        opt.step()
    assert float(pair_loss(model, batch)["loss"].detach()) < before


def test_training_run_logs_checkpoints_and_resumes(tmp_path, capsys):
    args = ["--images", str(IMAGES), "--out", str(tmp_path / "run"), "--extractor", "tiny", "--batch", "2",
            "--keypoints", "24", "--crop", "64", "--width", "16", "--heads", "2", "--layers", "1",
            "--log-every", "1", "--checkpoint-every", "2", "--threads", "1", "--ema", "0.5"]
    assert main(args + ["--steps", "2"]) == 0
    assert main(args + ["--steps", "3", "--resume"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and all(r["loss"] == r["loss"] for r in rows)
    model = SiLKGlue.from_file(tmp_path / "run" / "last.safetensors")
    assert model.conf.width == 16 and model.conf.descriptor_dim == 64
    state = torch.load(tmp_path / "run" / "state.pt", weights_only=True)
    assert state["step"] == 3
    average = SiLKGlue.from_file(tmp_path / "run" / "ema.safetensors")  # the moving average, resumed with the run
    assert all(torch.equal(v, state["ema"][k]) for k, v in average.state_dict().items())
    assert not torch.equal(average.input.weight, model.input.weight)
    assert main(args + ["--steps", "4", "--resume", "--ema", "1"]) == 2
    assert "--ema must be a decay in [0, 1)" in capsys.readouterr().err
    assert main(args + ["--steps", "4", "--resume", "--match-px", "2", "--unmatched-px", "1.5"]) == 2
    assert "need 0 < --match-px <= --unmatched-px, got 2.0 and 1.5" in capsys.readouterr().err
    assert main(["--images", str(tmp_path / "nothing"), "--out", str(tmp_path / "r2")]) == 2
    assert "no training images" in capsys.readouterr().err


def test_init_from_a_matcher_of_other_descriptors(tmp_path, capsys):
    source = SiLKGlue(descriptor_dim=128, width=16, heads=2, layers=1)
    path = source.save(tmp_path / "fast-like.safetensors")
    model = _init_from(str(path), 64, 1)  # tiny's descriptors
    assert model.conf.descriptor_dim == 64 and model.input.weight.shape == (16, 64)
    for k, v in model.state_dict().items():
        assert k.startswith("input.") or torch.equal(v, source.state_dict()[k]), k
    assert "every weight but the input projection taken" in capsys.readouterr().err
    assert _init_from(str(path), 128, 1).conf == source.conf  # same descriptors: the file as it is
    args = ["--images", str(IMAGES), "--out", str(tmp_path / "run"), "--extractor", "tiny", "--batch", "2",
            "--keypoints", "24", "--crop", "64", "--steps", "1", "--threads", "1", "--init-from", str(path),
            "--layers", "1"]
    assert main(args) == 0
    assert SiLKGlue.from_file(tmp_path / "run" / "last.safetensors").conf.descriptor_dim == 64
    assert main(args[:-1] + ["2"]) == 2  # more layers than the source has
    assert "has 1 layers; --layers 2 would need new ones" in capsys.readouterr().err


def test_init_from_keeps_the_first_blocks_of_a_deeper_matcher(tmp_path, capsys):
    source = SiLKGlue(descriptor_dim=64, width=16, heads=2, layers=3)
    path = source.save(tmp_path / "deep.safetensors")
    model = _init_from(str(path), 64, 2)
    assert model.conf.layers == 2 and len(model.self_blocks) == 2
    full = source.state_dict()
    assert all(torch.equal(v, full[k]) for k, v in model.state_dict().items())  # every kept weight is the source's
    assert not any(k.startswith(("self_blocks.2.", "cross_blocks.2.")) for k in model.state_dict())
    assert "3 layers: the first 2 kept" in capsys.readouterr().err


def test_training_on_hard_set_views(tmp_path, capsys):
    args = ["--images", str(IMAGES), "--out", str(tmp_path / "run"), "--extractor", "tiny", "--batch", "2",
            "--keypoints", "24", "--width", "16", "--heads", "2", "--layers", "1", "--log-every", "1",
            "--threads", "1", "--steps", "1", "--pairs", "hpatches", "--size", "96x64"]
    assert main(args) == 0
    row = json.loads((tmp_path / "run" / "log.jsonl").read_text())
    assert row["loss"] == row["loss"] and row["matches"] > 0 and row["unmatched"] > 0
    extractor = SiLK.from_pretrained("tiny").eval()
    image = load_image(IMAGES / "opencv_box.jpg")  # a textured 96-px crop from the middle of a fixture photo
    h, w = image.shape[0] // 2, image.shape[1] // 2
    crops = torch.from_numpy(image[h - 48:h + 48, w - 48:w + 48].copy()).permute(2, 0, 1)[None]
    for positions in ("cells", "extrema"):
        (pair,) = make_pairs(extractor, crops, 64, HomographyConfig(), "silk", torch.Generator().manual_seed(0),
                             positions)
        on_grid = ((pair.keypoints0 - 1.5) / 4).remainder(1).eq(0).all(-1)  # tiny: 4-px cell centres
        assert len(on_grid) > 10
        assert on_grid.all() if positions == "cells" else on_grid.float().mean() < 0.1
    assert main([*args, "--out", str(tmp_path / "other"), "--unrelated-share", "1"]) == 0  # pairs of two photos
    row = json.loads((tmp_path / "other" / "log.jsonl").read_text())
    assert row["matches"] == 0 and row["unmatched"] > 0
    assert main([*args[:-1], "96"]) == 2
    assert "--size must look like 480x360" in capsys.readouterr().err


def test_training_on_extrema_keypoints(tmp_path):
    args = ["--images", str(IMAGES), "--out", str(tmp_path / "run"), "--extractor", "tiny", "--batch", "2",
            "--keypoints", "24", "--width", "16", "--heads", "2", "--layers", "1", "--log-every", "1",
            "--threads", "1", "--steps", "1", "--positions", "extrema"]
    assert main(args) == 0
    row = json.loads((tmp_path / "run" / "log.jsonl").read_text())
    assert row["loss"] == row["loss"] and row["matches"] > 0
    assert main([*args, "cells", "--out", str(tmp_path / "both"), "--pairs", "hpatches", "--size", "96x64"]) == 0
    _, meta = read_safetensors(tmp_path / "both" / "last.safetensors", "silk-keypoints-glue")
    assert json.loads(meta["info"])["positions"] == ["extrema", "cells"]
    with pytest.raises(SilkError, match="positions must be a tuple"):  # a str would be drawn letter by letter
        train(GlueTrainConfig(images=str(IMAGES), out=str(tmp_path / "str"), positions="cells"))


def test_placement_draws_each_named_placement():
    rng = np.random.default_rng(0)
    before = rng.bit_generator.state
    assert _placement(("extrema",), rng) == "extrema" and rng.bit_generator.state == before  # no draw for one
    drawn = [_placement(("cells", "extrema"), rng) for _ in range(200)]
    assert 60 < drawn.count("cells") < 140 and drawn.count("cells") + drawn.count("extrema") == 200

def test_zoom_pairs_follow_their_similarity(tmp_path, capsys):
    extractor = SiLK.from_pretrained("tiny").eval()
    photos = [(load_image(IMAGES / a), load_image(IMAGES / b)) for a, b in
              [("opencv_left.jpg", "opencv_box.jpg"), ("opencv_box.jpg", "opencv_left.jpg")] * 3]
    config = GlueTrainConfig(size=(160, 120), zoom=(0.5, 0.5), zoom_degrees=0.0, viewpoint_light=0.2)
    pairs = make_zoom_pairs(extractor, photos, 256, config, np.random.default_rng(0))
    scales = []
    for pair in pairs:
        seen = torch.isfinite(pair.warped0).all(1)
        k, w = pair.keypoints0[seen].double(), pair.warped0[seen].double()
        scale = float((w - w.mean(0)).norm(dim=1).sum() / (k - k.mean(0)).norm(dim=1).sum())
        scales.append(round(scale, 3))
        torch.testing.assert_close((w - w.mean(0)) / scale, k - k.mean(0), atol=1e-4, rtol=0)  # no turn
        assert seen.all() if scale < 1 else seen.float().mean() < 0.8  # zoom out / in: the clutter is not seen
        labels0, _ = labels_from_warps(*(collate([pair])[k] for k in
                                         ("keypoints0", "keypoints1", "warped0", "warped1", "mask0", "mask1")))
        assert (labels0 >= 0).sum() > 5  # keypoints repeat across the zoom
    assert set(scales) == {0.5, 2.0}  # the views swap half the time
    args = ["--images", str(IMAGES), "--out", str(tmp_path / "run"), "--extractor", "tiny", "--batch", "2",
            "--keypoints", "24", "--width", "16", "--heads", "2", "--layers", "1", "--log-every", "1",
            "--threads", "1", "--steps", "1", "--pairs", "hpatches", "--size", "96x64", "--zoom-share", "1"]
    assert main(args) == 0
    row = json.loads((tmp_path / "run" / "log.jsonl").read_text())
    assert row["loss"] == row["loss"] and row["unmatched"] > 0
    assert main([*args, "--scene-share", "0.5"]) == 2
    assert "scene and zoom together at most 1" in capsys.readouterr().err
    assert main([*args, "--zoom", "0.5", "1.5"]) == 2
    assert "need 0 < --zoom LO <= HI <= 1" in capsys.readouterr().err


def test_learning_rate_cosine_decay(tmp_path, capsys):
    assert learning_rate(GlueTrainConfig(lr=1e-3, steps=11), 7) == 1e-3  # constant by default
    config = GlueTrainConfig(lr=1e-3, lr_end=1e-5, steps=11)
    rates = [learning_rate(config, s) for s in range(11)]
    assert rates[0] == 1e-3 and abs(rates[-1] - 1e-5) < 1e-12 and abs(rates[5] - (1e-3 + 1e-5) / 2) < 1e-12
    assert all(a > b for a, b in itertools.pairwise(rates))
    args = ["--images", str(IMAGES), "--out", str(tmp_path / "run"), "--extractor", "tiny", "--batch", "2",
            "--keypoints", "24", "--width", "16", "--heads", "2", "--layers", "1", "--log-every", "1",
            "--threads", "1", "--steps", "2", "--lr", "1e-3", "--lr-end", "1e-4"]
    assert main(args) == 0
    rows = [json.loads(r) for r in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows] == [1e-3, 1e-4]
    assert main([*args[:-1], "2e-3"]) == 2
    assert "need --lr > 0 and 0 <= --lr-end <= --lr" in capsys.readouterr().err
