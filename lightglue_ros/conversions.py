"""Messages <-> numpy, without ROS: images, camera info, matches, point clouds, poses, diagnostics.

Every function takes and returns message objects by their ROS field names, so the same code
serves the rclpy nodes (``rclpy`` message classes) and the bag tools (``rosbags`` message
classes). Messages are built through a ``MessageTypes`` factory: ``rosbags_types()`` for the
bag tools and tests, ``RclpyTypes()`` in the nodes (it only imports the ``*_msgs`` packages).

Image encodings (REP 104 names): mono8, mono16, rgb8, bgr8, rgba8, bgra8, 8UC1, 8UC3, 8UC4,
16UC1, 32FC1, the Bayer mosaics bayer_rggb8/bggr8/gbrg8/grbg8 and their 16-bit forms
(demosaiced by OpenCV), and packed YUV 4:2:2 (yuv422 = uyvy, yuyv = yuv422_yuy2; converted to
RGB by OpenCV); rows may be padded (``step`` > width * bytes per pixel) and multi-byte data may
be big-endian (``is_bigendian``). Anything else raises ``ImageConversionError`` with the reason.

Camera info: ``calibration_from_camera_info`` checks K and the distortion vector against the
distortion model (plumb_bob 5, rational_polynomial 8, equidistant 4 coefficients) and says
why it refuses one (``CalibrationError``).

Poses: 4x4 matrices ``T_a_b`` (points of frame b to frame a) <-> ``geometry_msgs`` with
quaternions (x, y, z, w).
"""

from __future__ import annotations

import array
import importlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np


class ImageConversionError(ValueError):
    """An image message that cannot be turned into an array (encoding, size, step, data)."""


class CalibrationError(ValueError):
    """A camera_info that cannot be used: K not finite / not positive, a distortion vector that
    does not fit its model, an unknown model with non-zero coefficients."""


# ---------------------------------------------------------------------------------------
# message factories
# ---------------------------------------------------------------------------------------
class MessageTypes:
    """``types("sensor_msgs/msg/Image", header=..., ...)`` builds a message with these fields."""

    def __call__(self, typename: str, **fields: Any) -> Any:
        raise NotImplementedError

    def constant(self, typename: str, name: str) -> Any:
        raise NotImplementedError


class RosbagsTypes(MessageTypes):
    """Message classes of a ``rosbags`` typestore (ROS 2 Humble definitions by default).

    rosbags dataclasses need every field; ``conversions`` always passes them all, with
    numpy arrays for array fields.
    """

    def __init__(self, typestore: Any = None) -> None:
        if typestore is None:
            from rosbags.typesys import Stores, get_typestore

            typestore = get_typestore(Stores.ROS2_HUMBLE)
        self.typestore = typestore

    def __call__(self, typename: str, **fields: Any) -> Any:
        cls = self.typestore.types[typename]
        for key, value in fields.items():
            if isinstance(value, (bytes, bytearray, memoryview, array.array)):
                fields[key] = np.frombuffer(value, np.uint8).copy()
        return cls(**fields)

    def constant(self, typename: str, name: str) -> Any:
        return getattr(self.typestore.types[typename], name)


_ARRAY_TYPECODES = {
    "uint8": "B",
    "int8": "b",
    "octet": "B",
    "uint16": "H",
    "int16": "h",
    "uint32": "I",
    "int32": "i",
    "float": "f",
    "double": "d",
    "uint64": "Q",
    "int64": "q",
}


