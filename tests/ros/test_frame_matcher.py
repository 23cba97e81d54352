"""The ROS-free streaming core: poses on a generated sequence, the worker's drop policy, bad
input, runtime parameters, stereo baseline. Messages are rosbags' ROS 2 Humble types."""

import dataclasses
import threading
import time

import numpy as np
import pytest

from featmatch_core.geometry.epipolar import relative_pose_error
from lightglue_ros import conversions as cv
from lightglue_ros import stages as S
from featmatch_core.datasets import room as synthetic
from featmatch_core.geometry.depth import sample_depth
from lightglue_ros.frame_matcher import FrameMatcher, FrameWorker, StereoMatcher
from lightglue_ros.messages import diagnostics_message, frame_messages

TYPES = cv.rosbags_types()
W, H = 320, 240
FAST = {"max_keypoints": 512}


@pytest.fixture(scope="module")
def frames():
    return synthetic.sequence(6, W, H, step=0.1, seed=1)


def _processed(fm, *args, **kwargs):
    """(plain result, its messages) of one frame."""
    result = fm.process(*args, **kwargs)
    return result, frame_messages(TYPES, result)


def _msgs(frame, frame_id="camera_optical", encoding="mono8", image=None):
    """Image (the frame's, or ``image`` at its stamp), camera_info and depth messages of a frame."""
    header = cv.make_header(TYPES, frame.stamp_ns, frame_id)
    image = frame.image if image is None else image
    image = image if encoding == "mono8" else np.repeat(image[..., None], 3, -1)
    return (
        cv.numpy_to_image(TYPES, image, encoding, header),
        cv.make_camera_info(TYPES, header, W, H, frame.K),
        cv.numpy_to_image(TYPES, frame.depth, "32FC1", header),
    )


POSE_MODELS = {  # the parameters that make each pose model, and its tolerances on this sequence
    # measured: PnP 0.003-0.023 deg, 0.1-1.0 deg, scale within 0.5 %; the homography (a wall
    # fills the view) 0.03-0.1 deg, 1.2-4.2 deg, 2 %; the essential matrix 0.007-0.18 deg, 0.5-7 deg, 2 %
    "pnp": ({}, (0.1, 2.0, 0.01)),
    "planar": ({"pose_from_depth": False}, (0.5, 8.0, 0.05)),
    "essential": ({"pose_from_depth": False, "planar_homography": False}, (2.0, 15.0, 0.15)),
}


