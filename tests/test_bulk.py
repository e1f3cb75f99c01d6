"""Extraction and matching at scale (silk_keypoints.bulk): resume after SIGKILL, 2-process gloo shards equal to
one process, decoding workers, failed images, the output lock, match-pairs resume, merging part files.

Child processes are forked from the test process (no second torch import), with one intra-op thread and no
decoding workers (the workers are tested in the test process itself, and under torchrun by
benchmarks/extract_scale.py)."""

import os
import shutil
import signal
import socket

import cv2
import h5py
import numpy as np
import pytest
from conftest import forked, forked_ranks

from silk_keypoints import SilkError, bulk
from silk_keypoints.bulk import RunSummary, failed_list_path, part_path, shard
from silk_keypoints.cli import main
from silk_keypoints.ecosystem.hloc import H5Store, feature_names, h5_items_equal, merge_h5
from silk_keypoints.files import OutputLock
from silk_keypoints.model import SiLK
from silk_keypoints.model.zoo import variant_config


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # no OpenCV pool for the forked children to inherit (bulk.image_loader does the same)
    yield _setup(tmp_path_factory)
    cv2.setNumThreads(threads)


def _setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("bulk")
    weights = root / "tiny.safetensors"
    SiLK(variant_config("tiny")).save(weights)
    rng = np.random.default_rng(0)
    images = root / "images"
    (images / "sub").mkdir(parents=True)
    for i, (h, w) in enumerate([(48, 64)] * 3 + [(56, 40), (48, 64), (40, 40)]):
        name = f"sub/im{i}.png" if i % 2 else f"im{i}.png"
        cv2.imwrite(str(images / name), cv2.GaussianBlur(rng.integers(0, 255, (h, w), dtype=np.uint8), (3, 3), 0))
    ref = root / "ref.h5"
    args = ["--checkpoint", str(weights), "--max-keypoints", "30", "--quiet"]
    assert main(["extract", str(images), "--out", str(ref), *args]) == 0
    (root / "pairs.txt").write_text("".join(f"{a} {b}\n" for i, a in enumerate(feature_names(ref))
                                            for b in feature_names(ref)[i + 1 :]))
    assert main(["match-pairs", str(root / "pairs.txt"), "--features", str(ref), "--out", str(root / "ref-m.h5"),
                 "--quiet"]) == 0
    return root, images, args


def test_sigkill_mid_run_then_resume_equals_uninterrupted(setup, tmp_path, capsys):
    root, images, args = setup
    out = tmp_path / "features.h5"
    calls = []

    def killed_at_third_image() -> int:
        real = bulk.batch_features

        def dying(*a, **k):
            calls.append(1)
            if len(calls) == 3:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*a, **k)

        bulk.batch_features = dying
        return main(["extract", str(images), "--out", str(out), *args])

    assert forked(killed_at_third_image)[0] == -signal.SIGKILL
    with h5py.File(out, "r") as f:  # readable, with the two images finished before the kill
        assert len(feature_names(out)) == 2 and f.attrs["model"] == "tiny"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features.h5", "features.h5.lock"]  # a stale lock only
    capsys.readouterr()
    assert main(["extract", str(images), "--out", str(out), *args]) == 0
    assert "wrote 4 images to" in capsys.readouterr().out.replace("(2 already there)", "")
    assert h5_items_equal(out, root / "ref.h5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features.h5"]


def test_two_gloo_processes_equal_one(setup, tmp_path):
    root, images, args = setup
    out, matches = tmp_path / "features.h5", tmp_path / "matches.h5"

    def both() -> int:
        code = main(["extract", str(images), "--out", str(out), *args])
        return code or main(["match-pairs", str(root / "pairs.txt"), "--features", str(root / "ref.h5"),
                             "--out", str(matches), "--quiet"])

    assert forked_ranks(both) == [0, 0]
    assert h5_items_equal(out, root / "ref.h5") and h5_items_equal(matches, root / "ref-m.h5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features.h5", "matches.h5"]  # parts merged, removed


