"""make_bag + replay end to end on tiny generated bags (sqlite3 and MCAP), without ROS."""

import gc
import json

import numpy as np
import pytest
from rosbags.highlevel import AnyReader

from lightglue_ros import conversions as cv
from lightglue_ros import make_bag, replay

FAST = ["-p", "max_keypoints=384", "--quiet"]


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    root = tmp_path_factory.mktemp("bags")
    out = {}
    for storage in ("sqlite3", "mcap"):
        path = root / f"room_{storage}"
        assert (
            make_bag.main(
                [
                    str(path),
                    "--synthetic",
                    "4",
                    "--width",
                    "320",
                    "--height",
                    "240",
                    "--step",
                    "0.1",
                    "--storage",
                    storage,
                    "--seed",
                    "3",
                ]
            )
            == 0
        )
        out[storage] = path
    return out


def _read_all(path):
    with AnyReader([path]) as reader:
        topics = {c.topic: c.msgtype for c in reader.connections}
        msgs = {}
        for conn, _, raw in reader.messages():
            msgs.setdefault(conn.topic, []).append(reader.deserialize(raw, conn.msgtype))
    return topics, msgs


def test_make_bag_contents(bags):
    topics, msgs = _read_all(bags["sqlite3"])
    assert topics == {
        "/camera/image_raw": "sensor_msgs/msg/Image",
        "/camera/camera_info": "sensor_msgs/msg/CameraInfo",
        "/camera/depth/image_raw": "sensor_msgs/msg/Image",
        "/ground_truth/pose": "geometry_msgs/msg/PoseStamped",
    }
    assert all(len(v) == 4 for v in msgs.values())
    image = cv.image_to_numpy(msgs["/camera/image_raw"][0])
    assert image.shape == (240, 320) and msgs["/camera/image_raw"][0].encoding == "mono8"
    assert msgs["/camera/depth/image_raw"][0].encoding == "32FC1"
    assert not list(bags["sqlite3"].parent.glob(".*partial*"))  # the temporary bag was renamed
    assert "version: 8" in (bags["sqlite3"] / "metadata.yaml").read_text()
    assert make_bag.main([str(bags["sqlite3"]), "--synthetic", "2"]) == 2  # refuses to overwrite


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_replay_end_to_end(bags, tmp_path, storage, capsys):
    out_dir = tmp_path / "out"
    code = replay.main(
        [str(bags[storage]), "--out-dir", str(out_dir), "--storage", storage, "--debug-images", *FAST]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "relative pose AUC" in text and "latency ms: p50" in text and "throughput" in text
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["frames_processed"] == 4 and summary["pairs_with_gt"] == 3
    assert summary["pose_success_rate"] == 1.0 and summary["pose_models"] == {"pnp": 3}  # the bag has depth
    assert "pose found 100%, 3 by pnp" in text
    assert summary["pose_auc@20"] > 0.5  # synthetic scene: poses are right within a few degrees
    assert summary["trajectory_scale"] == "metric (depth)" and summary["ate_rmse_m"] < 0.05
    for name in ("trajectory.png", "latency.png", "matches.png", "trajectory.tum", "groundtruth.tum"):
        assert (out_dir / name).stat().st_size > 0
    tum = (out_dir / "trajectory.tum").read_text().splitlines()
    assert len(tum) == 4 and len(tum[0].split()) == 8
    # the output bag holds the node's topics and reads back
    topics, msgs = _read_all(out_dir / "out_bag")
    assert topics["/matches"] == "sensor_msgs/msg/PointCloud2"
    assert topics["/odometry"] == "nav_msgs/msg/Odometry"
    assert topics["/relative_pose"] == "geometry_msgs/msg/PoseWithCovarianceStamped"
    assert topics["/ground_truth/pose"] == "geometry_msgs/msg/PoseStamped"
    assert {"/matches_info", "/diagnostics", "/debug_image"} <= set(topics)
    assert len(msgs["/matches"]) == 3 and len(msgs["/odometry"]) == 4
    points = cv.pointcloud2_to_array(msgs["/matches"][0])
    assert len(points) > 50 and {"u0", "v0", "u1", "v1", "score", "idx0", "idx1", "x", "y", "z"} <= set(
        points.dtype.names
    )
    assert np.isfinite(cv.pose_from_msg(msgs["/odometry"][-1])).all()
    assert not list(out_dir.glob(".*partial*"))
    # no CUDA graphs on the CPU: nothing captured while streaming, and no line about it
    assert summary["graph_captures_streaming"] == {"made": 0, "failed": 0, "refused": 0}
    assert summary["graph_capture_frames"] == [] and "CUDA graphs" not in text
    summary.update(graph_captures_streaming={"made": 20, "failed": 1, "refused": 0}, graph_capture_frames=[1, 3],
                   latency_p99_without_capture_frames_ms=12.0)
    assert ("CUDA graphs captured while streaming: 20 made, 1 failed, 0 refused, after frames 1, 3; "
            "latency p99 of the other frames 12.0 ms") in replay.report(summary)


def test_captures_while_streaming_are_counted_and_set_apart():
    """Frames done while the process's capture count rose are listed; the latency p99 of the
    others tells capture spikes from the rest."""
    latencies = [10.0, 11.0, 90.0, 12.0, 80.0, 13.0]
    counts = [3, 3, 5, 5, 8, 8]  # made + failed when each frame was done; 3 after the warm-up
    records = [{"latency_ms": ms, "graph_captures": n} for ms, n in zip(latencies, counts, strict=True)]
    before, after = {"made": 3, "failed": 0, "refused": 0}, {"made": 7, "failed": 1, "refused": 4}
    found = replay.captures_while_streaming(records, before, after)
    assert found["graph_captures_streaming"] == {"made": 4, "failed": 1, "refused": 4}
    assert found["graph_capture_frames"] == [2, 4]
    assert found["latency_p99_without_capture_frames_ms"] == pytest.approx(np.percentile([10, 11, 12, 13], 99))
    first = replay.captures_while_streaming(records[:1], {"made": 1, "failed": 1, "refused": 0}, after)
    assert first["graph_capture_frames"] == [0]  # the first frame captured too
    assert np.isnan(first["latency_p99_without_capture_frames_ms"])


def test_replay_matching_ahead_gives_the_same_poses(bags, tmp_path, capsys):
    """Three stages (``match_ahead``) against two: the same matches and poses, none matched again."""
    summaries = {}
    for choice in ("never", "always"):
        out_dir = tmp_path / choice
        assert replay.main([str(bags["sqlite3"]), "--out-dir", str(out_dir), "--no-plots", "--no-bag",
                            "-p", f"match_ahead={choice}", *FAST]) == 0
        summaries[choice] = json.loads((out_dir / "summary.json").read_text())
    assert "3 stage(s), 0 matched again" in capsys.readouterr().out
    two, three = summaries["never"], summaries["always"]
    assert (two["stages"], three["stages"]) == (2, 3) and three["frames_rematched"] == 0
    for key in ("matches_mean", "inliers_mean", "pose_success_rate", "pose_auc@5", "pose_error_median"):
        assert three[key] == pytest.approx(two[key], abs=1e-9), key


def test_replay_warms_up_at_the_size_it_runs_the_bag_at_and_freezes_the_start_up(bags, tmp_path, monkeypatch):
    """Before the first frame, at the camera_info's size with the node's 'resize' rule applied
    (a 320x240 bag is not enlarged to the extractor's resize, 1024); then the stream runs with
    the start-up objects out of the garbage collector's reach."""
    from featmatch_core.models.pipeline import Pipeline

    seen = []
    original = Pipeline.warm_up_extractor
    monkeypatch.setattr(Pipeline, "warm_up_extractor", lambda self, h, w, runs=2: (
        seen.append((h, w, self.extractor.conf.resize)), original(self, h, w, runs))[1])
    frozen = []
    play = replay.play
    monkeypatch.setattr(replay, "play", lambda *a: (frozen.append(gc.get_freeze_count()), play(*a))[1])
    assert replay.main([str(bags["sqlite3"]), "--out-dir", str(tmp_path), "--no-plots", "--no-bag", *FAST]) == 0
    assert seen == [(240, 320, None)]
    # the stream runs with the start-up objects (the model) frozen, and only the stream
    assert frozen[0] > 10_000 and gc.get_freeze_count() == 0


def test_realtime_loop_drops_and_resets(bags, tmp_path):
    out_dir = tmp_path / "rt"
    args = replay.parse_args(
        [
            str(bags["sqlite3"]),
            "--out-dir",
            str(out_dir),
            "--rate",
            "realtime",
            "--speed",
            "100",
            "--loop",
            "2",
            "--no-plots",
            "--no-bag",
            *FAST,
        ]
    )
    result = replay.run(args)
    s = result.summary
    assert s["frames_read"] == 8
    assert (
        s["frames_processed"] + s["frames_dropped"] == 8 and s["frames_dropped"] > 0
    )  # 1 ms per frame: too fast
    assert s["rss_end_mb"] > 0
    # one largest-RSS figure per pass that processed frames (at most the two loops)
    assert 1 <= len(s["rss_by_loop_mb"]) <= 2 and all(v > 0 for v in s["rss_by_loop_mb"])


def test_lightglue_random_weights_and_gt_tum(bags, tmp_path):
    """LightGlue (untrained weights: the wiring, not the accuracy) and a TUM ground-truth file."""
    out_dir = tmp_path / "lg"
    _, msgs = _read_all(bags["sqlite3"])
    lines = []
    for msg in msgs["/ground_truth/pose"]:
        T = cv.pose_from_msg(msg)
        q = cv.rotation_to_quaternion(T[:3, :3])
        lines.append(f"{cv.header_ns(msg) / 1e9:.9f} " + " ".join(map(str, [*T[:3, 3], *q])))
    (tmp_path / "gt.tum").write_text("\n".join(lines) + "\n")
    code = replay.main(
        [
            str(bags["sqlite3"]),
            "--conf",
            "sift+lightglue",
            "matcher.weights=null",
            "--gt-tum",
            str(tmp_path / "gt.tum"),
            "--out-dir",
            str(out_dir),
            "--no-plots",
            "--no-bag",
            "--quiet",
            "-p",
            "max_keypoints=128",
            "--max-frames",
            "3",
        ]
    )
    assert code == 0
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["model"] == "sift+lightglue" and summary["pairs_with_gt"] == 2


def test_clear_errors_for_missing_topics_and_bad_bags(bags, tmp_path, capsys):
    assert (
        replay.main([str(bags["sqlite3"]), "--image-topic", "/nope", "--out-dir", str(tmp_path / "x")]) == 2
    )
    err = capsys.readouterr().err
    assert "'/nope' is not in the bag" in err and "/camera/image_raw  [sensor_msgs/msg/Image]" in err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metadata.yaml").write_text("not: [a bag")
    assert replay.main([str(broken), "--out-dir", str(tmp_path / "y")]) == 2
    assert "cannot read bag" in capsys.readouterr().err
    assert replay.main([str(tmp_path / "missing"), "--out-dir", str(tmp_path / "z")]) == 2
    assert "bag not found" in capsys.readouterr().err


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_bag_damaged_midway_is_a_clear_error(bags, tmp_path, storage, capsys):
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(bags[storage], damaged)
    data = next(p for p in damaged.iterdir() if p.suffix in (".db3", ".mcap"))
    blob = bytearray(data.read_bytes())
    third = len(blob) // 3
    if storage == "sqlite3":
        blob[third : 2 * third] = bytes(third)  # zeroed pages in the middle of the database
    else:
        del blob[2 * third :]  # a recording cut short: no MCAP footer
    data.write_bytes(bytes(blob))
    assert replay.main([str(damaged), "--out-dir", str(tmp_path / "out"), *FAST]) == 2
    err = capsys.readouterr().err
    assert "damaged" in err or "cannot read bag" in err
    assert "Traceback" not in err


def test_ros1_bag_is_read(bags, tmp_path):
    from rosbags.convert import convert

    ros1 = tmp_path / "room.bag"
    convert(
        [bags["sqlite3"]],
        ros1,
        dst_storage="sqlite3",
        dst_version=None,
        compress=None,
        compress_mode="file",
        default_typestore=None,
        typestore=None,
        exclude_topics=(),
        include_topics=(),
        exclude_msgtypes=(),
        include_msgtypes=(),
    )
    args = replay.parse_args([str(ros1), "--out-dir", str(tmp_path / "r1"), "--no-plots", "--no-bag", *FAST])
    summary = replay.run(args).summary
    assert summary["frames_processed"] == 4 and summary["pairs_with_gt"] == 3


def test_make_bag_from_folders_video_and_tum(tmp_path):
    import cv2

    from featmatch_core.datasets import room as synthetic

    frames = synthetic.sequence(3, 160, 120, seed=6)
    # a TUM RGB-D folder: rgb/ depth/ (16-bit PNG, 5000 per metre), rgb.txt depth.txt groundtruth.txt
    tum = tmp_path / "tum"
    (tum / "rgb").mkdir(parents=True)
    (tum / "depth").mkdir()
    rgb, depth, gt = ["# rgb"], ["# depth"], ["# groundtruth"]
    for i, f in enumerate(frames):
        t = 100 + i * 0.1
        cv2.imwrite(str(tum / "rgb" / f"{t:.6f}.png"), cv2.cvtColor(f.image, cv2.COLOR_GRAY2BGR))
        cv2.imwrite(str(tum / "depth" / f"{t:.6f}.png"), (f.depth * 5000).astype(np.uint16))
        rgb.append(f"{t:.6f} rgb/{t:.6f}.png")
        depth.append(f"{t + 0.001:.6f} depth/{t:.6f}.png")
        T = np.linalg.inv(f.T_cam_world)
        q = cv.rotation_to_quaternion(T[:3, :3])
        gt.append(f"{t:.6f} " + " ".join(map(str, [*T[:3, 3], *q])))
    for name, lines in (("rgb.txt", rgb), ("depth.txt", depth), ("groundtruth.txt", gt)):
        (tum / name).write_text("\n".join(lines) + "\n")
    assert make_bag.main([str(tmp_path / "tum_bag"), "--tum", str(tum), "--K", "128,128,79.5,59.5"]) == 0
    topics, msgs = _read_all(tmp_path / "tum_bag")
    assert len(msgs["/camera/image_raw"]) == 3 and msgs["/camera/image_raw"][0].encoding == "bgr8"
    d = cv.image_to_numpy(msgs["/camera/depth/image_raw"][1])
    np.testing.assert_allclose(d[frames[1].depth > 0], frames[1].depth[frames[1].depth > 0], atol=1e-3)
    np.testing.assert_allclose(
        cv.pose_from_msg(msgs["/ground_truth/pose"][2]), np.linalg.inv(frames[2].T_cam_world), atol=1e-6
    )
    np.testing.assert_allclose(np.asarray(msgs["/camera/camera_info"][0].k).reshape(3, 3)[0], [128, 0, 79.5])
    # an image folder and a video: images only (camera_info with --K)
    assert (
        make_bag.main(
            [
                str(tmp_path / "folder_bag"),
                "--images",
                str(tum / "rgb"),
                "--fps",
                "5",
                "--encoding",
                "mono8",
                "--storage",
                "mcap",
            ]
        )
        == 0
    )
    topics, msgs = _read_all(tmp_path / "folder_bag")
    assert set(topics) == {"/camera/image_raw"} and len(msgs["/camera/image_raw"]) == 3
    stamps = [cv.header_ns(m) for m in msgs["/camera/image_raw"]]
    assert stamps[1] - stamps[0] == 200_000_000
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (160, 120))
    if not writer.isOpened():
        pytest.skip("this OpenCV build cannot write MJPG video")
    for f in frames:
        writer.write(cv2.cvtColor(f.image, cv2.COLOR_GRAY2BGR))
    writer.release()
    assert (
        make_bag.main([str(tmp_path / "video_bag"), "--video", str(video), "--K", "128,128,79.5,59.5"]) == 0
    )
    topics, msgs = _read_all(tmp_path / "video_bag")
    assert len(msgs["/camera/image_raw"]) == 3 and len(msgs["/camera/camera_info"]) == 3
