"""Image / camera info / point cloud / pose conversions against rosbags' ROS 2 Humble messages."""

import array
import re
from types import SimpleNamespace

import numpy as np
import pytest

from lightglue_ros import conversions as cv
from lightglue_ros.conversions import ENCODINGS, ImageConversionError

TYPES = cv.rosbags_types()
TS = TYPES.typestore


def _sample(encoding, height=5, width=7, seed=0):
    dtype, channels = ENCODINGS[encoding]
    rng = np.random.default_rng(seed)
    shape = (height, width, channels) if channels > 1 else (height, width)
    if dtype == np.float32:
        return rng.normal(size=shape).astype(np.float32)
    return rng.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True).astype(dtype)


def _cdr_round_trip(msg):
    raw = TS.serialize_cdr(msg, msg.__msgtype__)
    return TS.deserialize_cdr(raw, msg.__msgtype__)


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
@pytest.mark.parametrize("padding", [0, 3, 16])
@pytest.mark.parametrize("bigendian", [False, True])
def test_image_round_trip(encoding, padding, bigendian):
    image = _sample(encoding)
    dtype, channels = ENCODINGS[encoding]
    step = image.shape[1] * channels * dtype.itemsize + padding
    header = cv.make_header(TYPES, 1_500_000_123, "cam")
    msg = cv.numpy_to_image(TYPES, image, encoding, header, step=step, bigendian=bigendian)
    assert msg.step == step and len(msg.data) == step * msg.height
    assert msg.is_bigendian == (bigendian and dtype.itemsize > 1)
    msg = _cdr_round_trip(msg)  # a real serialised ROS 2 message
    out = cv.image_to_numpy(msg)
    assert out.dtype == dtype and out.dtype.isnative and out.shape == image.shape
    np.testing.assert_array_equal(out, image)
    assert cv.header_ns(msg) == 1_500_000_123


def test_big_endian_bytes_are_really_swapped():
    image = np.array([[1, 256]], np.uint16)
    msg = cv.numpy_to_image(TYPES, image, "mono16", bigendian=True)
    assert bytes(msg.data) == b"\x00\x01\x01\x00"
    msg_le = cv.numpy_to_image(TYPES, image, "mono16")
    assert bytes(msg_le.data) == b"\x01\x00\x00\x01"


def test_hand_made_padded_big_endian_message():
    """Bytes written by hand, as another system would: 2x2 16UC1, big-endian, step 6 (2 pad bytes)."""
    data = bytes([0, 1, 0, 2, 9, 9, 1, 0, 2, 0, 9, 9])
    msg = TYPES(
        "sensor_msgs/msg/Image",
        header=cv.make_header(TYPES, 0, ""),
        height=2,
        width=2,
        encoding="16UC1",
        is_bigendian=1,
        step=6,
        data=np.frombuffer(data, np.uint8).copy(),
    )
    np.testing.assert_array_equal(cv.image_to_numpy(msg), [[1, 2], [256, 512]])


def test_rclpy_style_array_data_is_accepted():
    """rclpy gives uint8[] as array.array('B'); the last row's padding may be missing."""
    image = _sample("bgr8")
    raw = np.concatenate([image.reshape(5, -1), np.zeros((5, 4), np.uint8)], 1).reshape(-1)[:-4]
    msg = SimpleNamespace(
        height=5,
        width=7,
        encoding="bgr8",
        is_bigendian=0,
        step=7 * 3 + 4,
        data=array.array("B", raw.tobytes()),
    )
    np.testing.assert_array_equal(cv.image_to_numpy(msg), image)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"encoding": "nv21"}, "unsupported image encoding 'nv21'"),
        ({"step": 10}, "step 10 is smaller than width"),
        ({"data": np.zeros(20, np.uint8)}, "truncated image data"),
        ({"height": 0}, "empty image"),
    ],
)
def test_bad_images_are_refused_with_the_reason(change, message):
    msg = cv.numpy_to_image(TYPES, _sample("rgb8"), "rgb8")
    for key, value in change.items():
        setattr(msg, key, value)
    with pytest.raises(ImageConversionError, match=message):
        cv.image_to_numpy(msg)