def test_shards_and_merge_command(setup, tmp_path, capsys):
    root, images, args = setup
    items = list(range(7))
    assert [shard(items, r, 3) for r in range(3)] == [[0, 1], [2, 3], [4, 5, 6]]
    assert part_path(tmp_path / "f.h5", 1, 4).name == "f.part1of4.h5"
    names = sorted(p.relative_to(images).as_posix() for p in images.rglob("*.png"))
    parts = [tmp_path / "a.h5", tmp_path / "b.h5"]
    for part, half in zip(parts, (names[:3], names[3:])):
        (tmp_path / "list.txt").write_text("\n".join(half))
        assert main(["extract", "--image-list", str(tmp_path / "list.txt"), "--root", str(images), "--out", str(part),
                     *args]) == 0
    out = tmp_path / "merged.h5"
    assert main(["merge-features", *map(str, parts), "--out", str(out)]) == 0
    assert h5_items_equal(out, root / "ref.h5")
    assert merge_h5(parts, out) == 0  # rerun: nothing new
    capsys.readouterr()
    assert main(["merge-matches", str(parts[0]), "--out", str(tmp_path / "m.h5")]) == 2
    assert "is not a matches.h5 file" in capsys.readouterr().err


def test_workers_and_batches_give_the_same_file(setup, tmp_path):
    root, images, args = setup
    out = tmp_path / "w.h5"
    assert main(["extract", str(images), "--out", str(out), "--workers", "2", "--batch-size", "3", *args]) == 0
    with h5py.File(out, "r") as a, h5py.File(root / "ref.h5", "r") as b:
        assert sorted(feature_names(out)) == sorted(feature_names(root / "ref.h5"))
        for name in feature_names(out):  # batched: equal up to float rounding, which may swap near-tied scores
            order_a, order_b = (np.lexsort(f[name]["keypoints"][()].T) for f in (a, b))
            np.testing.assert_array_equal(a[name]["keypoints"][()][order_a], b[name]["keypoints"][()][order_b])
            np.testing.assert_allclose(a[name]["descriptors"][()][:, order_a], b[name]["descriptors"][()][:, order_b],
                                       atol=1e-5)
            np.testing.assert_allclose(a[name]["scores"][()][order_a], b[name]["scores"][()][order_b], atol=1e-5)


def test_failed_images_are_skipped_listed_and_retried(setup, tmp_path, capsys):
    _, images, args = setup
    bad, small = tmp_path / "bad.png", tmp_path / "small.png"
    bad.write_bytes(b"not an image")
    cv2.imwrite(str(small), np.zeros((2, 2), np.uint8))
    good = sorted(images.glob("*.png"))[:2]
    out = tmp_path / "f.h5"
    files = [str(good[0]), str(bad), str(small), str(good[1])]
    assert main(["extract", *files, "--out", str(out), *args]) == 0
    captured = capsys.readouterr()
    assert "wrote 2 images" in captured.out and "2 failed: see" in captured.out
    assert "skipped bad.png: cannot decode image" in captured.err
    listed = failed_list_path(out).read_text().splitlines()
    assert [line.split("\t")[0] for line in listed] == ["bad.png", "small.png"] and "too small" in listed[1]
    small.unlink()
    assert main(["extract", *files[:2], files[3], "--out", str(out), *args]) == 0  # bad.png is retried
    assert "wrote 0 images" in capsys.readouterr().out and failed_list_path(out).read_text().startswith("bad.png")
    assert main(["extract", str(good[0]), "--out", str(out), *args]) == 0
    assert not failed_list_path(out).exists()  # a run without failures removes the list
    assert main(["extract", str(bad), str(good[1]), "--out", str(tmp_path / "s.h5"), "--strict", *args]) == 2
    err = capsys.readouterr().err
    assert "cannot decode image" in err and "strict: stopped at the first failure" in err


