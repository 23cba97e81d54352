"""Video evaluation: consecutive frames of generated room sequences with exact ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from featmatch_core.config import ConfigError
from featmatch_core.datasets.room import RoomVideoPairs, sequence
from featmatch_core.eval import runner, video
from featmatch_core.geometry.depth import reproject

pytestmark = pytest.mark.timeout(300)

SMALL = {"image_size": [120, 160], "seeds": [4, 5], "num_frames": 4}


def test_pairs_are_consecutive_frames_of_each_seed():
    pairs = RoomVideoPairs(SMALL)
    assert len(pairs) == 6 and pairs.pair_name(4) == "room5_0001_0002"
    item = pairs[4]
    frames = sequence(4, 160, 120, step=0.06, seed=5)  # what the README demo replays, seed 5
    np.testing.assert_array_equal(item["image0"], frames[1].image)
    np.testing.assert_array_equal(item["depth1"], frames[2].depth)
    np.testing.assert_allclose(item["T_0to1"], frames[2].T_cam_world @ np.linalg.inv(frames[1].T_cam_world))
    gap2 = RoomVideoPairs({**SMALL, "gap": 2})
    assert len(gap2) == 4 and gap2.pair_name(3) == "room5_0001_0003"
    for bad, message in (({"gap": 4}, "gap"), ({"seeds": []}, "seeds"), ({"resize": 100}, "image_size")):
        with pytest.raises(ConfigError, match=message):
            RoomVideoPairs({**SMALL, **bad})


def test_depth_and_pose_carry_pixels_onto_the_next_frame():
    pair = RoomVideoPairs(SMALL)[0]
    ys, xs = np.mgrid[10:110:10, 10:150:10]
    points0 = np.stack([xs.ravel(), ys.ravel()], -1).astype(np.float64)
    points1, z1, valid = reproject(points0, pair["depth0"], pair["K0"], pair["K1"], pair["T_0to1"])
    inside = valid & (points1[:, 0] >= 0) & (points1[:, 0] < 159) & (points1[:, 1] >= 0) & (points1[:, 1] < 119)
    assert inside.mean() > 0.8  # consecutive frames overlap almost entirely
    u, v = np.round(points1[inside]).astype(int).T
    np.testing.assert_allclose(pair["depth1"][v, u], z1[inside], rtol=0.05)


def test_video_eval_end_to_end(tmp_path):
    args = ["--conf", "sift+nn", "--results_root", str(tmp_path), "data.image_size=[240,320]", "data.seeds=[4]",
            "data.num_frames=3", "model.extractor.max_num_keypoints=512"]
    summary = runner.main(video.BENCHMARK, args)
    assert summary["num_pairs"] == 2 and summary["depth_missing"] == 0
    assert summary["point_correct"] > 50 and summary["point_precision"] > 0.9
    # 6 cm between frames: the translation direction is ill-conditioned, so no AUC level is asserted
    assert 0 <= summary["pose_error_auc@20"] <= 1 and summary["num_matches"] >= summary["point_correct"]
