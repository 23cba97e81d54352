"""Pair generators and pairs files."""

from __future__ import annotations

import pytest

from featmatch_core.sfm.pairs import exhaustive_pairs, pairs_from_spec, read_pairs, sequential_pairs, write_pairs

NAMES = [f"{i}.png" for i in range(6)]


def test_exhaustive_is_every_unordered_pair_once():
    pairs = exhaustive_pairs(NAMES)
    assert len(pairs) == 15 and len({frozenset(p) for p in pairs}) == 15
    assert all(a != b for a, b in pairs)


def test_sequential_window():
    pairs = sequential_pairs(NAMES, window=2)
    assert pairs == [("0.png", "1.png"), ("0.png", "2.png"), ("1.png", "2.png"), ("1.png", "3.png"),
                     ("2.png", "3.png"), ("2.png", "4.png"), ("3.png", "4.png"), ("3.png", "5.png"),
                     ("4.png", "5.png")]
    assert sequential_pairs(NAMES, window=10) == exhaustive_pairs(NAMES)
    with pytest.raises(ValueError, match="at least 1"):
        sequential_pairs(NAMES, window=0)


def test_pairs_file_round_trip_with_comments(tmp_path):
    path = write_pairs(tmp_path / "pairs.txt", [("0.png", "3.png"), ("1.png", "2.png")])
    path.write_text("# retrieval\n" + path.read_text() + "\n   \n")
    assert read_pairs(path, NAMES) == [("0.png", "3.png"), ("1.png", "2.png")]
    assert pairs_from_spec(str(path), NAMES) == [("0.png", "3.png"), ("1.png", "2.png")]


def test_pairs_file_naming_missing_images_is_a_clear_error(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("0.png 1.png\n0.png ghost.png\nother.png 1.png\n")
    with pytest.raises(ValueError, match=r"names 2 image\(s\) that are not among the images: ghost.png, other.png"):
        read_pairs(path, NAMES)
    path.write_text("0.png\n")
    with pytest.raises(ValueError, match="pairs.txt:1: expected 'name0 name1'"):
        read_pairs(path)


def test_spec_parsing():
    assert len(pairs_from_spec("exhaustive", NAMES)) == 15
    assert pairs_from_spec("sequential:1", NAMES) == [(NAMES[i], NAMES[i + 1]) for i in range(5)]
    assert len(pairs_from_spec("sequential", NAMES)) == 15  # default window 10
    for bad in ("sequential:x", "no/such/file.txt"):
        with pytest.raises(ValueError, match="bad pairs spec"):
            pairs_from_spec(bad, NAMES)