def test_matcher_input_and_display():
    rgb = _sample("rgb8")
    np.testing.assert_array_equal(cv.to_matcher_image(rgb[..., ::-1], "bgr8"), rgb)
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], -1)
    np.testing.assert_array_equal(cv.to_matcher_image(rgba[..., [2, 1, 0, 3]], "bgra8"), rgb)
    np.testing.assert_array_equal(cv.to_matcher_image(rgba, "rgba8"), rgb)
    f = cv.to_matcher_image(np.array([[np.nan, 2.0], [4.0, 6.0]], np.float32), "32FC1")
    assert f.dtype == np.float32 and f.min() == 0 and f.max() == 1
    assert cv.to_display(np.array([[65535]], np.uint16), "mono16").dtype == np.uint8
    depth = cv.depth_to_metres(np.array([[1500, 0]], np.uint16), "16UC1")
    np.testing.assert_allclose(depth, [[1.5, 0.0]])
    np.testing.assert_array_equal(
        cv.depth_to_metres(np.array([[np.nan, -1, 2, np.inf, -np.inf, 0.5]], np.float32), "32FC1"),
        [[0, 0, 2, 0, 0, 0.5]]
    )


def test_camera_info_K_distortion_and_baseline():
    K = np.array([[500.0, 0, 320], [0, 505, 240], [0, 0, 1]])
    P = np.hstack([K, [[-500 * 0.12], [0], [0]]])
    info = cv.make_camera_info(TYPES, cv.make_header(TYPES, 0, "right"), 640, 480, K, P=P)
    info = _cdr_round_trip(info)
    calibration = cv.calibration_from_camera_info(info)
    np.testing.assert_allclose(calibration.K, K)
    assert calibration.D is None and calibration.note == ""  # plumb_bob, all zero: no distortion
    assert cv.stereo_baseline(info) == pytest.approx(0.12)
    info.d = np.array([0.1, 0, 0, 0, 0])
    np.testing.assert_allclose(cv.calibration_from_camera_info(info).D, [0.1, 0, 0, 0, 0])
    info.k = np.zeros(9)
    assert cv.calibration_from_camera_info(info) is None  # K all zero: the ROS "uncalibrated"
    assert cv.calibration_from_camera_info(None) is None


def test_matches_pointcloud_round_trip():
    kp0 = np.array([[1.5, 2.5], [10, 20], [30, 40]], np.float32)
    kp1 = np.array([[5, 6], [7, 8]], np.float32)
    matches = np.array([[0, 1], [2, 0]])
    xyz = np.array([[0.1, 0.2, 1.0], [0.3, 0.4, 2.0]])
    msg = cv.matches_to_pointcloud2(
        TYPES,
        cv.make_header(TYPES, 5, "cam"),
        kp0,
        kp1,
        matches,
        np.array([0.9, 0.5]),
        xyz=xyz,
        inliers=np.array([True, False]),
    )
    msg = _cdr_round_trip(msg)
    names = [f.name for f in msg.fields]
    assert names[:3] == ["x", "y", "z"]
    assert {"u0", "v0", "u1", "v1", "score", "idx0", "idx1"} <= set(names)
    assert msg.width == 2 and msg.height == 1 and msg.row_step == 2 * msg.point_step
    pts = cv.pointcloud2_to_array(msg)
    np.testing.assert_allclose(pts["u0"], [1.5, 30]), np.testing.assert_allclose(pts["v1"], [8, 6])
    np.testing.assert_array_equal(pts["idx0"], [0, 2]), np.testing.assert_array_equal(pts["idx1"], [1, 0])
    np.testing.assert_allclose(pts["score"], [0.9, 0.5])
    np.testing.assert_allclose(pts["z"], [1, 2]), np.testing.assert_array_equal(pts["inlier"], [1, 0])
    empty = cv.matches_to_pointcloud2(
        TYPES, cv.make_header(TYPES, 5, "cam"), kp0, kp1, np.zeros((0, 2)), np.zeros(0)
    )
    assert _cdr_round_trip(empty).width == 0 and len(cv.pointcloud2_to_array(empty)) == 0


def test_line_matches_pointcloud_round_trip():
    lines0 = np.array([[[0, 1], [10, 11]], [[20, 21], [30, 31]]], np.float32)
    lines1 = np.array([[[5, 6], [7, 8]], [[1, 2], [3, 4]], [[9, 9], [9, 19]]], np.float32)
    msg = cv.line_matches_to_pointcloud2(
        TYPES, cv.make_header(TYPES, 7, "cam"), lines0, lines1, np.array([[1, 2], [0, 1]]), np.array([0.8, 0.3]),
        xyz=np.array([[0.1, 0.2, 1.0], [0.0, 0.0, 1.0]]),
    )
    pts = cv.pointcloud2_to_array(_cdr_round_trip(msg))
    assert [f.name for f in msg.fields][:3] == ["x", "y", "z"] and msg.width == 2
    np.testing.assert_allclose(np.stack([pts["u0_s"], pts["v0_s"], pts["u0_e"], pts["v0_e"]], 1),
                               [[20, 21, 30, 31], [0, 1, 10, 11]])
    np.testing.assert_allclose(np.stack([pts["u1_s"], pts["v1_s"], pts["u1_e"], pts["v1_e"]], 1),
                               [[9, 9, 9, 19], [1, 2, 3, 4]])
    np.testing.assert_array_equal(pts["idx0"], [1, 0]), np.testing.assert_array_equal(pts["idx1"], [2, 1])
    np.testing.assert_allclose(pts["score"], [0.8, 0.3]), np.testing.assert_allclose(pts["x"], [0.1, 0])
    empty = cv.line_matches_to_pointcloud2(
        TYPES, cv.make_header(TYPES, 7, "cam"), np.zeros((0, 2, 2)), lines1, np.zeros((0, 2)), np.zeros(0)
    )
    assert _cdr_round_trip(empty).width == 0 and "u1_e" in cv.pointcloud2_to_array(empty).dtype.names


