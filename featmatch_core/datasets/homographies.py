"""Synthetic homography pairs from any folder of photos: the pre-training data of LightGlue.

Each pair is two views of one photo, each the photo seen through its own random
homography (a perturbed, rotated, scaled quadrilateral mapped onto the output frame), with
independent photometric augmentation (brightness, contrast, gamma, blur, noise, JPEG).
``H_0to1`` maps pixels of view 0 to view 1. Features of a frozen extractor are computed in
the dataset (so DataLoader workers parallelise them) and, because pair ``i`` of a split is
always drawn from the same seed, cached on disk and reused in later epochs. With
``features_in: model`` the dataset yields the views instead (``image0/1``, (1, H, W) float in
[0, 1]) and the model runs the extractor on the training device (``TwoViewModel``'s
``extractor``, padded by the same :func:`padded_features`): nothing is cached.

    train, val = build_homography_datasets({"root": "photos/", "features": {"name": "sift"}})
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
import torch
from omegaconf import DictConfig

from ..config import ConfigError, ConfLike, merge_strict, to_container
from ..files import atomic_write_bytes
from ..image import read_image
from .base import BASE_CONF, PairDataset
from .download import DatasetUnavailableError

# Pair i of a split is drawn from seed + offset + i. "benchmark" pairs are of the held-out
# (validation) photos but never the pairs that chose the best training checkpoint.
SEED_OFFSETS = {"train": 0, "val": 10_000_019, "benchmark": 20_000_033}

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".webp")

DEFAULT_CONF: dict[str, Any] = {
    "name": "homographies",
    "root": None,  # folder of images (searched recursively), or a .txt list of image paths
    "val_fraction": 0.15,  # images held out for validation (whole images, never seen in training)
    "val_images": None,  # or an explicit list of file names for validation
    "image_size": [384, 512],  # (H, W) of each view
    "train_pairs": 2000,  # pairs per epoch (pair i always comes from seed + i: cacheable)
    "val_pairs": 200,
    "seed": 0,
    "homography": {
        "scale": [0.6, 1.0],  # side of the source quadrilateral relative to the largest that fits
        "max_angle": 25.0,  # degrees of in-plane rotation
        "perspective": 0.15,  # corner displacement relative to the quad size
        "translation": 1.0,  # fraction of the free room used for shifting the quad
    },
    "photometric": {
        "enable": True,
        "brightness": 30.0,  # max added intensity
        "contrast": [0.7, 1.3],
        "gamma": [0.7, 1.4],
        "blur_prob": 0.3,
        "blur_sigma": [0.5, 1.5],
        "noise_std": [0.0, 6.0],
        "jpeg_prob": 0.3,
        "jpeg_quality": [40, 90],
    },
    "features": {"name": "sift", "max_num_keypoints": 512, "resize": None},  # frozen extractor conf
    # where that extractor runs: "dataset" (features in the items, cacheable) or "model" (the
    # items hold the views image0/1; the model extracts on its device, see FEATURES_IN)
    "features_in": "dataset",
    "cache_dir": None,  # where per-pair features are cached (None: no cache; features_in=dataset only)
}
# data.features_in: "dataset" computes data.features in the DataLoader workers; "model" gives
# images, for a model that runs the frozen extractor itself (TwoViewModel with model.extractor).
FEATURES_IN = ("dataset", "model")


def features_in_model(value: Any) -> bool:
    """Whether ``data.features_in`` asks for images (the model extracts); a bad value raises."""
    if value not in FEATURES_IN:
        raise ConfigError(f"data.features_in must be one of {list(FEATURES_IN)} ('dataset': features computed "
                          f"by the dataset; 'model': images, features computed by the model; the trainer also "
                          f"takes 'auto': model on CUDA), got {value!r}")
    return value == "model"


@torch.no_grad()
def padded_features(extractor: torch.nn.Module, images: torch.Tensor, max_num_keypoints: int
                    ) -> dict[str, torch.Tensor]:
    """Features of a (B, C, H, W) batch, every keypoint tensor padded with zeros (``keypoint_mask``
    False) or cut to ``max_num_keypoints`` so that views of different pairs batch together; the
    line tensors of a wireframe extractor (GlueStick) to its own ``max_num_lines``. The one padding
    of both the dataset (B = 1, per view) and the model (the batch of a view)."""
    feats = extractor({"image": images})
    n_lines = getattr(extractor, "max_num_lines", None)
    out = {}
    for key, value in feats.items():
        if key in ("image_size",):
            out[key] = value.float()
            continue
        length = int(n_lines) if key.startswith("line") and n_lines is not None else int(max_num_keypoints)
        pad = length - value.shape[1]
        if pad > 0:
            value = torch.cat([value, value.new_zeros((value.shape[0], pad, *value.shape[2:]))], 1)
        out[key] = value[:, :length]
    return out


def list_images(root: Path) -> list[Path]:
    root = Path(root).expanduser()
    if root.is_file() and root.suffix == ".txt":
        paths = [Path(line.strip()) for line in root.read_text().splitlines() if line.strip()]
        paths = [p if p.is_absolute() else root.parent / p for p in paths]
    elif root.is_dir():
        paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    else:
        raise ConfigError(f"homographies: data.root '{root}' is neither an image folder nor a .txt list")
    if not paths:
        raise ConfigError(f"homographies: no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    return paths


def split_images(paths: Sequence[Path], val_fraction: float, val_images: Sequence[str] | None,
                 seed: int) -> tuple[list[Path], list[Path]]:
    """Hold out whole images: by explicit names, else a seeded fraction (at least one each side)."""
    if val_images:
        names = set(val_images)
        val = [p for p in paths if p.name in names]
        missing = names - {p.name for p in val}
        if missing:
            raise ConfigError(f"homographies: val_images not found: {sorted(missing)}")
    else:
        order = np.random.default_rng(seed).permutation(len(paths))
        n_val = int(round(val_fraction * len(paths)))
        n_val = min(max(n_val, 1), len(paths) - 1) if len(paths) > 1 else 0
        val = [paths[i] for i in sorted(order[:n_val])]
    train = [p for p in paths if p not in set(val)]
    if not train:
        raise ConfigError("homographies: no training images left after the validation split")
    return train, val


# ---- geometry of one view ------------------------------------------------------------
def sample_quad(rng: np.random.Generator, src_size: tuple[int, int], out_size: tuple[int, int],
                conf: DictConfig) -> np.ndarray:
    """Corners (4, 2) in the source photo of the region that one view shows."""
    src_w, src_h = src_size
    out_w, out_h = out_size
    fit = min(src_w / out_w, src_h / out_h)  # largest axis-aligned quad with the output's aspect
    for _ in range(20):
        scale = rng.uniform(*conf.scale)
        w, h = out_w * fit * scale, out_h * fit * scale
        angle = np.deg2rad(rng.uniform(-conf.max_angle, conf.max_angle))
        corners = np.array([[-w / 2, -h / 2], [w / 2, -h / 2], [w / 2, h / 2], [-w / 2, h / 2]])
        corners += rng.uniform(-1, 1, (4, 2)) * conf.perspective * np.array([w, h]) / 2
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        corners = corners @ rot.T
        lo, hi = corners.min(0), corners.max(0)
        room_lo, room_hi = -lo, np.array([src_w - 1, src_h - 1]) - hi
        if (room_hi >= room_lo).all():
            centre = room_lo + (room_hi - room_lo) * (0.5 + (rng.random(2) - 0.5) * conf.translation)
            return corners + centre
    # the photo is too small for the rotation: fall back to the whole photo
    return np.array([[0, 0], [src_w - 1, 0], [src_w - 1, src_h - 1], [0, src_h - 1]], dtype=np.float64)


def perturb_quad(rng: np.random.Generator, quad: np.ndarray, src_size: tuple[int, int],
                 conf: DictConfig) -> np.ndarray:
    """A second quad overlapping ``quad``: rotated, scaled, shifted and corner-jittered about its centre.

    Views drawn independently often barely overlap; the second view is a perturbation of the
    first, as in the usual homography pre-training, so that most pairs share much content.
    """
    centre = quad.mean(0)
    size = np.linalg.norm(quad[2] - quad[0]) / np.sqrt(2)
    for _ in range(20):
        angle = np.deg2rad(rng.uniform(-conf.max_angle, conf.max_angle))
        scale = np.exp(rng.uniform(-1, 1) * np.log(1.0 / conf.scale[0]) / 2)
        rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        moved = (quad - centre) @ rot.T + centre
        moved += rng.uniform(-1, 1, (4, 2)) * conf.perspective * size / 2
        moved += rng.uniform(-1, 1, 2) * 0.2 * size * conf.translation
        if (moved >= 0).all() and (moved[:, 0] <= src_size[0] - 1).all() and (moved[:, 1] <= src_size[1] - 1).all():
            return moved
    return quad.copy()


def view_homography(quad: np.ndarray, out_size: tuple[int, int]) -> np.ndarray:
    """H mapping source-photo pixels to the view's pixels (quad corners -> output corners)."""
    w, h = out_size
    target = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], dtype=np.float32)
    return cv2.getPerspectiveTransform(quad.astype(np.float32), target).astype(np.float64)