class RclpyTypes(MessageTypes):
    """Message classes of the installed ROS 2 Python packages (``sensor_msgs.msg.Image``...).

    Converts values to what rclpy's generated setters want: ``array.array`` for sequences
    (``sequence<uint8>`` data goes through the fast path, as cv_bridge does), numpy for
    fixed-size arrays, ``bytes`` for ``byte``/``octet`` fields (e.g. DiagnosticStatus.level).
    """

    def __init__(self) -> None:
        self._classes: dict[str, Any] = {}

    def _class(self, typename: str) -> Any:
        if typename not in self._classes:
            package, kind, name = typename.split("/")
            self._classes[typename] = getattr(importlib.import_module(f"{package}.{kind}"), name)
        return self._classes[typename]

    @staticmethod
    def _convert(value: Any, ftype: str) -> Any:
        if ftype == "octet" and isinstance(value, (int, np.integer)):
            return bytes([int(value)])
        if ftype.startswith("sequence<") and isinstance(value, (np.ndarray, bytes, bytearray, memoryview)):
            base = ftype[len("sequence<") :].split(",")[0].rstrip(">")
            code = _ARRAY_TYPECODES.get(base)
            if code is not None:
                values = array.array(code)
                if isinstance(value, np.ndarray):
                    values.frombytes(np.ascontiguousarray(value, dtype=np.dtype(code)).tobytes())
                else:
                    values.frombytes(bytes(value))
                return values
        if isinstance(value, np.ndarray) and "[" in ftype:  # fixed-size array: numpy of the right dtype
            return np.asarray(value, dtype=np.float64 if ftype.startswith("double") else value.dtype)
        return value

    def __call__(self, typename: str, **fields: Any) -> Any:
        cls = self._class(typename)
        ftypes = cls.get_fields_and_field_types()
        msg = cls()
        for key, value in fields.items():
            setattr(msg, key, self._convert(value, ftypes.get(key, "")))
        return msg

    def constant(self, typename: str, name: str) -> Any:
        value = getattr(self._class(typename), name)
        return value[0] if isinstance(value, bytes) and len(value) == 1 else value


def rosbags_types(typestore: Any = None) -> RosbagsTypes:
    return RosbagsTypes(typestore)


# ---------------------------------------------------------------------------------------
# header, time
# ---------------------------------------------------------------------------------------
def stamp_to_ns(stamp: Any) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(types: MessageTypes, ns: int) -> Any:
    ns = int(ns)
    return types("builtin_interfaces/msg/Time", sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def make_header(types: MessageTypes, stamp_ns: int, frame_id: str) -> Any:
    return types("std_msgs/msg/Header", stamp=ns_to_stamp(types, stamp_ns), frame_id=str(frame_id))


def header_ns(msg: Any) -> int:
    return stamp_to_ns(msg.header.stamp)


# ---------------------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------------------
ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    "mono8": (np.dtype(np.uint8), 1),
    "mono16": (np.dtype(np.uint16), 1),
    "rgb8": (np.dtype(np.uint8), 3),
    "bgr8": (np.dtype(np.uint8), 3),
    "rgba8": (np.dtype(np.uint8), 4),
    "bgra8": (np.dtype(np.uint8), 4),
    "8UC1": (np.dtype(np.uint8), 1),
    "8UC3": (np.dtype(np.uint8), 3),
    "8UC4": (np.dtype(np.uint8), 4),
    "16UC1": (np.dtype(np.uint16), 1),
    "32FC1": (np.dtype(np.float32), 1),
    # Bayer mosaics: one sample per pixel, demosaiced in to_matcher_image
    **{
        f"bayer_{p}{bits}": (np.dtype(dt), 1)
        for p in ("rggb", "bggr", "gbrg", "grbg")
        for bits, dt in ((8, np.uint8), (16, np.uint16))
    },
    # packed YUV 4:2:2: two bytes per pixel (ROS 'yuv422' is UYVY; 'yuv422_yuy2' is YUYV)
    **{name: (np.dtype(np.uint8), 2) for name in ("yuv422", "uyvy", "yuyv", "yuv422_yuy2")},
}

# ROS names the mosaic by its first two rows' colours; OpenCV by the second row's last two
# pixels, so ROS 'rggb' is OpenCV 'BayerBG' (the same table as cv_bridge's)
_BAYER_TO_RGB = {
    "rggb": cv2.COLOR_BayerBG2RGB,
    "bggr": cv2.COLOR_BayerRG2RGB,
    "gbrg": cv2.COLOR_BayerGR2RGB,
    "grbg": cv2.COLOR_BayerGB2RGB,
}
_YUV422_TO_RGB = {
    "yuv422": cv2.COLOR_YUV2RGB_UYVY,
    "uyvy": cv2.COLOR_YUV2RGB_UYVY,
    "yuyv": cv2.COLOR_YUV2RGB_YUYV,
    "yuv422_yuy2": cv2.COLOR_YUV2RGB_YUYV,
}