def test_pose_messages_round_trip():
    rng = np.random.default_rng(1)
    for _ in range(20):
        q = rng.normal(size=4)
        T = np.eye(4)
        T[:3, :3] = cv.quaternion_to_rotation(q)
        T[:3, 3] = rng.normal(size=3)
        header = cv.make_header(TYPES, 7, "odom")
        for msg in (
            cv.pose_stamped(TYPES, header, T),
            cv.pose_with_covariance_stamped(TYPES, header, T, np.eye(6)),
            cv.transform_stamped(TYPES, header, "cam", T),
            cv.odometry(TYPES, header, "cam", T, linear=(1, 2, 3)),
        ):
            np.testing.assert_allclose(cv.pose_from_msg(_cdr_round_trip(msg)), T, atol=1e-9)


def test_diagnostics_serialise():
    status = cv.diagnostic_status(TYPES, "matcher", "WARN", "too few matches", {"matches": 3, "p50": 1.23456})
    msg = _cdr_round_trip(cv.diagnostic_array(TYPES, cv.make_header(TYPES, 1, ""), [status]))
    assert cv.status_level(msg.status[0]) == 1
    assert cv.status_values(msg.status[0]) == {"matches": "3", "p50": "1.23456"}


# ---- camera drivers' raw encodings: Bayer mosaics and packed YUV 4:2:2 -----------------------------
def _mosaic(rgb, pattern):
    """A Bayer mosaic of an RGB image, written by hand: ``pattern`` names the 2x2 cell row by row."""
    raw = np.zeros(rgb.shape[:2], rgb.dtype)
    for k, colour in enumerate(pattern):
        dy, dx = divmod(k, 2)
        raw[dy::2, dx::2] = rgb[dy::2, dx::2, "rgb".index(colour)]
    return raw


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
@pytest.mark.parametrize("bits", [8, 16])
def test_bayer_images_are_demosaiced_to_rgb(pattern, bits):
    dtype = np.uint8 if bits == 8 else np.uint16
    colour = np.array([200, 100, 30]) * (1 if bits == 8 else 256)
    rgb = np.broadcast_to(colour.astype(dtype), (6, 8, 3)).copy()
    encoding = f"bayer_{pattern}{bits}"
    msg = _cdr_round_trip(cv.numpy_to_image(TYPES, _mosaic(rgb, pattern), encoding, bigendian=bits == 16))
    out = cv.to_matcher_image(cv.image_to_numpy(msg), msg.encoding)
    assert out.shape == (6, 8, 3) and out.dtype == dtype
    np.testing.assert_array_equal(out[2:4, 2:6], rgb[2:4, 2:6])  # a flat colour comes back exactly inside
    assert cv.to_display(cv.image_to_numpy(msg), msg.encoding)[3, 3].tolist() == [200, 100, 30]


@pytest.mark.parametrize(
    "encoding, pair",
    [("yuv422", [128, 50, 128, 200]), ("uyvy", [128, 50, 128, 200]), ("yuyv", [50, 128, 200, 128]),
     ("yuv422_yuy2", [50, 128, 200, 128])],
)
def test_packed_yuv422_byte_orders(encoding, pair):
    """Two pixels with neutral chroma (U = V = 128) and luma 50 then 200, in each byte order."""
    data = np.array(pair * 3, np.uint8)  # a 6x1 image: three pixel pairs
    msg = TYPES("sensor_msgs/msg/Image", header=cv.make_header(TYPES, 0, ""), height=1, width=6,
                encoding=encoding, is_bigendian=0, step=12, data=data)
    rgb = cv.to_matcher_image(cv.image_to_numpy(msg), encoding)
    assert rgb.shape == (1, 6, 3)
    assert np.ptp(rgb.astype(int), axis=-1).max() <= 1  # gray: the chroma bytes were read as chroma
    assert rgb[0, 1, 0] - rgb[0, 0, 0] > 120 and rgb[0, 2, 0] == rgb[0, 0, 0]


