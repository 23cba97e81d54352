"""Generated 3D scene pairs with depth ground truth: training beyond planar homographies.

Pair i of a split comes from its own seed: a random room (six textured walls) with textured
boxes and thin slabs floating in it as occluders (depth discontinuities, self-occlusion), seen
by two pinhole cameras looking at a common point, the second one orbited about it (baseline,
viewpoint change), moved closer or farther (distance ratio up to ``max_scale_ratio``: scale
change) and rolled (in-plane rotation). Textures are generated (``random_texture``), crops of
the *training* photos (the split of :mod:`.homographies`, so validation photos never shape a
training pair) and small tiles repeated over a surface (repeated texture). Views are rendered
by ray casting (:mod:`.render`) with exact z-depth maps, then degraded independently:
illumination gradient, motion blur, and the photometric augmentation of the homography pairs
(brightness, contrast, gamma, blur, noise, JPEG).

- ``build_scene_datasets`` (``data.name: scenes``): batches with the depth ground truth of
  MegaDepth training (``depth0/1``, ``K0/1``, ``T_0to1``, features, ``image_size0/1``); with
  ``features_in: model`` the views ``image0/1`` instead of features (see :mod:`.homographies`).
- ``build_mixed_datasets`` (``data.name: mixed``): each pair index draws scene or homography
  from a seeded coin (``scene_fraction``), so a pair depends only on its index and resuming by
  skipping sampler indices stays exact; both kinds carry both geometries (the one not used is a
  placeholder) and ``gt_from_depth`` says which labels a pair gets.
- ``SceneEvalPairs``: held-out scenes (their own seeds, the validation photos) for
  ``python -m featmatch_core.eval.scenes``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
import torch
from omegaconf import DictConfig

from ..config import ConfigError, ConfLike, merge_strict
from ..geometry.depth import invert_transform
from ..image import read_image
from . import homographies
from .base import BASE_CONF, PairDataset, check_rendered
from .download import DatasetUnavailableError
from .homographies import FeaturePairs, list_images, photometric, split_images
from .render import Plane, camera_pose, render_planes
from .synthetic import random_texture

# Far from the homography offsets (0, 10_000_019, 20_000_033 + i): no scene shares a seed with them.
SEED_OFFSETS = {"train": 30_000_001, "val": 40_000_003, "benchmark": 50_000_017}
MIXED_SALT = 7_919  # seeds the scene-or-homography coin of the mixed dataset

SCENE_CONF: dict[str, Any] = {
    "room_half_width": [2.0, 4.0],  # metres from camera 0 to the left/right walls
    "room_depth": [6.0, 11.0],  # to the back wall
    "floor": [1.2, 1.8],  # below camera 0
    "ceiling": [1.0, 2.2],  # above camera 0
    "num_boxes": [2, 6],
    "box_size": [0.3, 1.4],  # edge length (metres)
    "slab_prob": 0.35,  # a box flattened into a thin slab
    "photo_texture_prob": 0.5,  # surfaces textured by a training photo crop (if photos are given)
    "repeated_texture_prob": 0.15,  # surfaces covered by one small repeated tile
    "texture_size": 512,
}
CAMERA_CONF: dict[str, Any] = {
    "focal": [0.6, 1.0],  # focal length / image width
    "target_distance": [2.0, 5.0],  # camera 0 to the looked-at point
    "max_orbit": 30.0,  # degrees camera 1 moves about the looked-at point (yaw; pitch a third)
    "max_roll": 30.0,  # in-plane rotation between the views (degrees)
    "max_scale_ratio": 2.0,  # distance-to-target ratio between the views: scale change
    # Video-like pairs: with this probability camera 1 is camera 0 moved by a small step and turned
    # a little (consecutive frames of a moving robot) instead of orbiting the target.
    "narrow_baseline_prob": 0.0,
    "narrow_step": [0.02, 0.15],  # metres camera 1 moves, in a random direction
    "narrow_rotation": 3.0,  # max degrees camera 1 turns (pan, tilt and roll each)
}
DEGRADE_CONF: dict[str, Any] = {
    "shading": 0.3,  # max relative illumination change across a view (linear gradient)
    "motion_blur_prob": 0.25,
    "motion_blur_length": [3, 9],  # pixels
}
DEFAULT_CONF: dict[str, Any] = {
    "name": "scenes",
    "root": None,  # photos for textures (training split only); None: generated textures only
    "val_fraction": homographies.DEFAULT_CONF["val_fraction"],
    "val_images": None,
    "image_size": [384, 512],  # (H, W) of each view
    "train_pairs": 4000,
    "val_pairs": 200,
    "seed": 0,
    "scene": SCENE_CONF,
    "camera": CAMERA_CONF,
    "degrade": DEGRADE_CONF,
    "photometric": homographies.DEFAULT_CONF["photometric"],
    "features": {"name": "sift", "max_num_keypoints": 512, "resize": None},
    "features_in": homographies.DEFAULT_CONF["features_in"],  # "dataset" | "model" (images: the model extracts)
    "cache_dir": None,
}
GENERATION_KEYS = ("image_size", "scene", "camera", "degrade", "photometric")


# ---- scene geometry ----------------------------------------------------------------------------
@dataclass
class ScenePair:
    images: tuple[np.ndarray, np.ndarray]  # uint8 gray (H, W), degraded
    depths: tuple[np.ndarray, np.ndarray]  # float32 z-depth (H, W), metres
    K: tuple[np.ndarray, np.ndarray]
    T_0to1: np.ndarray  # 4x4, camera 0 -> camera 1


def uniform(rng: np.random.Generator, bounds: Sequence[float]) -> float:
    return float(rng.uniform(float(bounds[0]), float(bounds[1])))


def rotation_about(axis: np.ndarray, degrees: float) -> np.ndarray:
    """Rodrigues rotation matrix about a unit axis."""
    axis = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    a = np.deg2rad(degrees)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * cross + (1 - np.cos(a)) * cross @ cross


def look_at(centre: np.ndarray, target: np.ndarray, roll_deg: float) -> np.ndarray:
    """T_cam_world of a camera at ``centre`` whose optical axis (z) points at ``target``, with its
    image rotated by ``roll_deg`` about that axis (world y is down, as in camera 0)."""
    z = target - centre
    z = z / np.linalg.norm(z)
    x = np.cross(np.array([0.0, 1.0, 0.0]), z)  # y down: x = down x forward is "right"
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    return camera_pose(np.stack([x, y, z], 1) @ rotation_about(np.array([0.0, 0.0, 1.0]), roll_deg), centre)


@dataclass
class Room:
    lo: np.ndarray  # (3,) min corner (x left wall, y ceiling, z front wall)
    hi: np.ndarray  # (3,) max corner (x right wall, y floor, z back wall)

    def contains(self, point: np.ndarray, margin: float) -> bool:
        return bool((point > self.lo + margin).all() and (point < self.hi - margin).all())


def sample_room(rng: np.random.Generator, conf: DictConfig) -> Room:
    lo = np.array([-uniform(rng, conf.room_half_width), -uniform(rng, conf.ceiling), -2.0])
    hi = np.array([uniform(rng, conf.room_half_width), uniform(rng, conf.floor), uniform(rng, conf.room_depth)])
    return Room(lo, hi)


def sample_cameras(rng: np.random.Generator, room: Room, conf: DictConfig
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(T0, T1 as T_cam_world, target point): camera 1 orbits, approaches and rolls about the target,
    or, with probability ``narrow_baseline_prob``, takes a small step from camera 0 (video-like)."""
    # Drawn only when enabled, so that recipes without narrow pairs keep their exact pairs.
    narrow = float(conf.narrow_baseline_prob) > 0 and rng.random() < float(conf.narrow_baseline_prob)
    centre0 = np.zeros(3)
    for _ in range(50):
        direction = rotation_about(np.array([0.0, 1.0, 0.0]), rng.uniform(-25, 25)) @ \
            rotation_about(np.array([1.0, 0.0, 0.0]), rng.uniform(-12, 12)) @ np.array([0.0, 0.0, 1.0])
        target = centre0 + uniform(rng, conf.target_distance) * direction
        if not room.contains(target, 0.3):
            continue
        if narrow:
            return (*narrow_step_cameras(rng, room, centre0, target, conf), target)
        orbit = rotation_about(np.array([0.0, 1.0, 0.0]), rng.uniform(-1, 1) * conf.max_orbit) @ \
            rotation_about(np.array([1.0, 0.0, 0.0]), rng.uniform(-1, 1) * conf.max_orbit / 3)
        ratio = float(np.exp(rng.uniform(-1, 1) * np.log(conf.max_scale_ratio)))
        centre1 = target + ratio * orbit @ (centre0 - target)
        if room.contains(centre1, 0.3) and np.linalg.norm(centre1 - target) > 0.8:
            roll0 = rng.uniform(-10, 10)
            roll1 = roll0 + rng.uniform(-1, 1) * conf.max_roll
            aim1 = target + rng.uniform(-0.15, 0.15, 3)  # not exactly the same point: varied overlap
            return look_at(centre0, target, roll0), look_at(centre1, aim1, roll1), target
    target = np.array([0.0, 0.0, 3.0])  # a room too small for the ranges: a plain short baseline
    return look_at(centre0, target, 0.0), look_at(np.array([0.2, 0.0, 0.0]), target, 0.0), target