@pytest.mark.parametrize("pose_model", list(POSE_MODELS))
def test_sequence_relative_rotations_and_scale(frames, pose_model):
    """With the reference's depth the pose comes from PnP (metric); without, on this room's wall,
    from the homography, or from the essential matrix when that is turned off; the depth scales
    both. All are metric, PnP the closest to the ground truth."""
    params, (max_R, max_t, scale_tol) = POSE_MODELS[pose_model]
    fm = FrameMatcher({**FAST, **params})
    results = []
    for i, frame in enumerate(frames):
        image, info, depth = _msgs(frame, encoding="bgr8" if i % 2 else "mono8")
        results.append(_processed(fm, image, info, depth))
    assert results[0][1].matches is None and results[0][1].odometry is not None  # first frame: reference
    msgs = [m for _, m in results]
    for i in range(1, len(frames)):
        rec = results[i][0].record
        assert rec["success"], rec
        T_gt = frames[i].T_cam_world @ np.linalg.inv(frames[i - 1].T_cam_world)
        err_R, err_t = relative_pose_error(T_gt, rec["T_0to1"][:3, :3], rec["T_0to1"][:3, 3])
        assert err_R < max_R and err_t < max_t, (i, err_R, err_t)
        assert rec["pose_model"] == pose_model
        assert rec["metric_scale"]  # depth of the reference frame gives the scale
        assert np.linalg.norm(rec["T_0to1"][:3, 3]) == pytest.approx(np.linalg.norm(T_gt[:3, 3]), rel=scale_tol)
        # the published messages agree with the record
        pose = cv.pose_from_msg(msgs[i].relative_pose)
        np.testing.assert_allclose(pose, np.linalg.inv(rec["T_0to1"]), atol=1e-9)
        covariance = np.asarray(msgs[i].relative_pose.pose.covariance).reshape(6, 6)
        np.testing.assert_allclose(covariance, covariance.T, atol=1e-15)
        assert np.linalg.eigvalsh(covariance).min() > -1e-15
        step = np.linalg.norm(T_gt[:3, 3])  # the position's standard deviation, against the step
        assert 0 < np.sqrt(np.trace(covariance[:3, :3])) < 0.05 * step
        odometry_variance = np.trace(np.asarray(msgs[i].odometry.pose.covariance).reshape(6, 6))
        assert odometry_variance > np.trace(np.asarray(msgs[i - 1].odometry.pose.covariance).reshape(6, 6))
        assert msgs[i].relative_pose.header.stamp.sec == msgs[i].matches.header.stamp.sec
        points = cv.pointcloud2_to_array(msgs[i].matches)
        assert len(points) == rec["matches"] and points["inlier"].sum() == rec["inliers"]
        info = cv.status_values(msgs[i].matches_info.status[0])
        ref_ns = frames[i - 1].stamp_ns
        assert info["reference_stamp"] == f"{ref_ns // 10**9}.{ref_ns % 10**9:09d}"
        assert info["model"] == "sift+nn" and int(info["inliers"]) == rec["inliers"]
        assert info["pose_model"] == rec["pose_model"] and info["planar_choice"] == rec["planar_choice"]
        # planar: the first pose is the twin nearer to the essential matrix, the next ones the
        # twin nearer to the last motion
        expected_choice = ("essential" if i == 1 else "motion") if pose_model == "planar" else ""
        assert rec["planar_choice"] == expected_choice
    # odometry: trajectory shape matches the ground truth (metric thanks to depth)
    T_w0 = np.linalg.inv(frames[0].T_cam_world)
    for i in (2, len(frames) - 1):
        T_odom_cam = cv.pose_from_msg(msgs[i].odometry)
        T_odom_cam0 = cv.pose_from_msg(msgs[0].odometry)
        est = np.linalg.inv(T_odom_cam0) @ T_odom_cam
        gt = np.linalg.inv(T_w0) @ np.linalg.inv(frames[i].T_cam_world)
        assert np.linalg.norm(est[:3, 3] - gt[:3, 3]) < 0.25 * np.linalg.norm(gt[:3, 3]) + 0.02
    diag = fm.diagnostics()
    assert diag["level"] == "OK" and diag["values"]["frames_processed"] == len(frames)
    assert {
        "latency_p50_ms",
        "latency_p95_ms",
        "keypoints0",
        "matches",
        "inliers",
        "stop_layer",
        "device",
        "gpu_memory_mb",
    } <= set(diag["values"])
    msg = diagnostics_message(TYPES, diag, frames[-1].stamp_ns)
    assert cv.status_level(msg.status[0]) == 0
    debug = msgs[-1].debug_image()
    assert debug is None  # not asked for


def test_a_pose_the_depth_cannot_scale_keeps_the_last_metric_speed(frames):
    """In a depth stream, a frame whose reference has no usable depth (an all-zero image here)
    gets the last metric speed, not a unit translation: 1 m in a metric odometry. A stream that
    never had depth keeps unit-norm translations."""
    fm = FrameMatcher(FAST)
    records = []
    for i, frame in enumerate(frames):
        image, info, depth = _msgs(frame)
        if i == 2:
            depth = cv.numpy_to_image(TYPES, np.zeros_like(frame.depth), "32FC1", depth.header)
        records.append(fm.process(image, info, depth).record)
    unscaled = records[3]  # matched against frame 2, whose depth is empty
    assert unscaled["pose_model"] in ("essential", "planar")  # the room's wall: the homography
    assert not unscaled["metric_scale"] and unscaled["speed_scaled"]
    T_gt = frames[3].T_cam_world @ np.linalg.inv(frames[2].T_cam_world)
    assert np.linalg.norm(unscaled["T_0to1"][:3, 3]) == pytest.approx(np.linalg.norm(T_gt[:3, 3]), rel=0.25)
    assert all(r["metric_scale"] and not r["speed_scaled"] for r in records[1:3] + records[4:])
    mono = FrameMatcher(FAST)
    for frame in frames[:3]:
        record = mono.process(*_msgs(frame)[:2]).record
    assert not record["speed_scaled"] and np.linalg.norm(record["T_0to1"][:3, 3]) == pytest.approx(1.0)