def _as_bytes(data: Any) -> np.ndarray:
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    return np.frombuffer(data, np.uint8)  # bytes, bytearray, array.array('B'), memoryview


def image_to_numpy(msg: Any) -> np.ndarray:
    """``sensor_msgs/Image`` -> (H, W) or (H, W, C) native-endian array in the message's channel order."""
    encoding = str(msg.encoding)
    if encoding not in ENCODINGS:
        raise ImageConversionError(f"unsupported image encoding '{encoding}' (supported: {', '.join(ENCODINGS)})")
    dtype, channels = ENCODINGS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ImageConversionError(f"empty image: {width}x{height}")
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise ImageConversionError(
            f"step {step} is smaller than width {width} x {channels * dtype.itemsize} "
            f"bytes per pixel ({row_bytes}) for '{encoding}'"
        )
    buf = _as_bytes(msg.data)
    needed = step * (height - 1) + row_bytes  # the last row's padding may be missing
    if buf.size < needed:
        raise ImageConversionError(
            f"truncated image data: {buf.size} bytes for a {width}x{height} "
            f"'{encoding}' image with step {step} (needs {step * height})"
        )
    if buf.size < step * height:
        buf = np.concatenate([buf[:needed], np.zeros(step * height - needed, np.uint8)])
    rows = buf[: step * height].reshape(height, step)[:, :row_bytes]
    order = ">" if int(msg.is_bigendian) and dtype.itemsize > 1 else "<"
    image = np.ascontiguousarray(rows).view(dtype.newbyteorder(order)).astype(dtype, copy=False)
    image = image.reshape(height, width, channels) if channels > 1 else image.reshape(height, width)
    return np.array(image, copy=True) if not image.flags.owndata else image


def numpy_to_image(
    types: MessageTypes,
    image: np.ndarray,
    encoding: str,
    header: Any = None,
    step: int | None = None,
    bigendian: bool = False,
) -> Any:
    """Array -> ``sensor_msgs/Image`` (rows padded to ``step`` bytes when given)."""
    if encoding not in ENCODINGS:
        raise ImageConversionError(f"unsupported image encoding '{encoding}'")
    dtype, channels = ENCODINGS[encoding]
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] != channels:
        raise ImageConversionError(f"'{encoding}' needs {channels} channel(s), got shape {image.shape}")
    height, width = image.shape[:2]
    row_bytes = width * channels * dtype.itemsize
    step = row_bytes if step is None else int(step)
    if step < row_bytes:
        raise ImageConversionError(f"step {step} < {row_bytes} bytes per row")
    big = bool(bigendian) and dtype.itemsize > 1
    raw = np.ascontiguousarray(image, dtype=dtype.newbyteorder(">" if big else "<")).view(np.uint8)
    raw = raw.reshape(height, row_bytes)
    if step > row_bytes:
        raw = np.concatenate([raw, np.zeros((height, step - row_bytes), np.uint8)], axis=1)
    if header is None:
        header = make_header(types, 0, "")
    return types(
        "sensor_msgs/msg/Image",
        header=header,
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=int(big),
        step=step,
        data=np.ascontiguousarray(raw).reshape(-1),
    )


def to_matcher_image(image: np.ndarray, encoding: str) -> np.ndarray:
    """An image array as the pipeline takes it: gray or RGB, uint8 / uint16 / float in [0, 1]."""
    if encoding.startswith("bayer_"):
        return cv2.cvtColor(image, _BAYER_TO_RGB[encoding[len("bayer_") : len("bayer_") + 4]])
    if encoding in _YUV422_TO_RGB:
        if image.shape[1] % 2:
            raise ImageConversionError(
                f"'{encoding}' needs an even width (pixel pairs share U and V), got {image.shape[1]}"
            )
        return cv2.cvtColor(image, _YUV422_TO_RGB[encoding])
    if encoding in ("bgr8", "bgra8"):
        return np.ascontiguousarray(image[..., 2::-1])
    if encoding in ("rgba8", "8UC4"):
        return np.ascontiguousarray(image[..., :3])
    if encoding == "32FC1":
        finite = np.isfinite(image)
        if not finite.any():
            return np.zeros(image.shape, np.float32)
        lo, hi = float(image[finite].min()), float(image[finite].max())
        if lo >= 0.0 and hi <= 1.0:
            return np.where(finite, image, 0.0).astype(np.float32)
        scaled = (image - lo) / max(hi - lo, 1e-12)
        return np.where(finite, scaled, 0.0).astype(np.float32)
    return image  # mono8, mono16, rgb8, 8UC1, 8UC3, 16UC1