def narrow_step_cameras(rng: np.random.Generator, room: Room, centre0: np.ndarray, target: np.ndarray,
                        conf: DictConfig) -> tuple[np.ndarray, np.ndarray]:
    """(T0, T1): camera 1 is camera 0 moved ``narrow_step`` metres and turned up to ``narrow_rotation``
    degrees about each axis (a random direction, kept inside the room)."""
    roll0 = rng.uniform(-10, 10)
    T0 = look_at(centre0, target, roll0)
    for _ in range(20):
        direction = rng.normal(size=3)
        centre1 = centre0 + uniform(rng, conf.narrow_step) * direction / np.linalg.norm(direction)
        if room.contains(centre1, 0.3):
            break
    else:
        centre1 = centre0
    turn = float(conf.narrow_rotation)
    R_wc1 = look_at(centre1, target, roll0)[:3, :3].T @ \
        rotation_about(np.array([0.0, 1.0, 0.0]), rng.uniform(-turn, turn)) @ \
        rotation_about(np.array([1.0, 0.0, 0.0]), rng.uniform(-turn, turn)) @ \
        rotation_about(np.array([0.0, 0.0, 1.0]), rng.uniform(-turn, turn))
    return T0, camera_pose(R_wc1, centre1)


# ---- textures ---------------------------------------------------------------------------------
class TextureSource:
    """Draws surface textures: generated, photo crops, or repeated tiles (square, ``size`` px)."""

    def __init__(self, rng: np.random.Generator, conf: DictConfig, num_photos: int,
                 photo: Any) -> None:
        self.rng, self.conf, self.num_photos, self.photo = rng, conf, num_photos, photo
        self.size = int(conf.texture_size)

    def draw(self) -> np.ndarray:
        roll = self.rng.random()
        if roll < self.conf.repeated_texture_prob:
            return self.repeated()
        if self.num_photos and roll < self.conf.repeated_texture_prob + self.conf.photo_texture_prob:
            return self.photo_crop()
        return random_texture(self.size, self.size, seed=int(self.rng.integers(2**31)))

    def repeated(self) -> np.ndarray:
        tile = int(self.rng.integers(24, 97))
        base = random_texture(tile, tile, seed=int(self.rng.integers(2**31)))
        reps = self.size // tile + 1
        return np.ascontiguousarray(np.tile(base, (reps, reps))[: self.size, : self.size])

    def photo_crop(self) -> np.ndarray:
        photo = self.photo(int(self.rng.integers(self.num_photos)))
        h, w = photo.shape[:2]
        side = int(self.rng.integers(min(h, w) // 3, min(h, w) + 1))
        y, x = int(self.rng.integers(0, h - side + 1)), int(self.rng.integers(0, w - side + 1))
        crop = photo[y: y + side, x: x + side]
        return cv2.resize(crop, (self.size, self.size), interpolation=cv2.INTER_AREA)


def texel_for(distance: float, focal: float, rng: np.random.Generator, size: int) -> float:
    """Metres per texture pixel: about one image pixel's footprint at ``distance`` (so textures are
    neither heavily aliased nor blurry), and at least enough for the texture to span 1.5 m."""
    return max(distance / focal * rng.uniform(0.6, 1.5), 1.5 / size)


def wall_planes(room: Room, textures: TextureSource, focal: float, rng: np.random.Generator) -> list[Plane]:
    """The six walls, unbounded planes (from inside a convex room the nearest hit is its wall)."""
    planes = []
    eye = np.eye(3)
    for axis in range(3):
        u_axis, v_axis = eye[(axis + 1) % 3], eye[(axis + 2) % 3]
        for bound in (room.lo, room.hi):
            distance = float(np.abs(bound[axis]))
            planes.append(Plane(eye[axis], float(bound[axis]), bound * eye[axis] + room.lo * (1 - eye[axis]),
                                u_axis, v_axis, textures.draw(), texel_for(distance, focal, rng, textures.size)))
    return planes


def box_planes(centre: np.ndarray, half: np.ndarray, R: np.ndarray, textures: TextureSource,
               texel: float) -> list[Plane]:
    """Six bounded faces of a box (axes = columns of R, half extents ``half``); one texture per box."""
    texture = textures.draw()
    faces = []
    for k in range(3):
        i, j = (k + 1) % 3, (k + 2) % 3
        for sign in (-1.0, 1.0):
            normal = sign * R[:, k]
            face_centre = centre + sign * half[k] * R[:, k]
            origin = face_centre - half[i] * R[:, i] - half[j] * R[:, j]
            faces.append(Plane(normal, float(normal @ face_centre), origin, R[:, i], R[:, j], texture, texel,
                               extent=(2 * half[i], 2 * half[j])))
    return faces


def sample_boxes(rng: np.random.Generator, room: Room, cameras: Sequence[np.ndarray], target: np.ndarray,
                 textures: TextureSource, focal: float, conf: DictConfig) -> list[Plane]:
    """Occluders between the cameras and the back wall, never containing (or touching) a camera."""
    centres = [-T[:3, :3].T @ T[:3, 3] for T in cameras]
    planes: list[Plane] = []
    count = int(rng.integers(int(conf.num_boxes[0]), int(conf.num_boxes[1]) + 1))
    for _ in range(count):
        half = np.array([uniform(rng, conf.box_size) for _ in range(3)]) / 2
        if rng.random() < conf.slab_prob:
            half[int(rng.integers(3))] = rng.uniform(0.02, 0.08)
        # around the line of sight to the target, from near the cameras to beyond the target
        along = rng.uniform(0.3, 1.4) * target
        centre = along + rng.uniform(-1.0, 1.0, 3) * np.array([1.5, 0.8, 1.0])
        radius = float(np.linalg.norm(half))
        if not room.contains(centre, radius) or min(np.linalg.norm(centre - c) for c in centres) < radius + 0.6:
            continue
        R = rotation_about(np.array([0.0, 1.0, 0.0]), rng.uniform(-60, 60)) @ \
            rotation_about(rng.normal(size=3), rng.uniform(-20, 20))
        distance = float(np.linalg.norm(centre))
        planes += box_planes(centre, half, R, textures, texel_for(distance, focal, rng, textures.size))
    return planes


# ---- degradation -------------------------------------------------------------------------------
def shading(image: np.ndarray, rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """A linear illumination gradient (gain 1 +- amplitude across the image): non-global lighting."""
    h, w = image.shape
    angle = rng.uniform(0, 2 * np.pi)
    u, v = np.meshgrid(np.linspace(-1, 1, w), np.linspace(-1, 1, h))
    gain = 1.0 + rng.uniform(-amplitude, amplitude) * (np.cos(angle) * u + np.sin(angle) * v) / np.sqrt(2)
    return np.clip(image * gain, 0, 255).astype(np.uint8)


def motion_blur(image: np.ndarray, rng: np.random.Generator, length_range: Sequence[int]) -> np.ndarray:
    """Linear motion blur (a centred, symmetric kernel: the geometry does not move)."""
    length = int(rng.integers(int(length_range[0]), int(length_range[1]) + 1))
    kernel = np.zeros((length, length), np.float32)
    kernel[length // 2, :] = 1.0 / length
    rot = cv2.getRotationMatrix2D(((length - 1) / 2, (length - 1) / 2), rng.uniform(0, 180), 1.0)
    kernel = cv2.warpAffine(kernel, rot, (length, length))
    return cv2.filter2D(image, -1, kernel / max(kernel.sum(), 1e-6), borderType=cv2.BORDER_REFLECT)


def degrade(image: np.ndarray, rng: np.random.Generator, conf: DictConfig) -> np.ndarray:
    image = shading(image, rng, float(conf.degrade.shading))
    if rng.random() < conf.degrade.motion_blur_prob:
        image = motion_blur(image, rng, conf.degrade.motion_blur_length)
    return photometric(image, rng, conf.photometric)


# ---- one pair ----------------------------------------------------------------------------------
def intrinsics(focal: float, width: int, height: int) -> np.ndarray:
    return np.array([[focal, 0, (width - 1) / 2], [0, focal, (height - 1) / 2], [0, 0, 1.0]])


def render_scene_pair(seed: int, conf: DictConfig, num_photos: int = 0, photo: Any = None) -> ScenePair:
    """The pair drawn from ``seed``; ``photo(i)`` reads photo i of ``num_photos`` (for textures)."""
    rng = np.random.default_rng(seed)
    height, width = (int(v) for v in conf.image_size)
    focal = uniform(rng, conf.camera.focal) * width
    Ks = tuple(intrinsics(focal * rng.uniform(0.95, 1.05), width, height) for _ in range(2))
    room = sample_room(rng, conf.scene)
    T0, T1, target = sample_cameras(rng, room, conf.camera)
    textures = TextureSource(rng, conf.scene, num_photos, photo)
    planes = wall_planes(room, textures, focal, rng)
    planes += sample_boxes(rng, room, (T0, T1), target, textures, focal, conf.scene)
    rendered = [render_planes(planes, K, T, width, height) for K, T in zip(Ks, (T0, T1), strict=True)]
    images = tuple(degrade(image, rng, conf) for image, _ in rendered)
    return ScenePair(images, (rendered[0][1], rendered[1][1]), Ks, T1 @ invert_transform(T0))


# ---- training datasets ---------------------------------------------------------------------------
class ScenePairs(FeaturePairs):
    """Batches for the two-view model with depth ground truth (as MegaDepth training):
    features (or, ``features_in: model``, images) of both views, ``image_size0/1``, ``depth0/1``,
    ``K0/1``, ``T_0to1``."""

    cache_fields = ("seed", "features", *GENERATION_KEYS)
    cache_prefix = "scenes-"

    def __init__(self, conf: DictConfig, images: Sequence[Path], num_pairs: int, split: str) -> None:
        super().__init__(conf, images, num_pairs, split, SEED_OFFSETS[split])

    def make_item(self, index: int) -> dict[str, torch.Tensor]:
        pair = render_scene_pair(self.seed + index, self.conf, len(self.images), self.photo)
        item = {"T_0to1": torch.from_numpy(pair.T_0to1).float(), **self.view_features(pair.images)}
        for i in (0, 1):
            item[f"depth{i}"] = torch.from_numpy(pair.depths[i])
            item[f"K{i}"] = torch.from_numpy(pair.K[i]).float()
            h, w = pair.depths[i].shape
            item[f"image_size{i}"] = torch.tensor([w, h], dtype=torch.float32)
        return item


def training_photos(conf: DictConfig) -> tuple[list[Path], list[Path]]:
    """(train, val) photos by the split of the homography dataset (none without ``root``)."""
    if conf.root is None:
        return [], []
    return split_images(list_images(Path(conf.root)), conf.val_fraction, conf.val_images, int(conf.seed))


def _check_ranges(conf: DictConfig) -> None:
    if not 0.0 <= float(conf.camera.narrow_baseline_prob) <= 1.0:
        raise ConfigError(f"data.camera.narrow_baseline_prob must be in [0, 1], got {conf.camera.narrow_baseline_prob}")
    if float(conf.camera.max_scale_ratio) < 1.0:
        raise ConfigError(f"data.camera.max_scale_ratio must be >= 1, got {conf.camera.max_scale_ratio}")
    if int(conf.scene.num_boxes[0]) > int(conf.scene.num_boxes[1]):
        raise ConfigError(f"data.scene.num_boxes must be [min, max], got {list(conf.scene.num_boxes)}")


def scene_conf(conf: ConfLike, owner: str = "data (scenes)") -> DictConfig:
    merged = merge_strict(DEFAULT_CONF, conf, owner=owner, open_keys=("features",))
    _check_ranges(merged)
    return merged


def build_scene_datasets(conf: ConfLike) -> tuple[ScenePairs, ScenePairs]:
    """(train, val): training scenes textured by training photos only, validation scenes by the
    validation photos (both with generated textures too)."""
    conf = scene_conf(conf)
    train_photos, val_photos = training_photos(conf)
    return (ScenePairs(conf, train_photos, conf.train_pairs, "train"),
            ScenePairs(conf, val_photos, conf.val_pairs, "val"))


# ---- mixed scenes + homographies --------------------------------------------------------------------
MIXED_CONF: dict[str, Any] = {
    **DEFAULT_CONF,
    "name": "mixed",
    "scene_fraction": 0.5,  # probability that pair i is a scene (a seeded coin per index)
    "homography": homographies.DEFAULT_CONF["homography"],
}


class MixedPairs(torch.utils.data.Dataset):
    """Pair i is pair i of the scene set or of the homography set, by a coin seeded with i.

    Both kinds get the same keys, so that they batch together: scenes a placeholder
    ``H_0to1`` (identity), homographies placeholder depth (0 = unknown), intrinsics and pose;
    ``gt_from_depth`` (bool) tells the two-view model which geometry labels the pair.
    """

    def __init__(self, scenes: ScenePairs, homography_pairs: homographies.HomographyPairs, fraction: float,
                 seed: int) -> None:
        if len(scenes) != len(homography_pairs):
            raise ValueError(f"MixedPairs: {len(scenes)} scene pairs vs {len(homography_pairs)} homography pairs")
        self.scenes, self.homographies = scenes, homography_pairs
        self.fraction, self.seed = float(fraction), int(seed)
        self.image_size = tuple(int(v) for v in scenes.conf.image_size)

    def __len__(self) -> int:
        return len(self.scenes)

    def is_scene(self, index: int) -> bool:
        return bool(np.random.default_rng([self.seed, MIXED_SALT, int(index)]).random() < self.fraction)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if self.is_scene(index):
            item = dict(self.scenes[index])
            item["H_0to1"] = torch.eye(3)
            item["gt_from_depth"] = torch.tensor(True)
            return item
        item = dict(self.homographies[index])
        height, width = self.image_size
        for i in (0, 1):
            item[f"depth{i}"] = torch.zeros((height, width))
            item[f"K{i}"] = torch.eye(3)
        item["T_0to1"] = torch.eye(4)
        item["gt_from_depth"] = torch.tensor(False)
        return item


def build_mixed_datasets(conf: ConfLike) -> tuple[MixedPairs, MixedPairs]:
    """(train, val) of mixed scenes and homographies; both kinds use the same photo split."""
    conf = merge_strict(MIXED_CONF, conf, owner="data (mixed)", open_keys=("features",))
    _check_ranges(conf)
    if not 0.0 <= float(conf.scene_fraction) <= 1.0:
        raise ConfigError(f"data.scene_fraction must be in [0, 1], got {conf.scene_fraction}")
    if conf.root is None:
        raise ConfigError("mixed: set data.root to a folder of photos (the homography pairs need them)")
    train_photos, val_photos = training_photos(conf)
    out = []
    for split, photos, count in (("train", train_photos, conf.train_pairs), ("val", val_photos, conf.val_pairs)):
        out.append(MixedPairs(ScenePairs(conf, photos, count, split),
                              homographies.HomographyPairs(conf, photos, count, split),
                              conf.scene_fraction, int(conf.seed)))
    return out[0], out[1]


# ---- the evaluation dataset ---------------------------------------------------------------------------
class SceneEvalPairs(PairDataset):
    """Held-out scene pairs (images, ``K0/1``, ``T_0to1``, ``depth0/1``) for pose evaluation.

    Seeds of their own (``SEED_OFFSETS['benchmark']``), textured by the photos the training
    recipe holds out (``root``, ``val_fraction``/``val_images``, ``seed`` as in the recipe), or by
    generated textures only when ``root`` is None.
    """

    default_conf: ClassVar[dict[str, Any]] = {
        **BASE_CONF,
        "download": False,
        **{k: DEFAULT_CONF[k] for k in ("val_fraction", "val_images", "seed", *GENERATION_KEYS)},
        "image_size": [480, 640],
        "num_pairs": 200,
        # index of the first pair: a set starting past the evaluation pairs (e.g. 1000) is a disjoint
        # calibration set for choosing thresholds
        "first_pair": 0,
    }
    dirname = "photos"

    def _check_conf(self) -> None:
        super()._check_conf()
        check_rendered(self)
        _check_ranges(self.conf)
        if int(self.conf.first_pair) < 0:
            raise ConfigError(f"SceneEvalPairs: data.first_pair must be >= 0, got {self.conf.first_pair}")

    def _init(self) -> None:
        self.images: list[Path] = []
        if self.conf.root is not None:  # else generated textures only
            if not self.root.exists():
                raise DatasetUnavailableError(f"SceneEvalPairs: data.root {self.root} does not exist: point it at "
                                              "the photos of the training recipe, or leave it unset")
            _, self.images = split_images(list_images(self.root), self.conf.val_fraction, self.conf.val_images,
                                          int(self.conf.seed))
        self._photos: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return int(self.conf.num_pairs)

    def pair_name(self, index: int) -> str:
        return f"scene_{int(self.conf.first_pair) + index:05d}"

    def _photo(self, index: int) -> np.ndarray:
        if index not in self._photos:
            self._photos[index] = read_image(self.images[index], grayscale=True)
        return self._photos[index]

    def _get(self, index: int) -> dict[str, Any]:
        seed = int(self.conf.seed) + SEED_OFFSETS["benchmark"] + int(self.conf.first_pair) + index
        pair = render_scene_pair(seed, self.conf, len(self.images), self._photo)
        size = (pair.images[0].shape[1], pair.images[0].shape[0])
        item: dict[str, Any] = {"name": self.pair_name(index), "scene": "scenes", "T_0to1": pair.T_0to1,
                                "load_error": None, "depth_error": None}
        for i in (0, 1):
            item.update({f"image{i}": pair.images[i], f"image_size{i}": size, f"original_image_size{i}": size,
                         f"K{i}": pair.K[i], f"depth{i}": pair.depths[i]})
        return item
