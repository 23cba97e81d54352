"""COLMAP database import, verification and mapping through pycolmap, the whole chain and its CLI."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pycolmap
import pytest
from sfm_scene import MAPPING, pinhole

from featmatch_core.sfm import colmap
from featmatch_core.sfm.evaluate import camera_centres, centres_from_poses, position_errors, umeyama_sim3
from featmatch_core.sfm.extract import extract_features
from featmatch_core.sfm.match import match_pairs
from featmatch_core.sfm.pairs import exhaustive_pairs
from featmatch_core.sfm.reconstruct import main, reconstruct


MODEL = ["model.extractor.resize=null", "model.extractor.max_num_keypoints=1024", "model.device=cpu"]


def test_database_import_counts(room, sift_nn, tmp_path):
    features, matches, db_path = tmp_path / "f.h5", tmp_path / "m.h5", tmp_path / "database.db"
    names = room.names[:3]
    pairs = exhaustive_pairs(names)
    extract_features(sift_nn, room.image_dir, features, names)
    match_pairs(sift_nn, pairs + [(names[1], names[0])], features, matches)  # a reversed duplicate counts once
    ids = colmap.create_database(db_path, room.image_dir, names, pinhole(room))
    colmap.import_features(db_path, ids, features)
    assert colmap.import_matches(db_path, ids, pairs + [(names[1], names[0])], matches) == 3
    from featmatch_core.sfm import h5io

    with h5io.open_h5(features) as f, h5io.open_h5(matches) as m, pycolmap.Database.open(db_path) as db:
        assert db.num_cameras() == 1 and db.num_images() == 3 and sorted(ids) == names
        camera = db.read_all_cameras()[0]
        assert camera.model_name == "PINHOLE" and np.allclose(camera.params, pinhole(room).params)
        for name in names:
            kpts = h5io.read_keypoints(f, name)
            stored = db.read_keypoints(ids[name])
            assert len(stored) == len(kpts) and np.allclose(stored[:, :2], kpts + 0.5)  # COLMAP pixel centres
        total = sum(len(h5io.read_matches(m, *p)[0]) for p in pairs)
        assert db.num_matched_image_pairs() == 3 and db.num_matches() == total
    assert colmap.verify_matches(db_path, pairs, tmp_path) == 3


def test_files_written_like_hloc_import_unchanged(room, tmp_path):
    """hloc's writers: float16 arrays (as_half), int16 matches0, no fingerprint, pair stored as (b, a)."""
    import h5py

    a, b = room.names[:2]
    rng = np.random.default_rng(0)
    kpts = {a: rng.uniform(0, 200, (30, 2)), b: rng.uniform(0, 200, (20, 2))}
    with h5py.File(tmp_path / "feats.h5", "w") as f:
        for name, k in kpts.items():
            grp = f.create_group(name)
            grp.create_dataset("keypoints", data=k.astype(np.float16))
            grp.create_dataset("descriptors", data=rng.random((128, len(k))).astype(np.float16))
    matches0 = np.full(20, -1, np.int16)
    matches0[[0, 5, 7]] = [3, 1, 29]
    with h5py.File(tmp_path / "matches.h5", "w") as f:
        grp = f.create_group(f"{b}/{a}")
        grp.create_dataset("matches0", data=matches0)
        grp.create_dataset("matching_scores0", data=np.ones(20, np.float16))
    db_path = tmp_path / "database.db"
    ids = colmap.create_database(db_path, room.image_dir, [a, b], pinhole(room))
    colmap.import_features(db_path, ids, tmp_path / "feats.h5")
    assert colmap.import_matches(db_path, ids, [(a, b)], tmp_path / "matches.h5") == 1
    with pycolmap.Database.open(db_path) as db:
        assert db.num_keypoints_for_image(ids[a]) == 30
        np.testing.assert_allclose(db.read_keypoints(ids[b])[:, :2], kpts[b].astype(np.float16) + 0.5, atol=1e-3)
        stored = db.read_matches(ids[a], ids[b])
    assert sorted(map(tuple, stored.tolist())) == [(1, 5), (3, 0), (29, 7)]  # (index in a, index in b)