def test_a_second_writer_is_refused_and_a_dead_ones_lock_is_taken_over(setup, tmp_path, capsys):
    _, images, args = setup
    out = tmp_path / "f.h5"
    with OutputLock(out):
        assert main(["extract", str(images), "--out", str(out), *args]) == 2
        err = capsys.readouterr().err
        assert f"is being written by process {os.getpid()} on {socket.gethostname()}" in err
        assert err.count("\n") == 1 and not out.exists()
        with pytest.raises(SilkError, match="being written by"):
            H5Store(out, {})
    assert not OutputLock(out).path.exists()
    code, dead = forked(lambda: 0)  # a pid that no longer runs
    OutputLock(out).path.write_text(f"{dead} {socket.gethostname()}\n")
    assert code == 0 and main(["extract", str(images), "--out", str(out), *args]) == 0
    OutputLock(out).path.write_text("1 another-host\n")
    with pytest.raises(SilkError, match="process 1 on another-host .*delete the lock file"):
        OutputLock(out).acquire()


def test_match_pairs_resumes_and_refuses_other_settings(setup, tmp_path, capsys):
    root, images, args = setup
    pairs = (root / "pairs.txt").read_text().splitlines()
    some = tmp_path / "some.txt"
    some.write_text("\n".join(pairs[:4]))
    out = tmp_path / "m.h5"
    common = ["--features", str(root / "ref.h5"), "--out", str(out), "--quiet"]
    assert main(["match-pairs", str(some), *common]) == 0
    capsys.readouterr()
    assert main(["match-pairs", str(root / "pairs.txt"), *common]) == 0
    assert f"wrote {len(pairs) - 4} pairs" in capsys.readouterr().out
    assert h5_items_equal(out, root / "ref-m.h5")
    assert main(["match-pairs", str(some), *common, "--matcher", "ratio"]) == 2
    assert "other settings (matcher method: file 'mnn', this run 'ratio')" in capsys.readouterr().err
    assert main(["extract", str(images), "--out", str(root / "ref.h5"), *args, "--max-keypoints", "5"]) == 2
    assert "detection_options max_keypoints: file 30, this run 5" in capsys.readouterr().err


def test_match_pairs_skips_and_lists_failed_pairs(setup, tmp_path, capsys):
    root, _, _ = setup
    feats, out, pairs = tmp_path / "f.h5", tmp_path / "m.h5", tmp_path / "pairs.txt"
    shutil.copy(root / "ref.h5", feats)
    with h5py.File(feats, "r+") as f:
        del f["im0.png"]["descriptors"]  # a broken image group
    names = feature_names(feats)
    pairs.write_text(f"im0.png {names[1]}\n{names[1]} {names[2]}\n{names[2]} im0.png\n")
    common = ["match-pairs", str(pairs), "--features", str(feats), "--out", str(out), "--quiet", "--no-gate"]
    assert main(common) == 0
    captured = capsys.readouterr()
    assert "wrote 1 pairs" in captured.out and "2 failed: see" in captured.out
    assert "skipped im0.png" in captured.err and "no descriptors" in captured.err
    listed = failed_list_path(out).read_text().splitlines()
    assert [line.split("\t")[0] for line in listed] == [f"im0.png {names[1]}", f"{names[2]} im0.png"]
    assert main([*common, "--strict"]) == 2  # the failed pairs are retried, and --strict stops at the first
    assert "strict: stopped at the first failure" in capsys.readouterr().err


def test_summary_line():
    s = RunSummary(done=3, skipped=2, failed=[("a", "bad")], seconds=1.5)
    assert s.line("images", "f.h5") == "wrote 3 images to f.h5 (2 already there, 1 failed: see f.h5.failed.txt) in 1.5 s, 2.00 images/s"
    s.check_some_done("no image could be read", "f.h5")  # some were done: no error
    with pytest.raises(SilkError, match=r"^no image could be read \(1 failed, listed in f.h5.failed.txt; the first: bad\)$"):
        RunSummary(failed=[("a", "bad")]).check_some_done("no image could be read", "f.h5")


def test_keep_memory_flat_sets_the_glibc_threshold():
    import platform

    from silk_keypoints.bulk import keep_memory_flat

    expected = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert keep_memory_flat() is expected