def to_display(image: np.ndarray, encoding: str) -> np.ndarray:
    """uint8 gray or RGB for drawings (the debug image)."""
    image = to_matcher_image(image, encoding)
    if image.dtype == np.uint16:
        return (image >> 8).astype(np.uint8)
    if image.dtype != np.uint8:
        return (np.clip(image, 0, 1) * 255).astype(np.uint8)
    return image


def depth_to_metres(image: np.ndarray, encoding: str) -> np.ndarray:
    """Depth image (REP 118: 32FC1 metres, 16UC1/mono16 millimetres) -> float32 metres, 0 invalid."""
    if encoding in ("16UC1", "mono16"):
        return np.divide(image, np.float32(1000.0), dtype=np.float32)  # one pass, no float copy first
    if encoding == "32FC1":
        metres = np.fmax(image, np.float32(0))  # one pass: NaN (fmax ignores it) and negatives -> 0
        metres[metres == np.inf] = 0
        return metres.astype(np.float32, copy=False)
    raise ImageConversionError(f"depth images must be 32FC1 (m) or 16UC1 (mm), got '{encoding}'")


# ---------------------------------------------------------------------------------------
# camera info
# ---------------------------------------------------------------------------------------
# coefficients OpenCV takes for each ROS distortion model (sensor_msgs/distortion_models.h)
DISTORTION_LENGTHS = {"plumb_bob": 5, "rational_polynomial": 8, "equidistant": 4}
NO_DISTORTION_MODELS = ("", "none")


@dataclass(frozen=True)
class Calibration:
    """A checked camera_info: ``K`` (3x3) and ``D`` with exactly the model's length, or None
    when there is no distortion (all coefficients zero). ``note``: what was repaired, if anything."""

    K: np.ndarray
    model: str = "none"
    D: np.ndarray | None = None
    note: str = ""


def _checked_K(msg: Any) -> np.ndarray | None:
    K = np.array(msg.k, dtype=np.float64).reshape(-1)  # a copy: message buffers are read-only
    if K.size != 9:
        raise CalibrationError(f"K has {K.size} values, expected 9")
    K = K.reshape(3, 3)
    if not np.any(K):
        return None  # the ROS convention for an uncalibrated camera
    if not np.isfinite(K).all():
        raise CalibrationError(f"K is not finite: {K.reshape(-1).tolist()}")
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise CalibrationError(f"K has focal lengths fx={K[0, 0]:g}, fy={K[1, 1]:g}: both must be positive")
    if not np.allclose(K[2], [0, 0, 1]) or K[1, 0] != 0:
        raise CalibrationError(f"K is not an upper-triangular camera matrix with last row 0 0 1: {K.tolist()}")
    return K


def _checked_distortion(model: str, d: np.ndarray) -> tuple[np.ndarray | None, str]:
    """D of exactly the model's length (None when all zero) and a note on what was repaired."""
    if model in NO_DISTORTION_MODELS:
        if np.any(d):
            raise CalibrationError(f"distortion model '{model}' with non-zero coefficients {d.tolist()}")
        return None, ""
    if model not in DISTORTION_LENGTHS:
        if np.any(d):
            raise CalibrationError(
                f"distortion model '{model}' is not supported (supported: {', '.join(DISTORTION_LENGTHS)})"
            )
        return None, ""
    if not np.isfinite(d).all():
        raise CalibrationError(f"'{model}' distortion coefficients are not finite: {d.tolist()}")
    length = DISTORTION_LENGTHS[model]
    note = ""
    if d.size < length:
        # drivers publish fewer coefficients (or none) when the higher orders are zero
        note = f"'{model}' has {d.size} distortion coefficient(s), expected {length}: padded with zeros"
        d = np.concatenate([d, np.zeros(length - d.size)])
    elif d.size > length:
        if np.any(d[length:]):
            raise CalibrationError(
                f"'{model}' has {d.size} distortion coefficients, expected {length}, and the extra ones are not zero"
            )
        note = f"'{model}' has {d.size} distortion coefficients, expected {length}: zero extras dropped"
        d = d[:length]
    return (d if np.any(d) else None), note


