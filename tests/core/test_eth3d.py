"""ETH3D on a generated scene in the official layout: loader, downloader (127.0.0.1), evaluation end to end.

The scene is a textured plane seen by four cameras; images are rendered at "full resolution"
through the plane-induced homographies, depth maps written at 1/2 resolution (the release has
them at 1/8), calibration as COLMAP text with the COLMAP pixel convention.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from featmatch_core.config import ConfigError
from featmatch_core.datasets import eth3d as eth3d_module
from featmatch_core.datasets.base import scaling_matrix
from featmatch_core.datasets.download import DatasetUnavailableError
from featmatch_core.datasets.eth3d import ETH3D, quaternion_to_rotation, read_images
from featmatch_core.datasets.synthetic import random_texture
from featmatch_core.eval import eth3d as eth3d_eval
from featmatch_core.geometry.homography import warp_points
from test_datasets import server  # noqa: F401  (the 127.0.0.1 HTTP server fixture; tests/core is on sys.path)

pytestmark = pytest.mark.timeout(120)

FULL = (480, 320)  # (W, H) of the generated "full resolution" images
FACTOR = 2  # their depth maps are at 1/2 resolution, hence data.downsize_factor=2
PLANE_DEPTH = 4.0  # metres, plane Z = 4 in the frame of camera 0 (= world)
K_FULL = np.array([[400.0, 0, 239.5], [0, 400.0, 159.5], [0, 0, 1]])  # OpenCV convention
# ids of the COLMAP 3D points each image sees: pairs (0,1) 600, (0,2) 550, (1,2) 600 common; image 3 none
POINT_IDS = [range(0, 700), range(100, 800), range(150, 750), range(5000, 5600)]


def _rotation(rx: float, ry: float, rz: float) -> np.ndarray:
    return cv2.Rodrigues(np.array([rx, ry, rz]))[0]


POSES = [(np.eye(3), np.zeros(3)), (_rotation(0.02, -0.06, 0.03), np.array([0.25, 0.02, 0.05])),
         (_rotation(-0.03, 0.05, -0.02), np.array([-0.2, 0.05, -0.1])), (_rotation(0, 0.1, 0), np.array([0.3, 0, 0]))]


def _quaternion(R: np.ndarray) -> np.ndarray:
    """(w, x, y, z) of a rotation with trace > -1 (small rotations)."""
    w = np.sqrt(1.0 + np.trace(R)) / 2
    return np.array([w, (R[2, 1] - R[1, 2]) / (4 * w), (R[0, 2] - R[2, 0]) / (4 * w), (R[1, 0] - R[0, 1]) / (4 * w)])


def plane_homography(R: np.ndarray, t: np.ndarray, K0: np.ndarray, K1: np.ndarray) -> np.ndarray:
    """Pixels of camera 0 to camera (R, t) for the plane Z = PLANE_DEPTH of camera 0."""
    n = np.array([0.0, 0.0, 1.0])
    return K1 @ (R + np.outer(t, n) / PLANE_DEPTH) @ np.linalg.inv(K0)


def plane_depth(R: np.ndarray, t: np.ndarray, K: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Depth (z in the camera) of the plane at every pixel of a camera (R, t) with intrinsics K."""
    n_c = R @ np.array([0.0, 0.0, 1.0])
    d_c = PLANE_DEPTH + n_c @ t
    xs, ys = np.meshgrid(np.arange(size[0]), np.arange(size[1]))
    rays = np.stack([xs, ys, np.ones_like(xs)], -1).astype(np.float64) @ np.linalg.inv(K).T
    return (d_c / (rays @ n_c)).astype(np.float32)