def test_yuv422_with_an_odd_width_is_refused():
    msg = TYPES("sensor_msgs/msg/Image", header=cv.make_header(TYPES, 0, ""), height=1, width=3,
                encoding="uyvy", is_bigendian=0, step=6, data=np.zeros(6, np.uint8))
    with pytest.raises(ImageConversionError, match="even width"):
        cv.to_matcher_image(cv.image_to_numpy(msg), "uyvy")


# ---- camera_info checks -----------------------------------------------------------------------------
K_GOOD = np.array([[500.0, 0, 320], [0, 505, 240], [0, 0, 1]])


def _info(model="plumb_bob", d=(), k=K_GOOD):
    info = cv.make_camera_info(TYPES, cv.make_header(TYPES, 0, "cam"), 640, 480, np.asarray(k, np.float64))
    info.distortion_model, info.d = model, np.asarray(d, np.float64)
    return _cdr_round_trip(info)


@pytest.mark.parametrize(
    "model, d, expected, note",
    [
        ("plumb_bob", [0.1, -0.05, 0.001], [0.1, -0.05, 0.001, 0, 0], "3 distortion coefficient(s), expected 5"),
        ("plumb_bob", [], None, "0 distortion coefficient(s), expected 5: padded"),
        ("rational_polynomial", [0.1] * 8, [0.1] * 8, ""),
        ("rational_polynomial", [0.1] * 5, [0.1] * 5 + [0, 0, 0], "5 distortion coefficient(s), expected 8"),
        ("equidistant", [0.1, 0.01, 0, 0], [0.1, 0.01, 0, 0], ""),
        ("plumb_bob", [0.1, 0, 0, 0, 0, 0, 0, 0], [0.1, 0, 0, 0, 0], "zero extras dropped"),
        ("", [], None, ""),
        ("fisheye_unknown", [0, 0], None, ""),  # an unknown model without distortion: K alone is fine
    ],
)
def test_distortion_vectors_are_fitted_to_their_model(model, d, expected, note):
    calibration = cv.calibration_from_camera_info(_info(model, d))
    np.testing.assert_allclose(calibration.K, K_GOOD)
    if expected is None:
        assert calibration.D is None
    else:
        np.testing.assert_allclose(calibration.D, expected)
        assert len(calibration.D) == cv.DISTORTION_LENGTHS[model]
    assert note in calibration.note and bool(calibration.note) == bool(note)


@pytest.mark.parametrize(
    "model, d, k, message",
    [
        ("plumb_bob", [0.1] * 6, K_GOOD, "6 distortion coefficients, expected 5, and the extra ones are not zero"),
        ("kannala_brandt", [0.1, 0, 0, 0], K_GOOD, "'kannala_brandt' is not supported"),
        ("plumb_bob", [np.nan, 0, 0, 0, 0], K_GOOD, "not finite"),
        ("plumb_bob", [], [[np.nan, 0, 320], [0, 500, 240], [0, 0, 1]], "K is not finite"),
        ("plumb_bob", [], [[-500, 0, 320], [0, 500, 240], [0, 0, 1]], "fx=-500, fy=500: both must be positive"),
        ("plumb_bob", [], [[500, 0, 320], [0, 500, 240], [0, 0, 0]], "last row 0 0 1"),
    ],
)
def test_unusable_camera_info_is_refused_with_the_reason(model, d, k, message):
    with pytest.raises(cv.CalibrationError, match=re.escape(message)):
        cv.calibration_from_camera_info(_info(model, d, k))


@pytest.mark.parametrize("model, d", [("plumb_bob", [-0.2, 0.05, 0.001, -0.002, 0]),
                                      ("equidistant", [0.05, -0.01, 0.002, 0])])
def test_undistort_points_inverts_the_model(model, d):
    """Ideal pixels distorted by OpenCV's forward model come back through undistort_points."""
    import cv2

    calibration = cv.calibration_from_camera_info(_info(model, d))
    ideal = np.array([[100.0, 80], [320, 240], [600, 400], [50, 450]])
    rays = np.hstack([(ideal - K_GOOD[:2, 2]) / np.diag(K_GOOD)[:2], np.ones((4, 1))]).reshape(-1, 1, 3)
    if model == "equidistant":
        distorted = cv2.fisheye.distortPoints(rays[:, :, :2], K_GOOD, calibration.D)
    else:
        distorted, _ = cv2.projectPoints(rays, np.zeros(3), np.zeros(3), K_GOOD, calibration.D)
    undistorted = cv.undistort_points(distorted.reshape(-1, 2), calibration)
    np.testing.assert_allclose(undistorted, ideal, atol=0.01)  # OpenCV iterates 5 times
