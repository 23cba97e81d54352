"""The held-out rendered-scene benchmark (eval.scenes) and the post-hoc match score filter."""


import numpy as np
import pytest

from featmatch_core.config import ConfigError
from featmatch_core.datasets.scenes import SceneEvalPairs
from featmatch_core.eval import hpatches, runner, scenes
from featmatch_core.geometry.depth import reproject
from test_eval import make_hpatches

pytestmark = pytest.mark.timeout(300)

SMALL = {"image_size": [192, 256], "num_pairs": 3}


def test_scene_pairs_are_deterministic_and_first_pair_offsets_seeds():
    pairs = SceneEvalPairs(SMALL)
    a, again = pairs[1], SceneEvalPairs(SMALL)[1]
    assert a["name"] == "scene_00001" and a["image0"].shape == (192, 256)
    np.testing.assert_array_equal(a["image0"], again["image0"])
    shifted = SceneEvalPairs({**SMALL, "first_pair": 1})
    assert shifted.pair_name(0) == "scene_00001"
    np.testing.assert_array_equal(shifted[0]["image1"], a["image1"])  # same seed, same pair
    assert not np.array_equal(shifted[1]["image1"], a["image1"])
    with pytest.raises(ConfigError, match="first_pair"):
        SceneEvalPairs({**SMALL, "first_pair": -1})


def test_scene_depth_and_pose_agree():
    """The ground truth the benchmark scores against: depth0 + pose carry pixels onto depth1's surface."""
    pair = SceneEvalPairs(SMALL)[0]
    ys, xs = np.mgrid[20:172:16, 20:236:16]
    points0 = np.stack([xs.ravel(), ys.ravel()], -1).astype(np.float64)
    points1, z1, valid = reproject(points0, pair["depth0"], pair["K0"], pair["K1"], pair["T_0to1"])
    h, w = pair["depth1"].shape
    inside = valid & (points1[:, 0] >= 0) & (points1[:, 0] < w - 1) & (points1[:, 1] >= 0) & (points1[:, 1] < h - 1)
    assert inside.sum() > 20
    u, v = np.round(points1[inside]).astype(int).T
    seen = pair["depth1"][v, u]
    visible = np.abs(seen - z1[inside]) < 0.05 * z1[inside]  # not hidden by an occluder
    assert visible.mean() > 0.5


def test_narrow_baseline_pairs_are_small_steps_and_leave_other_recipes_alone():
    from featmatch_core.datasets.scenes import render_scene_pair, scene_conf

    small = {"image_size": [96, 128]}
    narrow = scene_conf({**small, "camera": {"narrow_baseline_prob": 1.0, "narrow_step": [0.05, 0.1]}})
    for seed in range(4):
        T = render_scene_pair(seed, narrow).T_0to1
        # camera 0's centre seen from camera 1: |t| is the distance between the centres
        assert 0.05 - 1e-9 <= np.linalg.norm(T[:3, 3]) <= 0.1 + 1e-9
        angle = np.degrees(np.arccos(np.clip((np.trace(T[:3, :3]) - 1) / 2, -1, 1)))
        assert angle <= 3.0 * np.sqrt(3) + 1e-6
    # prob 0 (the default) draws nothing more: the pairs of earlier recipes are unchanged
    default, explicit = scene_conf(small), scene_conf({**small, "camera": {"narrow_baseline_prob": 0.0,
                                                                             "narrow_step": [1, 2]}})
    for seed in range(2):
        np.testing.assert_array_equal(render_scene_pair(seed, default).T_0to1,
                                      render_scene_pair(seed, explicit).T_0to1)
    assert np.linalg.norm(render_scene_pair(0, default).T_0to1[:3, 3]) > 0.3  # orbits are wide
    with pytest.raises(ConfigError, match=r"narrow_baseline_prob must be in \[0, 1\]"):
        scene_conf({"camera": {"narrow_baseline_prob": 1.5}})


def test_scenes_eval_end_to_end(tmp_path):
    args = ["--conf", "sift+nn", "--results_root", str(tmp_path), *(f"data.{k}={v}" for k, v in SMALL.items()),
            "model.extractor.max_num_keypoints=512"]
    summary = runner.main(scenes.BENCHMARK, [a.replace("[192, 256]", "[192,256]") for a in args])
    assert summary["num_pairs"] == 3 and summary["depth_missing"] == 0
    assert summary["point_correct"] > 5 and 0 < summary["point_precision"] <= 1
    assert 0 <= summary["pose_error_auc@20"] <= 1 and summary["num_matches"] >= summary["point_correct"]


def test_min_score_filter_equals_a_higher_matcher_threshold(tmp_path):
    """LightGlue keeps mutual best matches scored above filter_threshold: exporting at 0.01 and
    evaluating with eval.min_score=0.5 gives exactly the export at 0.5."""
    data = make_hpatches(tmp_path / "data", sequences=("v_synth",), n_images=2)
    common = ["--conf", "sift+lightglue-cpu", "--results_root", str(tmp_path / "r"), f"data.root={data}",
              "model.extractor.max_num_keypoints=256"]
    low = runner.main(hpatches.BENCHMARK, common + ["model.matcher.filter_threshold=0.01", "eval.min_score=0.5"])
    high = runner.main(hpatches.BENCHMARK, common + ["model.matcher.filter_threshold=0.5"])
    unfiltered = runner.main(hpatches.BENCHMARK, common + ["model.matcher.filter_threshold=0.01"])
    assert low["num_matches"] == high["num_matches"] < unfiltered["num_matches"]
    assert low["correct@3px"] == high["correct@3px"] and low["corner_error_auc@5"] == high["corner_error_auc@5"]
    # a pass stopped at layer 3 with exit_filter_factors: the filter is scaled there, in both ways
    stopped = ["model.matcher.max_layers=3", "model.matcher.exit_filter_factors=[1,1,0.2,1,1]"]
    low3 = runner.main(hpatches.BENCHMARK, common + stopped + ["model.matcher.filter_threshold=0.01",
                                                                "eval.min_score=0.5"])
    high3 = runner.main(hpatches.BENCHMARK, common + stopped + ["model.matcher.filter_threshold=0.5"])
    strict3 = runner.main(hpatches.BENCHMARK, common + ["model.matcher.max_layers=3",
                                                        "model.matcher.filter_threshold=0.5"])
    assert low3["stop_layer"] == 3 and low3["num_matches"] == high3["num_matches"] > strict3["num_matches"]
    written = sorted(p.name for p in (tmp_path / "r" / "hpatches").rglob("summary_*.json"))
    assert any("score0.5" in name for name in written)  # the filtered summary does not overwrite the other
    with pytest.raises(ConfigError, match="min_scor"):
        runner.build_conf(hpatches.BENCHMARK, "sift+nn", ["eval.min_scor=0.5"])
    # the layers LightGlue ran and its own time reach the summary
    full = runner.main(hpatches.BENCHMARK, common + ["model.matcher.depth_confidence=-1"])
    assert full["stop_layer"] == 6 and 1 <= unfiltered["stop_layer"] <= 6
    assert 0 < unfiltered["match_ms"] < unfiltered["time_ms"]


def test_keep_scores_above_keeps_pairs_aligned():
    pred = {"matches": np.array([[0, 3], [1, 1], [2, 0]]), "scores": np.array([0.9, 0.1, 0.6])}
    kept = runner.keep_scores_above(pred, 0.5)
    np.testing.assert_array_equal(kept["matches"], [[0, 3], [2, 0]])
    np.testing.assert_array_equal(kept["scores"], [0.9, 0.6])
    assert runner.keep_scores_above(pred, 0.0) is pred