def photometric(image: np.ndarray, rng: np.random.Generator, conf: DictConfig) -> np.ndarray:
    """Independent brightness/contrast/gamma/blur/noise/JPEG on a uint8 image."""
    if not conf.enable:
        return image
    x = image.astype(np.float32)
    mean = x.mean()
    x = (x - mean) * rng.uniform(*conf.contrast) + mean + rng.uniform(-conf.brightness, conf.brightness)
    x = 255.0 * (np.clip(x, 0, 255) / 255.0) ** rng.uniform(*conf.gamma)
    if rng.random() < conf.blur_prob:
        x = cv2.GaussianBlur(x, (0, 0), rng.uniform(*conf.blur_sigma))
    x = x + rng.normal(0, rng.uniform(*conf.noise_std), x.shape)
    x = np.clip(x, 0, 255).astype(np.uint8)
    if rng.random() < conf.jpeg_prob:
        quality = int(rng.integers(conf.jpeg_quality[0], conf.jpeg_quality[1] + 1))
        ok, buf = cv2.imencode(".jpg", x, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if ok:
            x = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    return x


def make_pair(photo: np.ndarray, rng: np.random.Generator, conf: DictConfig
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(view0, view1, H_0to1) of one grayscale photo."""
    out_h, out_w = (int(v) for v in conf.image_size)
    src_size = (photo.shape[1], photo.shape[0])
    quad0 = sample_quad(rng, src_size, (out_w, out_h), conf.homography)
    quad1 = perturb_quad(rng, quad0, src_size, conf.homography)
    H0 = view_homography(quad0, (out_w, out_h))
    H1 = view_homography(quad1, (out_w, out_h))
    views = [cv2.warpPerspective(photo, H, (out_w, out_h), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_REFLECT) for H in (H0, H1)]
    views = [photometric(v, rng, conf.photometric) for v in views]
    H_0to1 = H1 @ np.linalg.inv(H0)
    return views[0], views[1], H_0to1 / H_0to1[2, 2]


def seeded_pair(seed: int, num_photos: int, photo: Callable[[int], np.ndarray], conf: DictConfig
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pair drawn from ``seed``: which photo (``photo(i)`` reads photo i) and both views."""
    rng = np.random.default_rng(seed)
    return make_pair(photo(int(rng.integers(num_photos))), rng, conf)


# ---- the dataset ---------------------------------------------------------------------
class FeaturePairs(torch.utils.data.Dataset):
    """Generated pairs with frozen-extractor features: ``len`` pairs, pair i from ``seed + i``
    (deterministic, so its features cache on disk). Subclasses implement ``make_item(index)``
    (geometry + :meth:`view_features`) and may extend ``cache_fields``. With
    ``features_in: model`` :meth:`view_features` gives the views themselves, uncached."""

    # conf keys that shape a pair, hence its cached features (besides the extractor)
    cache_fields: tuple[str, ...] = ("image_size", "seed", "photometric", "features")
    cache_prefix = ""

    def __init__(self, conf: DictConfig, images: Sequence[Path], num_pairs: int, split: str,
                 seed_offset: int) -> None:
        self.conf = conf
        self.images = list(images)
        self.num_pairs = int(num_pairs)
        self.split = split
        self.seed = int(conf.seed) + seed_offset
        self._extractor = None
        self._photos: dict[int, np.ndarray] = {}
        self.images_only = features_in_model(conf.features_in)
        if self.images_only and conf.cache_dir:
            raise ConfigError("data.cache_dir caches features, and with data.features_in=model the model computes "
                              "them: set data.cache_dir=null")
        self.cache_dir = Path(conf.cache_dir) / self._cache_key() if conf.cache_dir else None

    def _cache_key(self) -> str:
        """Cached features depend on everything that shapes a pair and on the extractor."""
        plain = to_container(self.conf)
        relevant = {k: plain[k] for k in self.cache_fields}
        relevant["images"] = [str(p) for p in self.images]
        digest = hashlib.sha1(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:10]
        return f"{self.cache_prefix}{self.split}-{digest}"

    def __len__(self) -> int:
        return self.num_pairs

    @property
    def extractor(self):
        if self._extractor is None:  # built lazily: once per DataLoader worker, never at import
            from ..models import build_model

            self._extractor = build_model("extractor", self.conf.features).eval()
        return self._extractor

    def photo(self, index: int) -> np.ndarray:
        if index not in self._photos:
            self._photos[index] = read_image(self.images[index], grayscale=True)
        return self._photos[index]

    def make_item(self, index: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        cached = self._load_cached(index)
        if cached is not None:
            return cached
        item = self.make_item(index)
        self._save_cached(index, item)
        return item

    def view_features(self, views: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
        """``{key}{i}`` features of each view i; with ``features_in: model`` its image instead:
        ``image{i}`` (1, H, W) float in [0, 1] and ``image_size{i}`` (W, H)."""
        from ..image import to_tensor_image

        item = {}
        for i, view in enumerate(views):
            image = to_tensor_image(view)
            if self.images_only:
                item[f"image{i}"] = image[0]
                item[f"image_size{i}"] = torch.tensor([view.shape[1], view.shape[0]], dtype=torch.float32)
                continue
            feats = padded_features(self.extractor, image, int(self.conf.features.max_num_keypoints))
            for key, value in feats.items():
                item[f"{key}{i}"] = value[0]
        return item

    def _cache_path(self, index: int) -> Path | None:
        return self.cache_dir / f"{index:07d}.pt" if self.cache_dir is not None else None

    def _load_cached(self, index: int) -> dict[str, torch.Tensor] | None:
        path = self._cache_path(index)
        if path is None or not path.is_file():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a corrupt cache entry is recomputed, never trusted
            path.unlink(missing_ok=True)
            return None

    def _save_cached(self, index: int, item: dict[str, torch.Tensor]) -> None:
        path = self._cache_path(index)
        if path is not None:
            buf = io.BytesIO()
            torch.save(item, buf)
            atomic_write_bytes(path, buf.getvalue())


class HomographyPairs(FeaturePairs):
    """Homography pairs of photos (see the module docstring)."""

    cache_fields = ("image_size", "seed", "homography", "photometric", "features")

    def __init__(self, conf: DictConfig, images: Sequence[Path], num_pairs: int, split: str) -> None:
        super().__init__(conf, images, num_pairs, split, SEED_OFFSETS[split])

    def make_item(self, index: int) -> dict[str, torch.Tensor]:
        view0, view1, H = seeded_pair(self.seed + index, len(self.images), self.photo, self.conf)
        return {"H_0to1": torch.from_numpy(H).float(), **self.view_features((view0, view1))}


def build_homography_datasets(conf: ConfLike) -> tuple[HomographyPairs, HomographyPairs]:
    """(train, val) datasets from a data config; a missing folder fails here, before training."""
    conf = merge_strict(DEFAULT_CONF, conf, owner="data (homographies)", open_keys=("features",))
    if conf.root is None:
        raise ConfigError("homographies: set data.root to a folder of photos (or a .txt list of paths)")
    train_images, val_images = split_images(list_images(Path(conf.root)), conf.val_fraction,
                                            conf.val_images, int(conf.seed))
    return (HomographyPairs(conf, train_images, conf.train_pairs, "train"),
            HomographyPairs(conf, val_images, conf.val_pairs, "val"))


# ---- the evaluation dataset -------------------------------------------------------------
BENCHMARK_KEYS = ("val_fraction", "val_images", "image_size", "seed", "homography", "photometric")


class SyntheticHomographies(PairDataset):
    """Evaluation pairs (images + ``H_0to1``) of the photos a training recipe holds out.

    With the recipe's ``root``, ``val_fraction``/``val_images`` and ``seed`` it selects exactly the
    photos training never saw; its pairs come from their own seeds, so they are not the
    validation pairs that picked the best checkpoint either.
    """

    default_conf: ClassVar[dict[str, Any]] = {
        **BASE_CONF,
        "download": False,  # a folder of photos: nothing to download
        **{k: DEFAULT_CONF[k] for k in BENCHMARK_KEYS},
        "num_pairs": 200,
    }
    dirname = "photos"

    def _check_conf(self) -> None:
        super()._check_conf()
        if self.conf.resize is not None:
            raise ConfigError("SyntheticHomographies: views are generated at data.image_size; "
                              "set that instead of data.resize")
        if self.conf.download:
            raise ConfigError("SyntheticHomographies: a folder of photos cannot be downloaded (download=false)")

    def _init(self) -> None:
        if not self.root.exists():
            raise DatasetUnavailableError(
                f"SyntheticHomographies: data.root {self.root} does not exist: point it at the folder of photos "
                "(or .txt list) of the training recipe")
        _, self.images = split_images(list_images(self.root), self.conf.val_fraction, self.conf.val_images,
                                      int(self.conf.seed))
        self._photos: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return int(self.conf.num_pairs)

    def pair_name(self, index: int) -> str:
        return f"pair_{index:05d}"

    def _photo(self, index: int) -> np.ndarray:
        if index not in self._photos:
            self._photos[index] = read_image(self.images[index], grayscale=True)
        return self._photos[index]

    def _get(self, index: int) -> dict[str, Any]:
        seed = int(self.conf.seed) + SEED_OFFSETS["benchmark"] + index
        view0, view1, H = seeded_pair(seed, len(self.images), self._photo, self.conf)
        size = (view0.shape[1], view0.shape[0])
        return {
            "name": self.pair_name(index),
            "image0": view0,
            "image1": view1,
            "image_size0": size,
            "image_size1": size,
            "original_image_size0": size,
            "original_image_size1": size,
            "H_0to1": H,
            "load_error": None,
        }