def calibration_from_camera_info(msg: Any) -> Calibration | None:
    """The checked calibration of a ``sensor_msgs/CameraInfo``; None when uncalibrated (no message,
    or K all zero). Raises ``CalibrationError`` with the reason for one that cannot be used."""
    if msg is None:
        return None
    K = _checked_K(msg)
    if K is None:
        return None
    model = str(msg.distortion_model).strip()
    D, note = _checked_distortion(model, np.array(msg.d, dtype=np.float64).reshape(-1))
    return Calibration(K, model if D is not None else "none", D, note)


def undistort_points(points: np.ndarray, calibration: Calibration) -> np.ndarray:
    """Pixels (K, 2) of the distorted image -> pixels of the ideal pinhole camera with the same K."""
    if calibration.D is None or not len(points):
        return points
    K, D = calibration.K, calibration.D
    shaped = np.asarray(points, np.float64).reshape(-1, 1, 2)
    if calibration.model == "equidistant":
        return cv2.fisheye.undistortPoints(shaped, K, D, P=K).reshape(-1, 2)
    return cv2.undistortPoints(shaped, K, D, P=K).reshape(-1, 2)


def stereo_baseline(right_info: Any) -> float | None:
    """Baseline in metres from the right camera's projection matrix (P[0, 3] = -fx' * B)."""
    P = np.asarray(right_info.p, dtype=np.float64).reshape(3, 4)
    if P[0, 0] <= 0:
        return None
    baseline = -P[0, 3] / P[0, 0]
    return float(baseline) if baseline > 0 else None


