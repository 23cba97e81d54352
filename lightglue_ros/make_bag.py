"""Build a rosbag2 (sqlite3 or MCAP) with images, camera info, depth and ground-truth poses.

    python -m lightglue_ros.make_bag outputs/bags/room --synthetic 40            # generated scene
    python -m lightglue_ros.make_bag outputs/bags/castle --sequence ../shared/data/castle_simu
    python -m lightglue_ros.make_bag outputs/bags/tum --tum rgbd_dataset_freiburg1_xyz
    python -m lightglue_ros.make_bag outputs/bags/folder --images DIR --fps 10 --K 525,525,319.5,239.5
    python -m lightglue_ros.make_bag outputs/bags/video --video clip.mp4 --storage mcap

Topics (``--namespace``, default ``/camera``):

- ``/camera/image_raw`` ``sensor_msgs/msg/Image`` (mono8 for gray input, bgr8 for colour);
- ``/camera/camera_info`` ``sensor_msgs/msg/CameraInfo`` (when intrinsics are known), same stamp;
- ``/camera/depth/image_raw`` ``sensor_msgs/msg/Image`` 32FC1 metres (sequences with depth);
- ``/ground_truth/pose`` ``geometry_msgs/msg/PoseStamped``: the pose of the camera optical frame
  in the ``world`` frame (``T_world_cam``), when poses are known.

The bag is rosbag2 metadata version 8 (the newest version whose metadata.yaml ROS 2 Humble's
rosbag2 parses: version 9 changed the QoS layout), with CDR messages of the Humble message
definitions (unchanged since in Iron, Jazzy and Rolling for these types). sqlite3 bags are
for Humble and later; MCAP bags for Iron and later, or Humble with the
``ros-humble-rosbag2-storage-mcap`` plugin. (This compatibility statement follows the rosbag2
format history; it is not tested here, where there is no ROS.) The bag is written under a
temporary name and renamed when complete.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from . import conversions as cv

BAG_VERSION = 8


@dataclass
class BagFrame:
    stamp_ns: int
    image: np.ndarray  # gray (H, W) or BGR (H, W, 3) uint8
    K: np.ndarray | None = None
    depth: np.ndarray | None = None  # float32 metres, 0 invalid
    T_world_cam: np.ndarray | None = None


# ---- sources ---------------------------------------------------------------------------------------
def synthetic_frames(num: int, width: int, height: int, fps: float, seed: int, step: float) -> Iterator[BagFrame]:
    from featmatch_core.datasets.room import sequence

    for f in sequence(num, width, height, step=step, seed=seed, fps=fps):
        yield BagFrame(f.stamp_ns, f.image, f.K, f.depth, np.linalg.inv(f.T_cam_world))


def _sorted_images(folder: Path) -> list[Path]:
    from featmatch_core.datasets.posed_sequence import IMAGE_EXTENSIONS, _frame_key

    images = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
    if not images:
        raise FileNotFoundError(f"no images in {folder}")
    return sorted(images, key=lambda p: _frame_key(p.stem))


def _read(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"cannot read image {path}")
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[..., :3]
    if image.dtype != np.uint8:
        image = (image / 257).astype(np.uint8) if image.dtype == np.uint16 else image.astype(np.uint8)
    return image


def sequence_frames(root: Path, fps: float, start_ns: int, with_depth: bool) -> Iterator[BagFrame]:
    """images/ + poses/ (4x4 T_cam_world) + K.txt [+ depth/NNNN.npz], as castle_simu."""
    from featmatch_core.datasets.base import read_matrix
    from featmatch_core.datasets.posed_sequence import DEPTH_EXTENSIONS, read_depth

    K = read_matrix(root / "K.txt", (3, 3))
    for i, path in enumerate(_sorted_images(root / "images")):
        pose_path = root / "poses" / f"{path.stem}.txt"
        T = np.linalg.inv(read_matrix(pose_path, (4, 4))) if pose_path.is_file() else None
        depth = None
        if with_depth:
            for ext in DEPTH_EXTENSIONS:
                if (root / "depth" / f"{path.stem}{ext}").is_file():
                    depth = read_depth(root / "depth" / f"{path.stem}{ext}")
                    break
        yield BagFrame(start_ns + int(round(i * 1e9 / fps)), _read(path), K, depth, T)


def _tum_list(path: Path) -> list[tuple[float, list[str]]]:
    rows = []
    for line in path.read_text().splitlines():
        tokens = line.split()
        if tokens and not tokens[0].startswith("#"):
            rows.append((float(tokens[0]), tokens[1:]))
    return rows


def tum_pose(values: list[str]) -> np.ndarray:
    T = np.eye(4)
    T[:3, 3] = [float(v) for v in values[:3]]
    T[:3, :3] = cv.quaternion_to_rotation([float(v) for v in values[3:7]])
    return T


def _nearest(stamps: np.ndarray, t: float, max_dt: float) -> int | None:
    if not len(stamps):
        return None
    i = int(np.argmin(np.abs(stamps - t)))
    return i if abs(stamps[i] - t) <= max_dt else None


def tum_frames(root: Path, K: np.ndarray | None, with_depth: bool) -> Iterator[BagFrame]:
    """A TUM RGB-D folder: rgb.txt, depth.txt (16-bit PNG, 5000 per metre), groundtruth.txt."""
    rgb = _tum_list(root / "rgb.txt")
    depth = _tum_list(root / "depth.txt") if with_depth and (root / "depth.txt").is_file() else []
    gt = _tum_list(root / "groundtruth.txt") if (root / "groundtruth.txt").is_file() else []
    d_stamps = np.array([t for t, _ in depth])
    g_stamps = np.array([t for t, _ in gt])
    for t, (name, *_) in rgb:
        frame = BagFrame(int(round(t * 1e9)), _read(root / name), K)
        j = _nearest(d_stamps, t, 0.02)
        if j is not None:
            raw = cv2.imread(str(root / depth[j][1][0]), cv2.IMREAD_UNCHANGED)
            frame.depth = raw.astype(np.float32) / 5000.0 if raw is not None else None
        j = _nearest(g_stamps, t, 0.02)
        if j is not None:
            frame.T_world_cam = tum_pose(gt[j][1])
        yield frame


def folder_frames(root: Path, K: np.ndarray | None, fps: float, start_ns: int) -> Iterator[BagFrame]:
    for i, path in enumerate(_sorted_images(root)):
        yield BagFrame(start_ns + int(round(i * 1e9 / fps)), _read(path), K)


def video_frames(path: Path, K: np.ndarray | None, fps: float | None, start_ns: int) -> Iterator[BagFrame]:
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise ValueError(f"cannot open video {path}")
    rate = fps or capture.get(cv2.CAP_PROP_FPS) or 30.0
    i = 0
    try:
        while True:
            ok, image = capture.read()
            if not ok:
                break
            yield BagFrame(start_ns + int(round(i * 1e9 / rate)), image, K)
            i += 1
    finally:
        capture.release()


# ---- writing ------------------------------------------------------------------------------------
def storage_plugin(name: str):
    from rosbags.rosbag2 import StoragePlugin

    plugins = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}
    if name not in plugins:
        raise ValueError(f"storage must be one of {sorted(plugins)}, got '{name}'")
    return plugins[name]


def temp_bag_path(out: Path) -> Path:
    """A fresh, not yet existing path beside ``out`` (rosbags' Writer creates the directory)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    holder = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    return holder / out.name


def finish_bag(tmp: Path, out: Path, overwrite: bool) -> None:
    """Move a complete bag from its temporary place to ``out`` (replacing it only with ``overwrite``)."""
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"{out} exists (use --overwrite)")
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    tmp.rename(out)
    shutil.rmtree(tmp.parent, ignore_errors=True)