def test_a_camera_turning_on_the_spot_keeps_its_place_in_the_odometry():
    """Monocular, a camera that only turns (3 deg per frame): each pose is a rotation with no
    translation, so the odometry turns with it and stays where it is, instead of taking a
    unit step in a direction the matches do not fix."""
    scene = synthetic.RoomScene(1)
    K = synthetic.default_K(W, H)
    centre = np.array([0.0, 0.0, 0.5])
    fm = FrameMatcher(FAST)
    records, poses = [], []
    for i in range(5):
        T_cam_world = synthetic.camera_pose(synthetic.rotation("y", 3.0 * i) @ synthetic.rotation("x", 1.0 * i), centre)
        image, depth = scene.render(K, T_cam_world, W, H)
        frame = synthetic.SyntheticFrame(image, depth, T_cam_world, K, 1_700_000_000_000_000_000 + i * 100_000_000)
        records.append(fm.process(*_msgs(frame)[:2]).record)
        poses.append(T_cam_world)
    for i in range(1, 5):
        rec = records[i]
        assert rec["pose_model"] == "rotation" and not rec["T_0to1"][:3, 3].any(), rec
        R_gt = (poses[i] @ np.linalg.inv(poses[i - 1]))[:3, :3]
        assert relative_pose_error(np.eye(4), rec["T_0to1"][:3, :3] @ R_gt.T, np.ones(3))[0] < 0.1
    np.testing.assert_allclose(records[-1]["T_odom_cam"][:3, 3], records[0]["T_odom_cam"][:3, 3], atol=1e-12)


@pytest.mark.parametrize("planar_homography", [True, False])
def test_a_camera_at_rest_stays_at_rest_with_the_homography_check(frames, planar_homography):
    """The same view again and again (a robot standing still), monocular: the homography check
    finds a rotation (the identity) with no translation; the essential matrix alone gives a
    unit step in a direction the matches do not fix, and the odometry walks away."""
    fm = FrameMatcher({**FAST, "planar_homography": planar_homography})
    records = []
    for i in range(4):
        still = dataclasses.replace(frames[0], stamp_ns=frames[0].stamp_ns + i * 100_000_000)
        records.append(fm.process(*_msgs(still)[:2]).record)
    travelled = np.linalg.norm(records[-1]["T_odom_cam"][:3, 3] - records[0]["T_odom_cam"][:3, 3])
    if planar_homography:
        assert all(r["pose_model"] == "rotation" for r in records[1:])
        assert all(S.rotation_angle_deg(r["T_0to1"][:3, :3]) < 0.01 for r in records[1:])
        assert travelled == 0.0
    else:
        assert travelled > 1.0  # units: one unit-norm step per frame, in a guessed direction


def test_keyframe_policy_and_debug_image(frames):
    fm = FrameMatcher({**FAST, "keyframe_policy": "keyframe", "keyframe_min_inliers": 5, "keyframe_max_flow": 1000.0})
    out = [_processed(fm, *_msgs(f)[:2], want_debug=True)[1] for f in frames[:4]]
    refs = {cv.status_values(r.matches_info.status[0])["reference_stamp"] for r in out[1:]}
    assert len(refs) == 1  # all matched against the first frame, the keyframe
    image = cv.image_to_numpy(out[-1].debug_image())
    assert image.shape == (H, 2 * W + 10, 3)