def make_camera_info(
    types: MessageTypes,
    header: Any,
    width: int,
    height: int,
    K: np.ndarray,
    D: Sequence[float] | None = None,
    P: np.ndarray | None = None,
) -> Any:
    K = np.asarray(K, dtype=np.float64).reshape(3, 3)
    if P is None:
        P = np.hstack([K, np.zeros((3, 1))])
    roi = types("sensor_msgs/msg/RegionOfInterest", x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    return types(
        "sensor_msgs/msg/CameraInfo",
        header=header,
        height=int(height),
        width=int(width),
        distortion_model="plumb_bob",
        d=np.asarray(D if D is not None else np.zeros(5), dtype=np.float64),
        k=K.reshape(-1).copy(),
        r=np.eye(3).reshape(-1),
        p=np.asarray(P, np.float64).reshape(-1).copy(),
        binning_x=0,
        binning_y=0,
        roi=roi,
    )


# ---------------------------------------------------------------------------------------
# point clouds
# ---------------------------------------------------------------------------------------
_DATATYPES = {
    1: np.int8,
    2: np.uint8,
    3: np.int16,
    4: np.uint16,
    5: np.int32,
    6: np.uint32,
    7: np.float32,
    8: np.float64,
}
_DATATYPE_OF = {np.dtype(v): k for k, v in _DATATYPES.items()}

# One point per match. x, y, z come first so that RViz shows the cloud (see frame_matcher).
MATCH_DTYPE = np.dtype(
    [
        ("x", np.float32),
        ("y", np.float32),
        ("z", np.float32),
        ("u0", np.float32),
        ("v0", np.float32),
        ("u1", np.float32),
        ("v1", np.float32),
        ("score", np.float32),
        ("idx0", np.int32),
        ("idx1", np.int32),
        ("inlier", np.uint8),
    ]
)
XYZ_DTYPE = np.dtype([("x", np.float32), ("y", np.float32), ("z", np.float32)])
# one record per line match: segment endpoints (start s, end e) in the reference (0) and current (1)
# image; x, y, z as in MATCH_DTYPE for the midpoint of the current segment, so RViz can show it
LINE_MATCH_DTYPE = np.dtype(
    [("x", np.float32), ("y", np.float32), ("z", np.float32)]
    + [(f"{c}{i}_{end}", np.float32) for i in (0, 1) for end in ("s", "e") for c in ("u", "v")]
    + [("score", np.float32), ("idx0", np.int32), ("idx1", np.int32)]
)


def array_to_pointcloud2(types: MessageTypes, header: Any, points: np.ndarray) -> Any:
    """Structured numpy array (one record per point) -> unordered ``sensor_msgs/PointCloud2``."""
    points = np.ascontiguousarray(points)
    fields = []
    for name in points.dtype.names:
        dtype, offset = points.dtype.fields[name][:2]
        fields.append(
            types(
                "sensor_msgs/msg/PointField",
                name=name,
                offset=int(offset),
                datatype=_DATATYPE_OF[np.dtype(dtype)],
                count=1,
            )
        )
    n, step = len(points), points.dtype.itemsize
    dense = all(np.isfinite(points[k]).all() for k in ("x", "y", "z") if k in points.dtype.names)
    return types(
        "sensor_msgs/msg/PointCloud2",
        header=header,
        height=1,
        width=n,
        fields=fields,
        is_bigendian=False,
        point_step=step,
        row_step=step * n,
        data=points.view(np.uint8).reshape(-1).copy(),
        is_dense=bool(dense),
    )


def pointcloud2_to_array(msg: Any) -> np.ndarray:
    """``sensor_msgs/PointCloud2`` -> structured numpy array of its fields (count 1 fields)."""
    order = ">" if int(msg.is_bigendian) else "<"
    names, formats, offsets = [], [], []
    for field in msg.fields:
        names.append(field.name)
        formats.append(np.dtype(_DATATYPES[int(field.datatype)]).newbyteorder(order))
        offsets.append(int(field.offset))
    dtype = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": int(msg.point_step)})
    n = int(msg.width) * int(msg.height)
    buf = _as_bytes(msg.data)
    if buf.size < n * int(msg.point_step):
        raise ValueError(f"PointCloud2 data has {buf.size} bytes for {n} points of {msg.point_step}")
    return np.frombuffer(buf[: n * int(msg.point_step)].tobytes(), dtype=dtype)


def matches_to_pointcloud2(
    types: MessageTypes,
    header: Any,
    keypoints0: np.ndarray,
    keypoints1: np.ndarray,
    matches: np.ndarray,
    scores: np.ndarray,
    xyz: np.ndarray | None = None,
    inliers: np.ndarray | None = None,
) -> Any:
    """One point per match: x, y, z (``xyz`` or 0), u0, v0, u1, v1, score, idx0, idx1, inlier."""
    matches = np.asarray(matches, dtype=np.int64).reshape(-1, 2)
    points = np.zeros(len(matches), MATCH_DTYPE)
    if len(matches):
        p0 = np.asarray(keypoints0)[matches[:, 0]]
        p1 = np.asarray(keypoints1)[matches[:, 1]]
        points["u0"], points["v0"] = p0[:, 0], p0[:, 1]
        points["u1"], points["v1"] = p1[:, 0], p1[:, 1]
        points["score"] = np.asarray(scores, dtype=np.float32).reshape(-1)
        points["idx0"], points["idx1"] = matches[:, 0], matches[:, 1]
        if xyz is not None:
            xyz = np.asarray(xyz, dtype=np.float32).reshape(-1, 3)
            points["x"], points["y"], points["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
        if inliers is not None:
            points["inlier"] = np.asarray(inliers, dtype=bool).reshape(-1)
    return array_to_pointcloud2(types, header, points)


def line_matches_to_pointcloud2(
    types: MessageTypes,
    header: Any,
    lines0: np.ndarray,
    lines1: np.ndarray,
    line_matches: np.ndarray,
    scores: np.ndarray,
    xyz: np.ndarray | None = None,
) -> Any:
    """One point per line match: x, y, z (``xyz`` or 0), u0_s, v0_s, u0_e, v0_e (segment of the
    reference image), u1_s, v1_s, u1_e, v1_e (current image), score, idx0, idx1 (line indices)."""
    line_matches = np.asarray(line_matches, dtype=np.int64).reshape(-1, 2)
    points = np.zeros(len(line_matches), LINE_MATCH_DTYPE)
    if len(line_matches):
        for i, (lines, idx) in enumerate(((lines0, line_matches[:, 0]), (lines1, line_matches[:, 1]))):
            segments = np.asarray(lines, dtype=np.float32).reshape(-1, 2, 2)[idx]
            for k, end in enumerate(("s", "e")):
                points[f"u{i}_{end}"], points[f"v{i}_{end}"] = segments[:, k, 0], segments[:, k, 1]
        points["score"] = np.asarray(scores, dtype=np.float32).reshape(-1)
        points["idx0"], points["idx1"] = line_matches[:, 0], line_matches[:, 1]
        if xyz is not None:
            xyz = np.asarray(xyz, dtype=np.float32).reshape(-1, 3)
            points["x"], points["y"], points["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    return array_to_pointcloud2(types, header, points)


def xyz_to_pointcloud2(types: MessageTypes, header: Any, xyz: np.ndarray) -> Any:
    xyz = np.asarray(xyz, dtype=np.float32).reshape(-1, 3)
    points = np.zeros(len(xyz), XYZ_DTYPE)
    points["x"], points["y"], points["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    return array_to_pointcloud2(types, header, points)


# ---------------------------------------------------------------------------------------
# poses
# ---------------------------------------------------------------------------------------
def rotation_to_quaternion(R: np.ndarray) -> np.ndarray:
    """3x3 rotation -> unit quaternion (x, y, z, w) with w >= 0."""
    R = np.asarray(R, dtype=np.float64)
    trace = np.trace(R)
    if trace > 0:
        s = 2.0 * math.sqrt(trace + 1.0)
        q = [(R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s, 0.25 * s]
    elif R[0, 0] > R[1, 1] and R[0, 0] > R[2, 2]:
        s = 2.0 * math.sqrt(1.0 + R[0, 0] - R[1, 1] - R[2, 2])
        q = [0.25 * s, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s, (R[2, 1] - R[1, 2]) / s]
    elif R[1, 1] > R[2, 2]:
        s = 2.0 * math.sqrt(1.0 + R[1, 1] - R[0, 0] - R[2, 2])
        q = [(R[0, 1] + R[1, 0]) / s, 0.25 * s, (R[1, 2] + R[2, 1]) / s, (R[0, 2] - R[2, 0]) / s]
    else:
        s = 2.0 * math.sqrt(1.0 + R[2, 2] - R[0, 0] - R[1, 1])
        q = [(R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, 0.25 * s, (R[1, 0] - R[0, 1]) / s]
    q = np.asarray(q)
    q /= np.linalg.norm(q)
    return -q if q[3] < 0 else q


def quaternion_to_rotation(q: Sequence[float]) -> np.ndarray:
    x, y, z, w = (float(v) for v in q)
    n = math.sqrt(x * x + y * y + z * z + w * w)
    if n == 0:
        raise ValueError("zero quaternion")
    x, y, z, w = x / n, y / n, z / n, w / n
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def matrix_to_pose(types: MessageTypes, T: np.ndarray) -> Any:
    q = rotation_to_quaternion(T[:3, :3])
    t = np.asarray(T, dtype=np.float64)[:3, 3]
    return types(
        "geometry_msgs/msg/Pose",
        position=types("geometry_msgs/msg/Point", x=float(t[0]), y=float(t[1]), z=float(t[2])),
        orientation=types("geometry_msgs/msg/Quaternion", x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3])),
    )


def matrix_to_transform(types: MessageTypes, T: np.ndarray) -> Any:
    q = rotation_to_quaternion(T[:3, :3])
    t = np.asarray(T, dtype=np.float64)[:3, 3]
    return types(
        "geometry_msgs/msg/Transform",
        translation=types("geometry_msgs/msg/Vector3", x=float(t[0]), y=float(t[1]), z=float(t[2])),
        rotation=types("geometry_msgs/msg/Quaternion", x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3])),
    )


def _covariance(cov: np.ndarray | None) -> np.ndarray:
    return np.zeros(36) if cov is None else np.asarray(cov, dtype=np.float64).reshape(36).copy()


def pose_stamped(types: MessageTypes, header: Any, T: np.ndarray) -> Any:
    return types("geometry_msgs/msg/PoseStamped", header=header, pose=matrix_to_pose(types, T))


def pose_with_covariance_stamped(types: MessageTypes, header: Any, T: np.ndarray, cov: np.ndarray | None = None) -> Any:
    pose = types("geometry_msgs/msg/PoseWithCovariance", pose=matrix_to_pose(types, T), covariance=_covariance(cov))
    return types("geometry_msgs/msg/PoseWithCovarianceStamped", header=header, pose=pose)


def transform_stamped(types: MessageTypes, header: Any, child_frame_id: str, T: np.ndarray) -> Any:
    return types(
        "geometry_msgs/msg/TransformStamped",
        header=header,
        child_frame_id=str(child_frame_id),
        transform=matrix_to_transform(types, T),
    )


def odometry(
    types: MessageTypes,
    header: Any,
    child_frame_id: str,
    T: np.ndarray,
    cov: np.ndarray | None = None,
    linear: Sequence[float] = (0, 0, 0),
    angular: Sequence[float] = (0, 0, 0),
    twist_cov: np.ndarray | None = None,
) -> Any:
    """``nav_msgs/Odometry``: pose of ``child_frame_id`` in ``header.frame_id``; twist in the child frame."""
    pose = types("geometry_msgs/msg/PoseWithCovariance", pose=matrix_to_pose(types, T), covariance=_covariance(cov))

    def vec(v: Sequence[float]) -> Any:
        return types("geometry_msgs/msg/Vector3", x=float(v[0]), y=float(v[1]), z=float(v[2]))

    twist = types(
        "geometry_msgs/msg/TwistWithCovariance",
        twist=types("geometry_msgs/msg/Twist", linear=vec(linear), angular=vec(angular)),
        covariance=_covariance(twist_cov),
    )
    return types("nav_msgs/msg/Odometry", header=header, child_frame_id=str(child_frame_id), pose=pose, twist=twist)


def _pose_to_matrix(pose: Any) -> np.ndarray:
    T = np.eye(4)
    o = pose.orientation
    T[:3, :3] = quaternion_to_rotation((o.x, o.y, o.z, o.w))
    T[:3, 3] = (pose.position.x, pose.position.y, pose.position.z)
    return T


def pose_from_msg(msg: Any) -> np.ndarray:
    """4x4 from Pose, PoseStamped, PoseWithCovariance(Stamped), Odometry, Transform(Stamped)."""
    if hasattr(msg, "transform"):
        msg = msg.transform
    if hasattr(msg, "translation"):
        T = np.eye(4)
        r = msg.rotation
        T[:3, :3] = quaternion_to_rotation((r.x, r.y, r.z, r.w))
        T[:3, 3] = (msg.translation.x, msg.translation.y, msg.translation.z)
        return T
    while hasattr(msg, "pose"):
        msg = msg.pose
    return _pose_to_matrix(msg)


# ---------------------------------------------------------------------------------------
# diagnostics
# ---------------------------------------------------------------------------------------
LEVELS = {"OK": 0, "WARN": 1, "ERROR": 2, "STALE": 3}


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def diagnostic_status(
    types: MessageTypes, name: str, level: str, message: str, values: Mapping[str, Any], hardware_id: str = ""
) -> Any:
    kvs = [types("diagnostic_msgs/msg/KeyValue", key=str(k), value=_format_value(v)) for k, v in values.items()]
    return types(
        "diagnostic_msgs/msg/DiagnosticStatus",
        level=LEVELS[level],
        name=name,
        message=message,
        hardware_id=hardware_id,
        values=kvs,
    )


def diagnostic_array(types: MessageTypes, header: Any, statuses: Iterable[Any]) -> Any:
    return types("diagnostic_msgs/msg/DiagnosticArray", header=header, status=list(statuses))


def status_values(status: Any) -> dict[str, str]:
    """KeyValues of a DiagnosticStatus as a dict."""
    return {kv.key: kv.value for kv in status.values}


def status_level(status: Any) -> int:
    level = status.level
    return level[0] if isinstance(level, (bytes, bytearray)) else int(level)