def write_messages(
    messages: Iterable[tuple[str, str, int, Any]], out: Path, storage: str = "sqlite3", overwrite: bool = False
) -> dict[str, int]:
    """Write ``(topic, msgtype, bag time ns, message)`` in order to a new bag; messages per topic.

    The bag is written under a temporary name and renamed when complete: a crash leaves no
    half-written bag at ``out``."""
    from rosbags.rosbag2 import Writer

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists (use --overwrite)")
    typestore = cv.rosbags_types().typestore
    counts: dict[str, int] = {}
    tmp = temp_bag_path(out)
    try:
        with Writer(tmp, version=BAG_VERSION, storage_plugin=storage_plugin(storage)) as writer:
            conns: dict[str, Any] = {}
            for topic, msgtype, stamp_ns, msg in messages:
                if topic not in conns:
                    conns[topic] = writer.add_connection(topic, msgtype, typestore=typestore)
                writer.write(conns[topic], int(stamp_ns), typestore.serialize_cdr(msg, msgtype))
                counts[topic] = counts.get(topic, 0) + 1
        if not counts:
            raise ValueError("no messages to write")
        finish_bag(tmp, out, overwrite)
    finally:
        if tmp.parent.exists():
            shutil.rmtree(tmp.parent, ignore_errors=True)
    return counts


def frame_messages(
    frame: BagFrame, types: cv.MessageTypes, topics: dict[str, str], frame_id: str, encoding: str | None
) -> Iterator[tuple[str, str, int, Any]]:
    """The bag messages of one frame: camera_info and depth first (a reader sees them before the
    image of the same stamp), the image, the ground-truth pose."""
    header = cv.make_header(types, frame.stamp_ns, frame_id)
    image = frame.image
    enc = encoding or ("mono8" if image.ndim == 2 else "bgr8")
    if enc == "mono8" and image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    elif enc in ("bgr8", "rgb8") and image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if enc == "rgb8":
        image = image[..., ::-1]
    h, w = image.shape[:2]
    if frame.K is not None:
        yield topics["info"], INFO, frame.stamp_ns, cv.make_camera_info(types, header, w, h, frame.K)
    if frame.depth is not None:
        depth = cv.numpy_to_image(types, frame.depth.astype(np.float32), "32FC1", header)
        yield topics["depth"], IMAGE, frame.stamp_ns, depth
    yield topics["image"], IMAGE, frame.stamp_ns, cv.numpy_to_image(types, image, enc, header)
    if frame.T_world_cam is not None:
        pose = cv.pose_stamped(types, cv.make_header(types, frame.stamp_ns, "world"), frame.T_world_cam)
        yield topics["gt"], POSE, frame.stamp_ns, pose