def test_reconstruction_of_a_generated_scene(room, room_sfm):
    result, out = room_sfm
    summary = result.summary
    assert summary["registered"] == len(room.names) and summary["unregistered"] == {}
    assert summary["points"] > 300 and summary["mean_track_length"] > 2.5
    assert summary["mean_reprojection_error"] < 0.5
    errors = position_errors(camera_centres(result.reconstruction), centres_from_poses(room.poses))
    path_length = sum(np.linalg.norm(np.diff(np.stack(list(centres_from_poses(room.poses).values())), axis=0), axis=1))
    assert errors["max"] < 0.01 * path_length  # metres, against a ~1 m path
    for key in ("bin", "txt", "ply"):
        assert result.paths[key].exists()
    assert pycolmap.Reconstruction(result.paths["bin"]).num_reg_images() == len(room.names)
    saved = json.loads((out / "summary.json").read_text())
    assert saved["registered"] == len(room.names) and set(saved["timings_s"]) == {"extract", "match", "import",
                                                                                  "verify", "map"}


def test_bad_images_are_skipped_and_reported(room, sift_nn, tmp_path):
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    good = room.names[::2]  # three images with wide baselines: enough for a model, quick to map
    for name in good:
        shutil.copy(room.image_dir / name, image_dir / name)
    (image_dir / "broken.png").write_bytes(b"\x89PNG not really")
    cv2.imwrite(str(image_dir / "blank.png"), np.full((240, 320), 128, np.uint8))  # no features at all
    result = reconstruct(image_dir, tmp_path / "out", overrides=MAPPING, camera=pinhole(room), pipeline=sift_nn)
    summary = result.summary
    assert summary["registered"] == len(good) and summary["images"] == len(good) + 2
    assert "broken.png" in summary["unreadable"] and "could not decode" in summary["unreadable"]["broken.png"]
    assert summary["unregistered"]["blank.png"] == "too few features (0 keypoints)"
    assert summary["unregistered"]["broken.png"].startswith("unreadable image")


def test_pairs_file_naming_a_missing_image_fails_before_any_work(room, sift_nn, tmp_path):
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(f"{room.names[0]} {room.names[1]}\n{room.names[0]} nowhere.png\n")
    with pytest.raises(ValueError, match="not among the images: nowhere.png"):
        reconstruct(room.image_dir, tmp_path / "out", pairs=str(pairs), pipeline=sift_nn)
    assert not (tmp_path / "out" / "features.h5").exists()


def test_cli_runs_the_chain_and_reports(room, tmp_path, capsys):
    K = room.K
    params = f"{K[0, 0]},{K[1, 1]},{K[0, 2] + 0.5},{K[1, 2] + 0.5}"
    argv = [str(room.image_dir), str(tmp_path), "--pairs", "sequential:2", "--camera", "PINHOLE",
            "--camera-params", params, "--camera-mode", "single", "--export", "bin", *MODEL, *MAPPING,
            "mapping.mapper.init_min_tri_angle=4"]  # neighbours only: no initial pair at COLMAP's 16 degrees
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"registered images:       {len(room.names)} / {len(room.names)}" in out
    assert "mean track length" in out and "mean reprojection error" in out
    assert len((tmp_path / "pairs.txt").read_text().splitlines()) == 2 * len(room.names) - 3


@pytest.mark.parametrize("argv_tail, message", [
    (["mapping.no_such_option=1"], "bad mapping.* override"),
    (["extractor.resize=10"], "overrides must start with one of"),
    (["--camera", "PINHOLE", "--camera-params", "1,2"], "takes 4 params"),
    (["--pairs", "sequential:x"], "bad pairs spec"),
])
def test_cli_bad_input_is_one_error_line(room, tmp_path, capsys, argv_tail, message):
    assert main([str(room.image_dir), str(tmp_path), *argv_tail]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err


def test_image_list_naming_a_missing_file_is_one_error_line(room, tmp_path, capsys):
    listing = tmp_path / "list.txt"
    listing.write_text(f"{room.names[0]}\nmissing.png\n")
    assert main([str(room.image_dir), str(tmp_path / "out"), "--image-list", str(listing)]) == 2
    assert "lists 1 image(s) absent from" in capsys.readouterr().err


def test_umeyama_recovers_a_similarity():
    rng = np.random.default_rng(1)
    src = rng.normal(size=(10, 3))
    angle = 0.7
    R = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    dst = 2.5 * src @ R.T + np.array([1.0, -2.0, 0.5])
    scale, R_est, t = umeyama_sim3(src, dst)
    assert scale == pytest.approx(2.5) and np.allclose(R_est, R) and np.allclose(t, [1.0, -2.0, 0.5])
