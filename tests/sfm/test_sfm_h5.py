"""Features/matches h5 files: hloc's layout, round trips, incremental skip, resume after an interruption."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from sfm_scene import CountingPipeline

from featmatch_core.config import ConfigError
from featmatch_core.image import read_image
from featmatch_core.sfm import h5io
from featmatch_core.sfm.extract import extract_features
from featmatch_core.sfm.match import match_pairs
from featmatch_core.sfm.pairs import exhaustive_pairs


def test_names_to_pair_is_hlocs():
    assert h5io.names_to_pair("a/b.png", "c.png") == "a-b.png/c.png"
    assert h5io.names_to_pair("a.png", "b.png", "_") == "a.png_b.png"


def test_features_round_trip_in_hloc_layout(room, sift_nn, tmp_path):
    path = tmp_path / "features.h5"
    extract_features(sift_nn, room.image_dir, path, room.names[:2])
    feats = sift_nn.extract(read_image(room.image_dir / room.names[0]))
    n, dim = feats["keypoints"].shape[1], feats["descriptors"].shape[2]
    with h5py.File(path, "r") as f:
        grp = f[room.names[0]]
        assert grp["keypoints"].shape == (n, 2) and grp["descriptors"].shape == (dim, n)  # hloc: (D, N)
        assert grp["scores"].shape == (n,) and tuple(grp["image_size"][()]) == (320, 240)
        assert grp["keypoints"].attrs["uncertainty"] == 1.0
        np.testing.assert_allclose(grp["keypoints"][()], feats["keypoints"][0].numpy())  # OpenCV convention kept
        back = h5io.h5_to_features(h5io.read_features(f, room.names[0]))
    for key in ("keypoints", "keypoint_scores", "descriptors", "scales", "oris", "image_size"):
        np.testing.assert_allclose(back[key].numpy(), feats[key].numpy(), err_msg=key)


def test_nested_names_and_matches_round_trip_both_orders(tmp_path):
    rng = np.random.default_rng(0)
    feats = {"keypoints": rng.random((1, 7, 2)) * 100, "descriptors": rng.random((1, 7, 4)),
             "keypoint_scores": rng.random((1, 7)), "image_size": np.array([[100, 80]])}
    matches, scores = np.array([[0, 3], [2, 1], [6, 0]]), np.array([0.9, 0.5, 0.7], np.float32)
    with h5io.open_h5(tmp_path / "f.h5", "a") as f:
        h5io.write_features(f, "seq/a.png", feats)
        h5io.write_features(f, "b.png", feats)
        assert h5io.list_names(f) == ["b.png", "seq/a.png"]
        h5io.write_matches(f, "seq/a.png", "b.png", matches, scores, num_keypoints0=7)
        assert "seq-a.png/b.png" in f and f["seq-a.png/b.png/matches0"].shape == (7,)
        got, got_scores = h5io.read_matches(f, "seq/a.png", "b.png")
        np.testing.assert_array_equal(got, matches)
        np.testing.assert_allclose(got_scores, scores)
        reverse, _ = h5io.read_matches(f, "b.png", "seq/a.png")
        np.testing.assert_array_equal(reverse, matches[:, ::-1])
        with pytest.raises(KeyError, match="no matches of the pair"):
            h5io.read_matches(f, "b.png", "c.png")


def test_partial_group_from_a_crash_is_dropped(tmp_path):
    with h5io.open_h5(tmp_path / "f.h5", "a") as f:
        f.create_group(h5io.TMP_PREFIX + "x.png").create_dataset("keypoints", data=np.zeros((3, 2)))
        assert h5io.list_names(f) == []
        h5io.drop_partial_groups(f)
        assert list(f.keys()) == []


def test_damaged_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "features.h5"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(OSError, match="damaged: delete it"):
        h5io.open_h5(bad, "a")


def test_incremental_extraction_skips_done_images(room, sift_nn, tmp_path):
    path = tmp_path / "features.h5"
    first = CountingPipeline(sift_nn)
    report = extract_features(first, room.image_dir, path, room.names[:3])
    assert first.extract_calls == 3 and report.extracted == room.names[:3]
    again = CountingPipeline(sift_nn)
    report = extract_features(again, room.image_dir, path, room.names[:4])
    assert again.extract_calls == 1 and report.skipped == room.names[:3] and report.extracted == [room.names[3]]


def test_interrupted_runs_resume_without_recomputing(room, sift_nn, tmp_path):
    features, matches = tmp_path / "features.h5", tmp_path / "matches.h5"
    with pytest.raises(KeyboardInterrupt):
        extract_features(CountingPipeline(sift_nn, fail_extract_at=3), room.image_dir, features, room.names)
    resumed = CountingPipeline(sift_nn)
    extract_features(resumed, room.image_dir, features, room.names)
    assert resumed.extract_calls == len(room.names) - 2

    pairs = exhaustive_pairs(room.names)
    with pytest.raises(KeyboardInterrupt):
        match_pairs(CountingPipeline(sift_nn, fail_match_at=4), pairs, features, matches)
    resumed = CountingPipeline(sift_nn)
    report = match_pairs(resumed, pairs, features, matches)
    assert resumed.match_calls == len(pairs) - 3 and len(report.skipped) == 3
    with h5io.open_h5(matches) as f:
        assert h5io.missing_pairs(f, pairs) == []
        m, _ = h5io.read_matches(f, *pairs[0])
    assert len(m) > 50


def test_features_of_another_config_are_refused(room, sift_nn, tmp_path):
    import featmatch_core

    path = tmp_path / "features.h5"
    extract_features(sift_nn, room.image_dir, path, room.names[:1])
    other = featmatch_core.load("sift+nn", ["extractor.resize=null", "extractor.max_num_keypoints=64",
                                            "device=cpu"], download=False)
    with pytest.raises(ConfigError, match="another config"):
        extract_features(other, room.image_dir, path, room.names[:2])


def test_pairs_without_features_are_a_clear_error(room, sift_nn, tmp_path):
    features = tmp_path / "features.h5"
    extract_features(sift_nn, room.image_dir, features, room.names[:2])
    with pytest.raises(KeyError, match="no features of 1 image.*004.png"):
        match_pairs(sift_nn, [(room.names[0], room.names[4])], features, tmp_path / "m.h5")


def test_matching_reuses_each_images_lightglue_encoding(room, tmp_path):
    """Exhaustive matching with LightGlue: each image's own part of the matching is computed once
    for all its pairs (kept with its cached features), and the matches are the pair-wise ones."""
    import featmatch_core
    from featmatch_core.sfm.match import FeatureCache

    pipe = featmatch_core.load("sift+lightglue-cpu", ["extractor.resize=null", "extractor.max_num_keypoints=256",
                                                      "device=cpu"], download=False)
    names = room.names[:3]
    features, matches = tmp_path / "features.h5", tmp_path / "matches.h5"
    extract_features(pipe, room.image_dir, features, names)
    pairs = exhaustive_pairs(names)
    match_pairs(pipe, pairs, features, matches)
    with h5py.File(features, "r") as f, h5py.File(matches, "r") as m:
        cache = FeatureCache(f, pipe.device)
        first = cache[names[0]]
        assert cache[names[0]] is first and cache.reads == 1  # one frame per image, reused
        encoded = []
        for name0, name1 in pairs:
            frame0, frame1 = cache[name0], cache[name1]
            pipe.match_features(frame0.features, frame1.features, (frame0.matcher_state, frame1.matcher_state))
            encoded.append(first.matcher_state.get("lightglue"))
            direct = pipe.match_features(frame0.features, frame1.features)  # no states
            np.testing.assert_array_equal(h5io.read_matches(m, name0, name1)[0], direct.matches)
            assert len(direct.matches) > 20
        assert encoded[0] is not None and encoded[0] is encoded[1]  # image 0's encoding served both its pairs


def test_batched_matching_writes_the_pairwise_matches(room, tmp_path):
    """batch_size > 1: LightGlue at full depth matches padded batches of pairs (different keypoint
    counts) with the matches of one pair at a time; adaptive configs fall back to single pairs."""
    import featmatch_core

    common = ["extractor.resize=null", "device=cpu", "precision=fp32"]
    full = featmatch_core.load("sift+lightglue-cpu", common + [
        "matcher.depth_confidence=-1", "matcher.width_confidence=-1"], download=False)
    names = room.names[:4]
    features = tmp_path / "features.h5"
    extract_features(full, room.image_dir, features, names)
    with h5py.File(features, "r") as f:  # different keypoint counts: the batches are padded
        assert len({len(h5io.read_keypoints(f, name)) for name in names}) > 1
    pairs = exhaustive_pairs(names)
    assert full.batches_pairs()
    match_pairs(full, pairs, features, tmp_path / "single.h5")
    match_pairs(full, pairs, features, tmp_path / "batched.h5", batch_size=4)
    with h5py.File(tmp_path / "single.h5", "r") as a, h5py.File(tmp_path / "batched.h5", "r") as b:
        for name0, name1 in pairs:
            single, batched = h5io.read_matches(a, name0, name1), h5io.read_matches(b, name0, name1)
            np.testing.assert_array_equal(single[0], batched[0])
            np.testing.assert_allclose(single[1], batched[1], atol=1e-5)
            assert len(single[0]) > 10
    adaptive = featmatch_core.load("sift+lightglue-cpu", common, download=False)
    assert not adaptive.batches_pairs()  # an exit would stop a whole batch: pairs go one by one
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        match_pairs(full, pairs, features, tmp_path / "x.h5", batch_size=0)
