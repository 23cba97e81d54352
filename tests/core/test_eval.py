"""Evaluation CLIs end to end on tiny generated datasets in the official layouts."""

import json

import cv2
import numpy as np
import pytest

from featmatch_core.datasets.synthetic import random_texture, sample_homography, warp_image
from featmatch_core.eval import hpatches, inspect, sequence
from featmatch_core.models import pipeline as pipeline_module


def make_hpatches(root, sequences=("v_synth", "i_synth"), n_images=3):
    for s, name in enumerate(sequences):
        folder = root / "hpatches-sequences-release" / name
        folder.mkdir(parents=True)
        base = random_texture(240, 320, seed=10 + s)
        cv2.imwrite(str(folder / "1.ppm"), cv2.cvtColor(base, cv2.COLOR_GRAY2BGR))
        for k in range(2, n_images + 1):
            H = sample_homography((320, 240), seed=100 * s + k, max_angle_deg=10, scale_range=(0.9, 1.1))
            if name.startswith("i_"):
                H = np.eye(3)
            warped = warp_image(base, H, (320, 240))
            if name.startswith("i_"):
                warped = np.clip(warped.astype(np.float32) * 0.7 + 20, 0, 255).astype(np.uint8)
            cv2.imwrite(str(folder / f"{k}.ppm"), cv2.cvtColor(warped, cv2.COLOR_GRAY2BGR))
            np.savetxt(folder / f"H_1_{k}", H)
    return root


def make_sequence(root, n_frames=4):
    """A textured plane at z=2 m seen by a camera translating sideways and rotating a little."""
    K = np.array([[300.0, 0, 160], [0, 300.0, 120], [0, 0, 1]])
    texture = random_texture(480, 640, seed=7)
    # plane points X = (u_t - 320) / 160, (v_t - 240) / 160, 2): texture pixel -> world
    A = np.array([[1 / 160, 0, -2.0], [0, 1 / 160, -1.5], [0, 0, 1]])  # texture px -> (X, Y, 1)
    for d in ("images", "depth", "poses"):
        (root / d).mkdir(parents=True)
    np.savetxt(root / "K.txt", K)
    for i in range(n_frames):
        angle = np.deg2rad(2.0 * i)
        R = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
        t = np.array([-0.1 * i, 0.02 * i, 0.0])
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = R, t
        # homography texture -> image for the plane Z=2: x ~ K (R [X, Y, 2] + t)
        M = np.column_stack([R[:, 0], R[:, 1], 2 * R[:, 2] + t])
        H = K @ M @ A
        image = warp_image(texture, H, (320, 240))
        cv2.imwrite(str(root / "images" / f"{i + 1:04d}.png"), image)
        # depth along the optical axis of the plane point seen at each pixel
        u, v = np.meshgrid(np.arange(320), np.arange(240))
        rays = np.linalg.inv(K) @ np.stack([u.ravel(), v.ravel(), np.ones(u.size)])
        n_c, d_c = R[:, 2], 2.0 + R[:, 2] @ t  # plane Z_w=2 in camera coords: n.X = d
        z = (d_c / (n_c @ rays)).reshape(240, 320)
        np.savez(root / "depth" / f"{i + 1:04d}.npz", depth=z.astype(np.float32))
        np.savetxt(root / "poses" / f"{i + 1:04d}.txt", T)
    return root


def test_hpatches_eval_end_to_end_and_cache(tmp_path, capsys, monkeypatch):
    data = make_hpatches(tmp_path / "data")
    results = tmp_path / "results"
    args = ["--conf", "sift+nn", "--results_root", str(results), f"data.root={data}"]
    summary = hpatches.runner.main(hpatches.BENCHMARK, args)
    assert summary["num_pairs"] == 4 and summary["pairs_matched"] == 4
    assert summary["corner_error_auc@5"] > 0.6
    assert summary["precision@3px"] > 0.7
    out_dir = results / "hpatches" / "sift+nn"
    assert (out_dir / "predictions.h5").is_file() and (out_dir / "summary_opencv_th1.0.json").is_file()
    printed = capsys.readouterr().out
    assert "corner_error_auc@1" in printed and "| sift+nn (opencv_th1.0) |" in printed

    # Re-evaluating with another estimator must not build (let alone run) the pipeline.
    def refuse(*a, **k):
        raise AssertionError("pipeline rebuilt although predictions are cached")

    monkeypatch.setattr(pipeline_module.Pipeline, "from_conf", refuse)
    again = hpatches.runner.main(hpatches.BENCHMARK, args + ["eval.estimator=poselib", "eval.ransac_th=-1"])
    assert again["pairs_from_cache"] == 4 and again["pairs_matched"] == 0
    assert again["ransac_th"] in hpatches.BENCHMARK.sweep
    assert (out_dir / "summary_poselib_thsweep.json").is_file()

    # A model override changes the results folder (and so the cache).
    monkeypatch.undo()
    other = hpatches.runner.main(hpatches.BENCHMARK, args + ["model.extractor.max_num_keypoints=256"])
    assert other["pairs_matched"] == 4 and other["num_keypoints"] <= 256