def make_scene(root: Path, scene: str = "courtyard", seed: int = 0) -> Path:
    """One scene folder in the ETH3D_undistorted layout under ``root``."""
    folder = root / scene
    (folder / "images/dslr_images_undistorted").mkdir(parents=True)
    (folder / "dslr_calibration_undistorted").mkdir(parents=True)
    (folder / "ground_truth_depth/undistorted_depth").mkdir(parents=True)
    # the texture seen by camera 0 over a margin, so that the other views see texture everywhere
    margin = 120
    texture = random_texture(FULL[1] + 2 * margin, FULL[0] + 2 * margin, seed)
    shift = np.array([[1.0, 0, margin], [0, 1, margin], [0, 0, 1]])
    small = tuple(s // FACTOR for s in FULL)
    K_small = scaling_matrix(FULL, small) @ K_FULL
    lines = []
    for i, (R, t) in enumerate(POSES):
        name = f"DSC_{i:04d}.JPG"
        H = plane_homography(R, t, K_FULL, K_FULL) @ np.linalg.inv(shift)
        image = cv2.warpPerspective(texture, H, FULL, flags=cv2.INTER_LINEAR)
        assert cv2.imwrite(str(folder / "images/dslr_images_undistorted" / name), cv2.merge([image] * 3),
                           [cv2.IMWRITE_JPEG_QUALITY, 95])
        depth = plane_depth(R, t, K_small, small)
        png = np.round(depth * eth3d_module.DEPTH_SCALE).astype(np.uint16)
        assert cv2.imwrite(str(folder / f"ground_truth_depth/undistorted_depth/DSC_{i:04d}.png"), png)
        q = _quaternion(R)
        observations = " ".join(f"{10.0 + k % 50} {20.0 + k % 30} {pid}" for k, pid in enumerate(POINT_IDS[i]))
        lines += [f"{i + 1} {' '.join(f'{v:.12f}' for v in q)} {' '.join(f'{v:.12f}' for v in t)} {7 + i % 2} "
                  f"dslr_images_undistorted/{name}", observations + " 1.0 2.0 -1"]
    header = ("# Image list with two lines of data per image:\n"
              "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME\n")
    (folder / "dslr_calibration_undistorted/images.txt").write_text(header + "\n".join(lines) + "\n")
    fx, fy, cx, cy = K_FULL[0, 0], K_FULL[1, 1], K_FULL[0, 2] + 0.5, K_FULL[1, 2] + 0.5  # COLMAP convention
    cameras = [f"{cid} PINHOLE {FULL[0]} {FULL[1]} {fx} {fy} {cx} {cy}" for cid in (7, 8)]
    (folder / "dslr_calibration_undistorted/cameras.txt").write_text(
        "# Camera list with one line of data per camera:\n# Number of cameras: 2\n" + "\n".join(cameras) + "\n")
    return folder


@pytest.fixture
def eth3d_root(tmp_path: Path) -> Path:
    root = tmp_path / "eth3d"
    make_scene(root / "ETH3D_undistorted")
    return root


def test_quaternions_and_images_txt(eth3d_root: Path) -> None:
    R = _rotation(0.1, -0.2, 0.3)
    np.testing.assert_allclose(quaternion_to_rotation(_quaternion(R)), R, atol=1e-12)
    frames = read_images(eth3d_root / "ETH3D_undistorted/courtyard/dslr_calibration_undistorted/images.txt")
    assert [f.name for f in frames] == [f"DSC_{i:04d}.JPG" for i in range(4)]
    assert [f.camera_id for f in frames] == [7, 8, 7, 8] and len(frames[1].points3D) == 700
    np.testing.assert_allclose(frames[2].T_cam_world[:3, :3], POSES[2][0], atol=1e-9)


def test_loader_pairs_geometry_and_depth(eth3d_root: Path) -> None:
    ds = ETH3D(root=eth3d_root, downsize_factor=FACTOR)
    assert len(ds) == 3 and [ds.pair_name(i) for i in range(3)] == [
        "courtyard/DSC_0000-DSC_0001", "courtyard/DSC_0000-DSC_0002", "courtyard/DSC_0001-DSC_0002"]
    item = ds[2]
    assert item["covisibility"] == 600 and item["load_error"] is None and item["depth_error"] is None
    assert item["image0"].shape == (160, 240, 3) and item["depth0"].shape == (160, 240)
    # K of the downsized image in OpenCV pixels, T from the two poses: a pixel of image 0 lifted with
    # its depth and projected with K1, T_0to1 lands where the plane homography sends it
    K_small = scaling_matrix(FULL, (240, 160)) @ K_FULL
    np.testing.assert_allclose(item["K0"], K_small, atol=1e-9)
    (R1, t1), (R2, t2) = POSES[1], POSES[2]
    H_full = plane_homography(R2, t2, K_FULL, K_FULL) @ np.linalg.inv(plane_homography(R1, t1, K_FULL, K_FULL))
    S = scaling_matrix(FULL, (240, 160))
    pixels = np.array([[30.0, 40.0], [200.5, 120.25], [120.0, 80.0]])
    z = item["depth0"][pixels[:, 1].astype(int), pixels[:, 0].astype(int)]
    pixels = np.floor(pixels)  # depth is read at integer pixels here
    X0 = z[:, None] * (np.c_[pixels, np.ones(3)] @ np.linalg.inv(item["K0"]).T)
    X1 = X0 @ item["T_0to1"][:3, :3].T + item["T_0to1"][:3, 3]
    projected = X1[:, :2] / X1[:, 2:] * item["K1"][[0, 1], [0, 1]] + item["K1"][:2, 2]
    expected = warp_points(pixels, S @ H_full @ np.linalg.inv(S))
    np.testing.assert_allclose(projected, expected, atol=0.05)  # depth stored at 1/256 m


def test_loader_roots_scenes_and_bad_input(eth3d_root: Path, tmp_path: Path) -> None:
    scene = eth3d_root / "ETH3D_undistorted/courtyard"
    assert len(ETH3D(root=scene, downsize_factor=FACTOR)) == 3  # a single scene folder
    assert len(ETH3D(root=eth3d_root / "ETH3D_undistorted", downsize_factor=FACTOR, min_covisibility=560)) == 2
    with pytest.raises(ConfigError, match="unknown scene"):
        ETH3D(root=eth3d_root, scenes=["office"])
    with pytest.raises(ConfigError, match="downsize_factor"):
        ETH3D(root=eth3d_root, resize=640)
    with pytest.raises(DatasetUnavailableError, match="no pair with at least 100000"):
        ETH3D(root=eth3d_root, min_covisibility=100000)
    with pytest.raises(DatasetUnavailableError, match=r"ETH3D_undistorted\.zip.*\n.*cvg-data"):
        ETH3D(root=tmp_path / "nothing", download=False)
    # depth at the wrong resolution (factor 4 images, factor 2 depth): the pair stays, without depth
    item = ETH3D(root=eth3d_root, downsize_factor=4)[0]
    assert item["depth0"] is None and "downsize_factor 8" in item["depth_error"] and item["load_error"] is None
    (scene / "images/dslr_images_undistorted/DSC_0001.JPG").write_bytes(b"not a jpeg")
    assert "DSC_0001" in ETH3D(root=eth3d_root, downsize_factor=FACTOR)[0]["load_error"]
    (scene / "dslr_calibration_undistorted/cameras.txt").write_text("7 OPENCV 480 320 1 1 1 1 0 0 0 0\n")
    with pytest.raises(ValueError, match="PINHOLE"):
        ETH3D(root=eth3d_root)


def _zip_folder(folder: Path, prefix: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, f"{prefix}/{path.relative_to(folder)}")
    return buffer.getvalue()


def test_downloads_from_the_official_layout(server, tmp_path: Path, monkeypatch) -> None:  # noqa: F811
    import hashlib

    base, files, requests = server
    make_scene(tmp_path / "src")
    files["/SOLD2/ETH3D_undistorted.zip"] = _zip_folder(tmp_path / "src", "ETH3D_undistorted")
    monkeypatch.setattr(eth3d_module, "URL", base + "/SOLD2/ETH3D_undistorted.zip")
    monkeypatch.setattr(eth3d_module, "SHA256", hashlib.sha256(files["/SOLD2/ETH3D_undistorted.zip"]).hexdigest())
    root = tmp_path / "data" / "eth3d"
    assert len(ETH3D(root=root, downsize_factor=FACTOR)) == 3
    assert (root / "ETH3D_undistorted/courtyard/dslr_calibration_undistorted/images.txt").is_file()
    assert len(ETH3D(root=root, downsize_factor=FACTOR)) == 3 and len(requests) == 1  # no second download
    monkeypatch.setattr(eth3d_module, "SHA256", "0" * 64)
    with pytest.raises(ValueError, match="checksum"):
        ETH3D(root=tmp_path / "other", downsize_factor=FACTOR)


def test_eval_sift_nn_end_to_end_point_ap(eth3d_root: Path, tmp_path: Path, capsys) -> None:
    results = tmp_path / "results"
    argv = ["--conf", "sift+nn", "--results_root", str(results), f"data.root={eth3d_root}",
            f"data.downsize_factor={FACTOR}", "model.extractor.resize=null"]
    assert eth3d_eval.main(argv) == 0
    out_dir = next((results / "eth3d").iterdir())
    summary = json.loads((out_dir / "summary_opencv_th1.0.json").read_text())
    assert np.isfinite(summary["point_AP"]) and 20 < summary["point_AP"] <= 100
    assert summary["point_gt_positives"] > 50 and summary["num_pairs"] == 3
    assert "line_AP" not in summary and not any(k.startswith("_") for k in summary)  # sift+nn has no lines
    # The fixture is a plane: the essential matrix of a planar scene is ambiguous (two valid
    # decompositions), so which translation RANSAC picks depends on the order of the matches.
    # The rotation is well determined by it, which checks the estimator's and the ground truth's
    # conventions; the pose AUC only has to be computed.
    assert summary["rotation_error"] < 10 and np.isfinite(summary["pose_error_auc@20"])
    assert summary["point_precision"] > 0.5
    import h5py

    with h5py.File(out_dir / "predictions.h5", "r") as f:  # each depth map cached once, for 3 pairs
        assert sorted(f["maps"]) == [f"courtyard|DSC_000{i}.JPG" for i in range(3)]
    pairs = json.loads((out_dir / "pairs_opencv_th1.0.json").read_text())
    assert not any(k.startswith("_") for k in pairs[0])
    # evaluation again, from the cache only (with other GT thresholds): no matching
    assert eth3d_eval.main(argv + ["eval.pos_th=1.0"]) == 0
    assert "matched 0 pairs" in capsys.readouterr().out


def _line_prediction(item: dict, rng: np.random.Generator, wrong: int) -> dict:
    """Segments of image 0 and their exact images in image 1 (through depth), ``wrong`` of the
    matches permuted and given the lowest scores."""
    from featmatch_core.geometry.depth import reproject

    starts = rng.uniform([20, 20], [200, 130], (20, 2))
    lines0 = np.stack([starts, starts + rng.uniform(-20, 20, (20, 2)) + [25, 10]], 1)
    ends, _, _ = reproject(lines0.reshape(-1, 2), item["depth0"], item["K0"], item["K1"], item["T_0to1"])
    lines1 = np.asarray(ends).reshape(-1, 2, 2)
    matches = np.c_[np.arange(20), np.arange(20)]
    scores = np.linspace(1.0, 0.5, 20)
    if wrong:
        matches[-wrong:, 1] = np.roll(matches[-wrong:, 1], 1)
    kp = np.zeros((0, 2))  # no keypoints at all: the point side must cope (no positive, no crash)
    return {"keypoints0": kp, "keypoints1": kp, "matches": np.zeros((0, 2), np.int64), "scores": np.zeros(0),
            "lines0": lines0, "lines1": lines1, "line_matches": matches, "line_match_scores": scores}


def test_line_ap_from_depth(eth3d_root: Path) -> None:
    from omegaconf import OmegaConf

    item = ETH3D(root=eth3d_root, downsize_factor=FACTOR)[0]
    gt = {k: item[k] for k in ("K0", "K1", "T_0to1", "depth0", "depth1")}
    conf = OmegaConf.create(eth3d_eval.EVAL_CONF)
    rng = np.random.default_rng(0)
    perfect = eth3d_eval.evaluate_eth3d_pair(gt, _line_prediction(item, rng, 0), conf, 1.0)
    assert perfect["line_precision"] == 1.0 and perfect["line_recall"] == 1.0 and perfect["num_line_matches"] == 20
    assert perfect["_point_positives"] == 0 and perfect["num_matches"] == 0
    assert eth3d_eval.aggregate_ap([perfect])["line_AP"] == pytest.approx(100.0)
    rng = np.random.default_rng(0)
    flawed = eth3d_eval.evaluate_eth3d_pair(gt, _line_prediction(item, rng, 4), conf, 1.0)
    assert flawed["line_precision"] == pytest.approx(16 / 20)
    ap = eth3d_eval.aggregate_ap([flawed])["line_AP"]
    assert ap == pytest.approx(100 * 16 / 20)  # the wrong ones score lowest: full precision up to recall 0.8