def test_bad_input_is_skipped_and_the_node_goes_on(frames, caplog):
    fm = FrameMatcher(FAST)
    image, info, _ = _msgs(frames[0])
    bad = [
        TYPES(
            "sensor_msgs/msg/Image",
            header=image.header,
            height=H,
            width=W,
            encoding=enc,
            is_bigendian=0,
            step=step,
            data=data,
        )
        for enc, step, data in (
            ("nv21", 2 * W, np.zeros(2 * W * H, np.uint8)),  # unknown encoding
            ("mono8", W, np.zeros(W * H // 2, np.uint8)),  # truncated
            ("rgb8", W, np.zeros(3 * W * H, np.uint8)),
        )
    ]  # width/step mismatch
    for msg in bad:
        result, msgs = _processed(fm, msg, info)
        assert result.skipped and result.reason == "bad_encoding" and not msgs.topics()
    assert fm.counts["skipped"] == 3 and fm.diagnostics()["values"]["warnings_bad_encoding"] == 3
    # missing camera_info: uncalibrated, warned once, matches but no pose
    out = [_processed(fm, _msgs(f)[0], None) for f in frames[:3]]
    assert out[1][1].matches is not None and out[1][1].relative_pose is None
    assert "fundamental" in out[1][0].record["message"]
    assert sum("uncalibrated" in r.message for r in caplog.records) == 1
    # a blank frame: zero matches, empty cloud, no pose, WARN
    header = cv.make_header(TYPES, frames[3].stamp_ns, "camera_optical")
    _, blank = _processed(fm, cv.numpy_to_image(TYPES, np.full((H, W), 128, np.uint8), "mono8", header), info)
    assert blank.matches.width == 0 and blank.relative_pose is None
    # a few matches, fewer than min_matches: still an empty cloud, counted in matches_info
    fm.set_params({"min_matches": 100000})
    few, few_msgs = _processed(fm, *_msgs(frames[4])[:2])
    assert few_msgs.matches.width == 0 and few_msgs.relative_pose is None and few.record["matches"] > 0
    assert int(cv.status_values(few_msgs.matches_info.status[0])["matches"]) == few.record["matches"]
    diag = fm.diagnostics()
    assert diag["level"] == "WARN" and diag["values"]["warnings_too_few_matches"] == 2  # the blank and this one


def test_time_going_back_resets_the_state(frames):
    fm = FrameMatcher(FAST)
    for f in frames[:3]:
        fm.process(*_msgs(f))
    assert fm.reference.stamp_ns == frames[2].stamp_ns
    result, msgs = _processed(fm, *_msgs(frames[0]))  # a bag loop
    assert result.record.get("reset") and result.record.get("first")
    assert fm.counts["resets"] == 1 and fm.problems.counts["time_jump"] == 1
    np.testing.assert_allclose(cv.pose_from_msg(msgs.odometry)[:3, 3], 0, atol=1e-12)
    assert fm.process(*_msgs(frames[1])).record["success"]


@pytest.mark.parametrize("period_s, trims", [(0.0, 5), (3600.0, 0)])
def test_free_heap_is_returned_once_per_period(frames, monkeypatch, period_s, trims):
    """By time, not by frame count: a trim stalls the tracking stage for milliseconds."""
    from lightglue_ros import frame_matcher

    assert frame_matcher.trim_heap() is True  # glibc (Linux CI); other C libraries return False
    calls = []
    monkeypatch.setattr(frame_matcher, "TRIM_HEAP_PERIOD_S", period_s)
    monkeypatch.setattr(frame_matcher, "trim_heap", lambda: calls.append(1) or True)
    fm = FrameMatcher(FAST)
    for f in frames[:5]:
        fm.process(*_msgs(f))
    assert len(calls) == trims


def test_runtime_parameters_thresholds_yes_model_no(frames):
    fm = FrameMatcher(FAST)
    fm.process(*_msgs(frames[0]))
    assert fm.estimator.conf.min_iters == 10  # the node's RANSAC floor, below the evaluation's 1000
    ok, reason = fm.set_params({"ransac_threshold": 2.5, "nn_ratio_threshold": 0.7, "ransac_min_iterations": 40})
    assert ok, reason
    fm.process(*_msgs(frames[1]))
    assert fm.estimator.conf.ransac_th == 2.5 and fm.pipeline.matcher.conf.ratio_thresh == 0.7
    assert fm.estimator.conf.min_iters == 40
    for change in ({"matcher": "lightglue"}, {"max_keypoints": 100}, {"device": "cpu"}):
        ok, reason = fm.set_params(change)
        assert not ok and "start-up" in reason
    ok, reason = fm.set_params({"ransac_threshold": -1.0})
    assert not ok and "ransac_threshold" in reason
    assert fm.params["ransac_threshold"] == 2.5


def test_worker_keeps_the_newest_frame_and_counts_drops():
    release = threading.Event()
    seen = []

    def slow(item):
        seen.append(item)
        if item == 0:
            release.wait(5)  # the worker is busy with frame 0 while 1..9 arrive

    worker = FrameWorker(slow, queue_size=1)
    worker.submit(0)
    deadline = time.monotonic() + 5
    while not seen and time.monotonic() < deadline:  # the worker has taken frame 0
        time.sleep(0.001)
    start = time.perf_counter()
    accepted = [worker.submit(i) for i in range(1, 10)]
    assert time.perf_counter() - start < 0.5  # submit never blocks, even with the worker busy
    assert worker.pending == 2  # frame 0 in the worker, only the newest frame waiting
    release.set()
    assert worker.wait_idle(5)
    worker.stop()
    assert seen == [0, 9]  # the newest frame, never an old one
    counters = worker.counters()
    assert counters == {
        "frames_in": 10,
        "frames_processed": 2,
        "frames_dropped": 8,
        "worker_errors": 0,
        "queued": 0,
    }
    assert accepted.count(False) == 8 and accepted[0]


def test_worker_survives_a_failing_frame():
    def handler(item):
        if item == 1:
            raise RuntimeError("boom")

    worker = FrameWorker(handler, queue_size=10)
    for i in range(3):
        worker.submit(i)
    worker.stop(drain=True)
    assert worker.counters()["worker_errors"] == 1 and worker.counters()["frames_processed"] == 3


def test_stereo_recovers_the_calibrated_baseline():
    baseline = 0.12
    left, right, depth, K = synthetic.stereo_pair(baseline, W, H, seed=2)
    header = cv.make_header(TYPES, 123, "left_optical")
    left_info = cv.make_camera_info(TYPES, header, W, H, K)
    right_info = cv.make_camera_info(
        TYPES, header, W, H, K, P=np.hstack([K, [[-K[0, 0] * baseline], [0], [0]]])
    )
    sm = StereoMatcher(FAST)
    result, msgs = _processed(
        sm,
        cv.numpy_to_image(TYPES, left, "mono8", header),
        cv.numpy_to_image(TYPES, right, "mono8", header),
        left_info,
        right_info,
    )
    rec = result.record
    assert rec["level"] == "OK" and rec["points"] > 100 and rec["baseline_m"] == pytest.approx(baseline)
    assert rec["rotation_check_deg"] < 0.5 and rec["baseline_direction_error_deg"] < 2.0
    points = cv.pointcloud2_to_array(msgs.matches)
    keep = points["inlier"].astype(bool)
    z_true = sample_depth(np.stack([points["u0"], points["v0"]], 1), depth, mode="nearest")[0][keep]
    disparity = (points["u0"] - points["u1"])[keep]
    # the baseline the matches imply, given the true depth, reproduces the calibration
    assert np.median(disparity * z_true / K[0, 0]) == pytest.approx(baseline, rel=0.02)
    assert np.median(np.abs(points["z"][keep] / z_true - 1)) < 0.02
    cloud = cv.pointcloud2_to_array(msgs.points)
    assert len(cloud) == rec["points"] and np.isfinite(cloud["z"]).all()
    # without calibration: matches but no 3D, WARN, counted as a calibration problem
    bare, bare_msgs = _processed(
        sm, cv.numpy_to_image(TYPES, left, "mono8", header), cv.numpy_to_image(TYPES, right, "mono8", header)
    )
    assert bare.record["level"] == "WARN" and bare_msgs.points.width == 0 and bare_msgs.matches.width > 0
    assert sm.problems.counts["bad_calibration"] == 1


def test_line_matches_are_published_when_the_matcher_has_lines(frames):
    """A matcher with lines (GlueStick) gets a second cloud, a count in matches_info and the
    segments in the debug image; a point-only matcher publishes no line cloud."""
    fm = FrameMatcher(FAST)
    match_points = fm.stream.match
    lines0 = np.array([[[10, 10], [60, 10]], [[20, 30], [20, 90]]], np.float32)
    lines1 = np.array([[[22, 32], [22, 92]], [[12, 11], [62, 11]], [[5, 5], [5, 6]]], np.float32)

    def match_with_lines(frame0, frame1):
        pred = match_points(frame0, frame1)
        pred.lines0, pred.lines1 = lines0, lines1
        pred.line_matches, pred.line_match_scores = np.array([[0, 1], [1, 0]]), np.array([0.9, 0.6], np.float32)
        return pred

    image, info, _ = _msgs(frames[0])
    assert _processed(fm, image, info)[1].line_matches is None  # first frame
    image, info, _ = _msgs(frames[1])
    assert _processed(fm, image, info)[1].line_matches is None  # point-only matcher
    fm.stream.match = match_with_lines
    image, info, _ = _msgs(frames[2])
    _, result = _processed(fm, image, info, want_debug=True)
    pts = cv.pointcloud2_to_array(result.line_matches)
    np.testing.assert_allclose(np.stack([pts["u0_s"], pts["u1_s"]], 1), [[10, 12], [20, 22]])
    np.testing.assert_allclose(pts["score"], [0.9, 0.6])
    assert (pts["z"] == 1).all()  # bearings: calibrated
    assert result.line_matches.header.stamp == result.matches.header.stamp
    assert cv.status_values(result.matches_info.status[0])["line_matches"] == "2"
    drawn = cv.image_to_numpy(result.debug_image())
    # the matched segment of image 1 (x = 22, y 32..92) is drawn in colour on the right half
    right = drawn[:, W + 10 + 22]
    assert (np.ptp(right[40:80].astype(int), axis=-1) > 50).any()


def test_gluestick_pipeline_end_to_end_publishes_line_matches():
    """matcher: gluestick builds <extractor>+lsd+gluestick (random weights here: no download) and
    its line matches reach the line_matches cloud, consistent with the record."""
    from featmatch_core.models.pipeline import Pipeline, pipeline_conf
    from lightglue_ros import params as P

    values = P.validate("matcher", {"extractor": "superpoint", "matcher": "gluestick", "resize": 0,
                                    "max_keypoints": 256, "filter_threshold": 0.0})
    assert P.pipeline_name(values) == "superpoint+lsd+gluestick"
    pipe = Pipeline.from_conf(pipeline_conf(P.pipeline_name(values), P.model_overrides(values)), pretrained=False)
    fm = FrameMatcher(values, pipeline=pipe)
    assert pipe.matcher.conf.filter_threshold == 0.0  # the node's parameter reached GlueStick
    seq = synthetic.sequence(2, 160, 120, step=0.05, seed=3)
    results = []
    for frame in seq:
        header = cv.make_header(TYPES, frame.stamp_ns, "cam")
        results.append(_processed(fm, cv.numpy_to_image(TYPES, frame.image, "mono8", header),
                                  cv.make_camera_info(TYPES, header, 160, 120, frame.K)))
    rec = results[1][0].record
    assert rec["line_matches"] > 0  # threshold 0: random weights still pair up segments
    pts = cv.pointcloud2_to_array(results[1][1].line_matches)
    assert len(pts) == (rec["line_matches"] if rec["matches"] >= values["min_matches"] else 0)
    assert {"u0_s", "v0_e", "u1_s", "v1_e", "score", "idx0", "idx1"} <= set(pts.dtype.names)


def _with_calibration(info, model, d, k=None):
    info.distortion_model, info.d = model, np.asarray(d, np.float64)
    if k is not None:
        info.k = np.asarray(k, np.float64).reshape(-1)
    return info


def test_camera_info_that_opencv_refuses_never_stops_the_processing(frames):
    """Defect: a plumb_bob camera_info with 3 coefficients (or an empty d) made cv2.undistortPoints
    raise inside process(). Now: checked once per change, padded (pose found) or refused
    (uncalibrated: matches, no pose), counted as bad_calibration, and the next good one is used."""
    fm = FrameMatcher(FAST)
    k_nan = np.array([[np.nan, 0, 160], [0, 256, 120], [0, 0, 1]])
    plan = [
        ("plumb_bob", [1e-4, 0, 0, 0, 0], None, True),  # valid: pose
        ("plumb_bob", [1e-4, 0, 0], None, True),  # 3 coefficients: padded, pose
        ("plumb_bob", [1e-4, 0, 0], None, True),  # the same again: not checked (nor counted) twice
        ("plumb_bob", [], None, True),  # empty d with a model: padded, no distortion
        ("plumb_bob", [], k_nan, False),  # K not finite: refused, uncalibrated
        ("plumb_bob", [0.0] * 5, None, True),  # valid again
    ]
    results = []
    for frame, (model, d, k, _) in zip(frames, plan, strict=True):
        image, info, _ = _msgs(frame)
        results.append(fm.process(image, _with_calibration(info, model, d, k)))
    assert all(r.skipped is None for r in results)
    for result, (_, _, _, calibrated) in zip(results[1:], plan[1:], strict=True):
        assert result.record["calibrated"] == calibrated and result.record["success"] == calibrated
    assert "camera_info refused (K is not finite" in results[4].info.message and results[4].cloud.matches.size
    assert fm.problems.counts["bad_calibration"] == 3  # padded 3, padded empty, refused NaN


@pytest.mark.parametrize("encoding", ["bayer_rggb8", "bayer_gbrg16", "uyvy", "yuyv"])
def test_raw_camera_encodings_are_matched(frames, encoding):
    """Bayer and packed YUV frames, as real drivers publish them, give a pose like mono8 ones."""
    fm = FrameMatcher(FAST)
    results = []
    for frame in frames[:3]:
        gray = frame.image
        if encoding.startswith("bayer_"):
            raw = gray if encoding.endswith("8") else gray.astype(np.uint16) * 257  # a gray scene's mosaic is itself
        else:
            luma, chroma = gray[..., None], np.full(gray.shape + (1,), 128, np.uint8)
            raw = np.concatenate([chroma, luma] if encoding == "uyvy" else [luma, chroma], axis=-1)
        header = cv.make_header(TYPES, frame.stamp_ns, "camera_optical")
        results.append(fm.process(cv.numpy_to_image(TYPES, raw, encoding, header), _msgs(frame)[1]))
    assert fm.counts["skipped"] == 0
    assert all(r.record["success"] and r.record["inliers"] > 50 for r in results[1:])


def test_threshold_parameters_default_to_the_models_own_values(frames):
    """depth/width_confidence and filter_threshold at -2 (the default) keep what the matcher config
    says (calibrated for its weights); an explicit value replaces it, -2 at run time restores it."""
    from featmatch_core.models.pipeline import Pipeline, pipeline_conf
    from lightglue_ros import params as P

    values = P.validate("matcher", {"matcher": "lightglue", "max_keypoints": 256, "resize": 0})
    assert values["depth_confidence"] == values["filter_threshold"] == P.MODEL_VALUE
    conf = pipeline_conf("sift+lightglue-cpu", P.model_overrides(values) + [
        "matcher.depth_confidence=0.97", "matcher.filter_threshold=0.3"])
    pipe = Pipeline.from_conf(conf, pretrained=False)
    fm = FrameMatcher(values, pipeline=pipe)
    fm.process(*_msgs(frames[0]))
    matcher = pipe.matcher.conf
    assert (matcher.depth_confidence, matcher.filter_threshold) == (0.97, 0.3)
    assert fm.set_params({"depth_confidence": 0.9, "filter_threshold": 0.5})[0]
    fm.process(*_msgs(frames[1]))
    assert (matcher.depth_confidence, matcher.filter_threshold) == (0.9, 0.5)
    assert fm.set_params({"depth_confidence": P.MODEL_VALUE})[0]
    fm.process(*_msgs(frames[2]))
    assert (matcher.depth_confidence, matcher.filter_threshold) == (0.97, 0.5)
    # max_layers bounds the depth of the next frames' passes; -2 restores the config's (no bound)
    assert matcher.max_layers is None
    assert fm.set_params({"max_layers": 2, "depth_confidence": -1.0})[0]
    assert fm.process(*_msgs(frames[3])).record["stop_layer"] == 2
    assert fm.set_params({"max_layers": P.MODEL_VALUE_INT})[0]
    assert fm.process(*_msgs(frames[4])).record["stop_layer"] == 6


def test_first_frame_of_each_size_warms_the_extractor_up_on_a_gpu(frames, monkeypatch):
    """On CUDA (``warm_up_new_sizes``) the extractor's graphs are captured before the first frame
    of each image size, once; on CPUs nothing is added to the first frame."""
    fm = FrameMatcher(FAST)
    assert fm.warm_up_new_sizes is False  # this machine: the CPU
    warmed = []
    original = fm.pipeline.warm_up_extractor
    monkeypatch.setattr(fm.pipeline, "warm_up_extractor", lambda h, w: (warmed.append((h, w)), original(h, w)))
    fm.warm_up_new_sizes = True  # as on CUDA
    half = [f.image[::2, ::2].copy() for f in frames[:2]]
    for i, frame in enumerate(frames[:3]):
        image, info, depth = _msgs(frame)
        fm.process(image, info, depth)
        header = cv.make_header(TYPES, frame.stamp_ns + 1, "camera_optical")
        fm.process(cv.numpy_to_image(TYPES, half[i % 2], "mono8", header))
    assert warmed == [(H, W), (H // 2, W // 2)]
    assert fm.pipeline.warmed_sizes == {(H, W), (H // 2, W // 2)}


def test_the_camera_size_warms_the_extractor_up_at_start_up_as_it_will_run(monkeypatch):
    """``warm_up_width`` / ``warm_up_height``: the extractor is warmed up in the constructor, at the
    size it will run the camera's images at: 'resize' (1024) shrinks larger images and leaves a
    320x240 camera as it is, so the warm-up must not run at 1024x768."""
    from featmatch_core.models.pipeline import Pipeline
    from lightglue_ros import params as P

    seen = []
    original = Pipeline.warm_up_extractor
    monkeypatch.setattr(Pipeline, "warm_up_extractor", lambda self, h, w, runs=2: (
        seen.append((h, w, self.extractor.conf.resize)), original(self, h, w, runs))[1])
    fm = FrameMatcher({**FAST, "warm_up_width": W, "warm_up_height": H})
    assert seen == [(H, W, None)] and fm.pipeline.warmed_sizes == {(H, W)}
    fm.warm_up_extractor(H, W)  # warmed already: nothing more
    fm.warm_up_extractor(2000, 1500)  # a larger camera is shrunk to the 'resize' long side
    assert seen == [(H, W, None), (2000, 1500, 1024)]
    with pytest.raises(P.ParamError, match="set both warm_up_width and warm_up_height"):
        FrameMatcher({**FAST, "warm_up_width": W})