def test_corrupt_image_is_counted_not_fatal(tmp_path, capsys):
    data = make_hpatches(tmp_path / "data", sequences=("v_synth",))
    (data / "hpatches-sequences-release" / "v_synth" / "3.ppm").write_bytes(b"garbage")
    args = ["--conf", "sift+nn", "--results_root", str(tmp_path / "r"), f"data.root={data}"]
    summary = hpatches.runner.main(hpatches.BENCHMARK, args)
    assert summary["num_pairs"] == 2 and summary["num_load_errors"] == 1
    assert summary["corner_error_auc@5"] <= 0.5  # the unreadable pair is a failure


def test_missing_dataset_error_before_any_model(tmp_path):
    with pytest.raises(Exception, match="hpatches"):
        hpatches.runner.main(hpatches.BENCHMARK, ["--conf", "sift+nn", "--offline",
                                                  f"data.root={tmp_path / 'none'}"])


def test_cli_prints_one_clear_error(tmp_path, capsys):
    assert hpatches.main(["--conf", "sift+nn", "--offline", f"data.root={tmp_path / 'none'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: HPatches is not available") and "Traceback" not in err
    assert sequence.main(["--conf", "sift+nn", "notanoverride"]) == 2
    assert "data.root" in capsys.readouterr().err


def test_eval_typo_raises(tmp_path):
    with pytest.raises(Exception, match="estimatr"):
        hpatches.runner.main(hpatches.BENCHMARK, ["--conf", "sift+nn", f"data.root={tmp_path}",
                                                  "eval.estimatr=poselib"])


def test_sequence_eval_and_inspect(tmp_path, capsys):
    data = make_sequence(tmp_path / "myseq")
    results = tmp_path / "results"
    args = ["--conf", "sift+nn", "--results_root", str(results), f"data.root={data}",
            "data.pairs_from=gaps", "data.gaps=[1,2]", "eval.estimator=poselib"]
    assert sequence.main(args) == 0
    (summary_path,) = (results / "sequence_myseq").glob("sift+nn-*/summary_poselib_th1.0.json")
    summary = json.loads(summary_path.read_text())
    assert summary["num_pairs"] == 5
    assert summary["pose_error_auc@20"] > 0.5
    tag = summary_path.parent.name  # the data overrides (pairs by gaps) are part of the tag
    assert inspect.main(["sequence_myseq", tag, "--results_root", str(results),
                         "--save", str(tmp_path / "inspect"), "--num_pairs", "1"]) == 0
    written = sorted(p.name for p in (tmp_path / "inspect").rglob("*.png"))
    assert "curves.png" in written and "histograms.png" in written and len(written) >= 4
    picture = cv2.imread(str(tmp_path / "inspect" / "curves.png"))
    assert picture is not None and picture.shape[0] > 100


def test_synthetic_homography_eval_uses_held_out_photos(tmp_path):
    from featmatch_core.datasets.homographies import SyntheticHomographies, build_homography_datasets
    from featmatch_core.eval import homographies

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(4):
        cv2.imwrite(str(photos / f"p{i}.png"), random_texture(300, 400, seed=40 + i))
    data = {"root": str(photos), "val_fraction": 0.25, "image_size": [192, 256], "num_pairs": 3}
    dataset = SyntheticHomographies(data)
    _, val = build_homography_datasets({k: v for k, v in data.items() if k != "num_pairs"})
    assert dataset.images == val.images and len(dataset.images) == 1  # exactly the held-out photos
    pair = dataset[0]
    assert pair["image0"].shape == (192, 256) and pair["H_0to1"].shape == (3, 3)
    np.testing.assert_array_equal(dataset[0]["image1"], pair["image1"])  # deterministic

    args = ["--conf", "sift+nn", "--results_root", str(tmp_path / "r")] + [
        f"data.{k}={v}" for k, v in data.items() if k != "image_size"] + ["data.image_size=[192,256]"]
    summary = homographies.runner.main(homographies.BENCHMARK, args)
    assert summary["num_pairs"] == 3 and summary["corner_error_auc@5"] > 0.3
    assert summary["correct@3px"] > 10
    with pytest.raises(Exception, match="image_size"):
        SyntheticHomographies({**data, "resize": 480})