IMAGE, INFO, POSE = "sensor_msgs/msg/Image", "sensor_msgs/msg/CameraInfo", "geometry_msgs/msg/PoseStamped"


def bag_topics(namespace: str) -> dict[str, str]:
    ns = "/" + namespace.strip("/") if namespace.strip("/") else ""
    return {
        "image": f"{ns}/image_raw",
        "info": f"{ns}/camera_info",
        "depth": f"{ns}/depth/image_raw",
        "gt": "/ground_truth/pose",
    }


def write_bag(
    frames: Iterator[BagFrame],
    out: Path,
    storage: str = "sqlite3",
    namespace: str = "/camera",
    frame_id: str = "camera_optical",
    overwrite: bool = False,
    total: int | None = None,
    encoding: str | None = None,
) -> dict[str, int]:
    types = cv.rosbags_types()
    topics = bag_topics(namespace)
    messages = (
        message
        for frame in tqdm(frames, total=total, desc=f"writing {Path(out).name}", unit="frame")
        for message in frame_messages(frame, types, topics, frame_id, encoding)
    )
    counts = write_messages(messages, out, storage, overwrite)
    if topics["image"] not in counts:
        raise ValueError("no frames to write")
    return counts


def parse_K(text: str | None) -> np.ndarray | None:
    if not text:
        return None
    values = [float(v) for v in text.split(",")]
    if len(values) != 4:
        raise argparse.ArgumentTypeError("--K takes fx,fy,cx,cy")
    fx, fy, cx, cy = values
    return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lightglue_ros.make_bag",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("out", type=Path, help="output bag (a rosbag2 directory)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--synthetic", type=int, metavar="N", help="N frames of the generated room scene")
    source.add_argument("--sequence", type=Path, help="images/ poses/ K.txt [depth/] folder (castle_simu)")
    source.add_argument("--tum", type=Path, help="TUM RGB-D sequence folder")
    source.add_argument("--images", type=Path, help="folder of images (ordered by name)")
    source.add_argument("--video", type=Path, help="video file")
    parser.add_argument("--storage", choices=("sqlite3", "mcap"), default="sqlite3")
    parser.add_argument("--fps", type=float, default=None, help="frame rate for stamps (default 10; video: its own)")
    parser.add_argument(
        "--K",
        default=None,
        help="intrinsics fx,fy,cx,cy (images, video; TUM default fr1 ROS default 525,525,319.5,239.5)",
    )
    parser.add_argument("--namespace", default="/camera")
    parser.add_argument("--frame-id", default="camera_optical")
    parser.add_argument(
        "--encoding",
        choices=("mono8", "bgr8", "rgb8"),
        default=None,
        help="image encoding (default: mono8 for gray input, bgr8 for colour)",
    )
    parser.add_argument("--no-depth", action="store_true", help="leave depth out")
    parser.add_argument("--max-frames", type=int, default=None)
    parser.add_argument("--width", type=int, default=640, help="synthetic: image width")
    parser.add_argument("--height", type=int, default=480, help="synthetic: image height")
    parser.add_argument("--step", type=float, default=0.04, help="synthetic: motion per frame")
    parser.add_argument("--seed", type=int, default=0, help="synthetic: scene and trajectory seed")
    parser.add_argument("--start", type=float, default=1_700_000_000.0, help="first stamp, seconds")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    K = parse_K(args.K)
    fps = args.fps or 10.0
    start_ns = int(args.start * 1e9)
    total = None
    try:
        if args.synthetic is not None:
            frames = synthetic_frames(args.synthetic, args.width, args.height, fps, args.seed, args.step)
            total = args.synthetic
        elif args.sequence is not None:
            frames = sequence_frames(args.sequence, fps, start_ns, not args.no_depth)
        elif args.tum is not None:
            frames = tum_frames(args.tum, K if K is not None else parse_K("525,525,319.5,239.5"), not args.no_depth)
        elif args.images is not None:
            frames = folder_frames(args.images, K, fps, start_ns)
        else:
            frames = video_frames(args.video, K, args.fps, start_ns)
        if args.max_frames:
            frames = itertools.islice(frames, args.max_frames)
            total = min(total or args.max_frames, args.max_frames)
        counts = write_bag(
            frames,
            args.out,
            args.storage,
            args.namespace,
            args.frame_id,
            args.overwrite,
            total,
            args.encoding,
        )
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"make_bag: error: {err}", file=sys.stderr)
        return 2
    print(
        f"wrote {args.out} (rosbag2 version {BAG_VERSION}, {args.storage}; readable by ROS 2 Humble and later"
        + (", MCAP needs rosbag2_storage_mcap on Humble" if args.storage == "mcap" else "")
        + ")"
    )
    for topic, count in counts.items():
        print(f"  {topic}: {count} messages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
