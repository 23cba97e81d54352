"""MegaDepth training data: layout, overlap sampling, depth ground truth, feature caching, errors.

The data is a generated plane scene in the MegaDepth layout (no download, no ../shared).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from featmatch_core.config import ConfigError
from featmatch_core.datasets.base import scaling_matrix
from featmatch_core.datasets.megadepth_train import (
    MegaDepthPairs,
    MegaDepthUnavailableError,
    build_megadepth_datasets,
    read_scene_list,
    spread_quota,
    write_synthetic_megadepth,
)
from featmatch_core.geometry.homography import warp_points
from featmatch_core.scripts import export_megadepth
from featmatch_core.train.two_view import TwoViewModel

SCENES = {"0001": (6, (160, 120)), "0002": (6, (120, 160)), "0003": (4, (160, 120))}
FEATURES = {"name": "sift", "max_num_keypoints": 128, "resize": None}
MATCHER = {"name": "lightglue", "features": "sift", "weights": None, "n_layers": 2}


@pytest.fixture(scope="module")
def megadepth(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    truth = write_synthetic_megadepth(root, SCENES, unusable={"0001": [5]})
    return root, truth


def data_conf(root, **kw):
    return {"root": str(root), "resize": 128, "train_split": ["0001", "0002"], "val_split": ["0003"],
            "train_num_per_scene": 3, "val_num_per_scene": 2, "min_overlap": 0.1, "max_overlap": 0.9,
            "features": dict(FEATURES), **kw}


def plane_homography(truth, scene, i, j, size0, size1):
    """Image i -> image j of the plane Z = d, in resized pixels (independent of the dataset code)."""
    K, poses = truth[scene]["K"], truth[scene]["poses"]
    normal, d = truth[scene]["plane"]
    T = poses[j] @ np.linalg.inv(poses[i])
    n_i = poses[i][:3, :3] @ normal  # plane in camera i: n_i . X = d_i
    d_i = d + n_i @ poses[i][:3, 3]
    H = K @ (T[:3, :3] + np.outer(T[:3, 3], n_i) / d_i) @ np.linalg.inv(K)
    orig = SCENES[scene][1]
    return scaling_matrix(orig, size1) @ H @ np.linalg.inv(scaling_matrix(orig, size0))


def test_layout_loads_with_views_intrinsics_and_poses(megadepth):
    root, truth = megadepth
    every = {"resize": 128, "num_per_scene": None, "min_overlap": 0.0, "max_overlap": 1.0}
    pairs = MegaDepthPairs({"root": str(root), "scenes": ["0001", "0002"], **every})
    assert len(pairs) == 10 + 15  # 5 usable views (view 5 has no depth) and 6
    same = MegaDepthPairs({"root": str(root / "megadepth"), "scenes": ["0001", "0002"], **every})
    assert same.items == pairs.items  # root may be the megadepth folder itself
    for index in range(len(pairs)):
        item = pairs[index]
        scene = item["scene"]
        assert item["load_error"] is None and item["depth_error"] is None
        assert 5 not in [int(n[4:7]) for n in (item["image_name0"], item["image_name1"])] or scene != "0001"
        assert max(item["image_size0"]) == 128 and item["image0"].shape[:2] == item["depth0"].shape
        # COLMAP K of the file, converted to OpenCV pixels and scaled with the image
        S = scaling_matrix(SCENES[scene][1], item["image_size0"])
        np.testing.assert_allclose(item["K0"], S @ truth[scene]["K"], atol=1e-9)
    i, j = (int(item[f"image_name{k}"][4:7]) for k in (0, 1))
    poses = truth[item["scene"]]["poses"]
    np.testing.assert_allclose(item["T_0to1"], poses[j] @ np.linalg.inv(poses[i]), atol=1e-9)


def test_overlap_sampling_range_reproducible_and_resampled(megadepth):
    root, _ = megadepth
    conf = {"root": str(root), "scenes": ["0001", "0002"], "num_per_scene": 3, "min_overlap": 0.5,
            "max_overlap": 0.8, "num_overlap_bins": 2, "seed": 3}
    pairs, again = MegaDepthPairs(conf), MegaDepthPairs(conf)
    epochs = []
    for epoch in range(4):
        pairs.set_epoch(epoch)
        again.set_epoch(epoch)
        assert pairs.items == again.items  # same seed and epoch: same pairs
        assert len(pairs) == 6  # a fixed number per scene, every epoch
        for scene, i, j, overlap in pairs.items:
            assert 0.5 <= overlap <= 0.8 and i != j and not (scene == "0001" and 5 in (i, j))
        epochs.append(list(pairs.items))
    assert len({tuple(e) for e in epochs}) > 1  # resampled across epochs
    pairs.set_epoch(1)
    assert pairs.items == epochs[1]
    other = MegaDepthPairs({**conf, "seed": 4})
    assert other.items != epochs[0]


def test_spread_quota_and_scene_lists():
    assert spread_quota(5, [10, 1, 10]) == [2, 1, 2]
    assert spread_quota(7, [0, 0, 3]) == [0, 0, 3]
    assert spread_quota(4, [2, 2, 2]) == [2, 1, 1]
    train, val = read_scene_list("train_scenes_clean.txt"), read_scene_list("valid_scenes_clean.txt")
    assert len(train) == 153 and val == ["0015", "0022"] and not set(train) & set(val)
    with pytest.raises(ConfigError, match="quote them"):
        read_scene_list([15, 22])


def test_depth_ground_truth_labels_correct_matches(megadepth):
    root, truth = megadepth
    train, _ = build_megadepth_datasets(data_conf(root, train_split=["0002"], train_num_per_scene=4,
                                                  min_overlap=0.3))
    batch = default_collate([train[k] for k in range(len(train))])
    assert batch["depth0"].shape[-2:] == (128, 128)  # portrait 96x128 views padded to a square
    gt = TwoViewModel({"matcher": MATCHER, "pretrained": False}).ground_truth(batch)
    positives = 0
    for b, (scene, i, j, _) in enumerate(train.pairs.items):
        sizes = [tuple(int(v) for v in batch[f"image_size{k}"][b]) for k in (0, 1)]
        H = torch.from_numpy(plane_homography(truth, scene, i, j, *sizes))
        kpts0, kpts1 = batch["keypoints0"][b].double(), batch["keypoints1"][b].double()
        labels, valid = gt["gt_matches0"][b], batch["keypoint_mask0"][b]
        true_proj = warp_points(kpts0, H)
        # the depth-based reprojection is the plane's homography
        visible = gt["visible0"][b]
        assert (gt["proj_0to1"][b][visible].double() - true_proj[visible]).norm(dim=-1).max() < 0.1
        pos = labels >= 0
        positives += int(pos.sum())
        err = (true_proj[pos] - kpts1[labels[pos]]).norm(dim=-1)
        assert err.max() < 3.0
        # landing clearly outside image 1 (also in its padding on the right): unmatchable, not unknown
        w, h = sizes[1]
        far = ((true_proj[:, 0] < -3) | (true_proj[:, 0] > w + 2) | (true_proj[:, 1] < -3)
               | (true_proj[:, 1] > h + 2)) & valid
        assert (labels[far] == -1).all()
        assert (labels[~valid] == -2).all()
    assert positives > 40


def test_export_then_load_features_equals_extraction(megadepth, tmp_path, capsys):
    root, _ = megadepth
    out = tmp_path / "features"
    args = ["--method", "sift", "--data_root", str(root), "--out", str(out), "--resize", "128",
            "--max_num_keypoints", "128", "--scenes", "0001", "0002", "0003", "--num_workers", "1",
            "--device", "cpu"]
    assert export_megadepth.main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["0001.h5", "0002.h5", "0003.h5"]  # no temporaries
    on_the_fly = build_megadepth_datasets(data_conf(root))
    cached = build_megadepth_datasets(data_conf(root, load_features={"do": True, "path": str(out)}))
    for live, stored in zip(on_the_fly, cached, strict=True):
        stored._extractor = "must not be used"  # a cache never extracts
        assert len(live) == len(stored)
        for index in range(len(live)):
            a, b = live[index], stored[index]
            assert a.keys() == b.keys()
            for key in a:
                assert torch.equal(a[key], b[key]), key
    mtime = (out / "0001.h5").stat().st_mtime_ns
    assert export_megadepth.main(args) == 0  # existing scenes are skipped
    assert (out / "0001.h5").stat().st_mtime_ns == mtime and "0 scene(s) exported" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="max_num_keypoints: file 128 vs config 64"):
        build_megadepth_datasets(data_conf(root, features={**FEATURES, "max_num_keypoints": 64},
                                           load_features={"do": True, "path": str(out)}))
    (out / "0002.h5").unlink()
    with pytest.raises(MegaDepthUnavailableError, match="0002.h5"):
        build_megadepth_datasets(data_conf(root, load_features={"do": True, "path": str(out)}))


def test_missing_dataset_says_where_to_put_it(tmp_path):
    with pytest.raises(MegaDepthUnavailableError) as info:
        build_megadepth_datasets(data_conf(tmp_path / "nowhere"))
    message = str(info.value)
    assert "FEATMATCH_OFFLINE" in message and str(tmp_path / "nowhere" / "megadepth") in message
    for part in ("Undistorted_SfM", "depth_undistorted", "scene_info"):
        assert f"https://cvg-data.inf.ethz.ch/megadepth/{part}.tar.gz" in message
        assert f"put {part}.tar.gz at {tmp_path / 'nowhere' / part}.tar.gz" in message
    assert isinstance(info.value, FileNotFoundError)  # the training command prints it as an error
    with pytest.raises(MegaDepthUnavailableError, match="download=false"):
        build_megadepth_datasets(data_conf(tmp_path / "nowhere", download=False))


def test_bad_config_fails_before_reading(megadepth):
    root, _ = megadepth
    with pytest.raises(ConfigError, match="min_overlaps"):
        build_megadepth_datasets(data_conf(root, min_overlaps=0.2))
    with pytest.raises(ConfigError, match="unknown extractor 'sfit'"):
        build_megadepth_datasets(data_conf(root, features={"name": "sfit"}))
    with pytest.raises(ConfigError, match="max_num_keypoints must be a positive integer"):
        build_megadepth_datasets(data_conf(root, features={"name": "sift", "max_num_keypoints": None}))
    with pytest.raises(ConfigError, match="needs data.load_features.path"):
        build_megadepth_datasets(data_conf(root, load_features={"do": True}))
    with pytest.raises(ConfigError, match="no scene list 'missing.txt'"):
        build_megadepth_datasets(data_conf(root, train_split="missing.txt"))
