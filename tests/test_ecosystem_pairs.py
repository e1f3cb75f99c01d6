"""Pair lists in hloc's pairs.txt format: generators, writing, reading, bad input, `silk pairs`."""

import pytest

from silk_keypoints import SilkError
from silk_keypoints.cli import main
from silk_keypoints.ecosystem.pairs import (
    exhaustive_pairs,
    read_pairs,
    sequential_pairs,
    unique_pairs,
    write_pairs,
)

NAMES = ["a.jpg", "b.jpg", "c.jpg", "d/e.jpg"]


def test_exhaustive_is_hlocs_order():
    assert exhaustive_pairs(NAMES) == [
        ("a.jpg", "b.jpg"),
        ("a.jpg", "c.jpg"),
        ("a.jpg", "d/e.jpg"),
        ("b.jpg", "c.jpg"),
        ("b.jpg", "d/e.jpg"),
        ("c.jpg", "d/e.jpg"),
    ]
    assert exhaustive_pairs(["a"]) == []


def test_sequential_window():
    assert sequential_pairs(NAMES, 1) == [("a.jpg", "b.jpg"), ("b.jpg", "c.jpg"), ("c.jpg", "d/e.jpg")]
    assert sequential_pairs(NAMES, 2) == [
        ("a.jpg", "b.jpg"),
        ("a.jpg", "c.jpg"),
        ("b.jpg", "c.jpg"),
        ("b.jpg", "d/e.jpg"),
        ("c.jpg", "d/e.jpg"),
    ]
    assert sequential_pairs(NAMES, 10) == exhaustive_pairs(NAMES)
    with pytest.raises(SilkError, match="window"):
        sequential_pairs(NAMES, 0)


def test_unique_pairs_drops_reversed_duplicates():
    assert unique_pairs([("a", "b"), ("b", "a"), ("a", "c"), ("a", "b")]) == [("a", "b"), ("a", "c")]


def test_write_read_roundtrip_in_hloc_format(tmp_path):
    path = write_pairs(tmp_path / "pairs.txt", exhaustive_pairs(NAMES))
    lines = path.read_text().splitlines()
    assert lines[0] == "a.jpg b.jpg" and len(lines) == 6
    # hloc's parse_retrieval: q, r = line.split()
    assert [tuple(line.split()) for line in lines] == exhaustive_pairs(NAMES)
    assert read_pairs(path, known=NAMES) == exhaustive_pairs(NAMES)


def test_read_skips_comments_blank_lines_and_duplicates(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("# retrieval\n\na.jpg  b.jpg\nb.jpg a.jpg\n  c.jpg\td/e.jpg  \n")
    assert read_pairs(path) == [("a.jpg", "b.jpg"), ("c.jpg", "d/e.jpg")]


@pytest.mark.parametrize(
    "text, message",
    [
        ("a.jpg b.jpg c.jpg\n", r"pairs.txt:1: expected two image names, found 3"),
        ("a.jpg b.jpg\nb.jpg\n", r"pairs.txt:2: expected two image names, found 1"),
        ("a.jpg a.jpg\n", "paired with itself"),
        ("# nothing\n", "lists no pairs"),
        ("a.jpg x.jpg\ny.jpg b.jpg\n", r"names 2 image\(s\) not in features.h5: x.jpg, y.jpg"),
    ],
)
def test_read_bad_input(tmp_path, text, message):
    path = tmp_path / "pairs.txt"
    path.write_text(text)
    with pytest.raises(SilkError, match=message):
        read_pairs(path, known=NAMES, where="features.h5")


def test_read_missing_file(tmp_path):
    with pytest.raises(SilkError, match="pairs file not found"):
        read_pairs(tmp_path / "nope.txt")


def test_write_refuses_existing_and_bad_names(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("keep me")
    with pytest.raises(SilkError, match="exists"):
        write_pairs(path, [("a", "b")])
    with pytest.raises(SilkError, match="whitespace"):
        write_pairs(path, [("a b.jpg", "c.jpg")], overwrite=True)
    assert path.read_text() == "keep me"
    write_pairs(path, [("a", "b")], overwrite=True)
    assert path.read_text() == "a b\n"


def test_cli_pairs_from_image_folder(tmp_path, capsys):
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    for name in ("b.png", "a.jpg", "sub/c.jpg", "notes.txt"):
        (images / name).write_bytes(b"")
    out = tmp_path / "pairs.txt"
    assert main(["pairs", "sequential", "--window", "1", "--images", str(images), "--out", str(out)]) == 0
    assert out.read_text() == "a.jpg b.png\nb.png sub/c.jpg\n"
    assert main(["pairs", "exhaustive", "--images", str(images), "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["pairs", "exhaustive", "--images", str(images), "--out", str(out), "--overwrite"]) == 0
    assert len(out.read_text().splitlines()) == 3
    assert (
        main(["pairs", "exhaustive", "--images", str(tmp_path / "none"), "--out", str(out), "--overwrite"])
        == 2
    )
    assert "image folder not found" in capsys.readouterr().err
