"""COLMAP through pycolmap: database import, two-view verification, incremental mapping, export.

Written against pycolmap 4.x (images belong to frames and rigs, which ``pycolmap.import_images``
creates). Keypoints go in with +0.5: our files use the OpenCV pixel convention and COLMAP puts
the centre of the top-left pixel at (0.5, 0.5), as hloc does.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pycolmap
from tqdm import tqdm

from . import h5io
from .pairs import Pair, write_pairs

logger = logging.getLogger(__name__)
CAMERA_MODES = {"auto": pycolmap.CameraMode.AUTO, "single": pycolmap.CameraMode.SINGLE,
                "per_folder": pycolmap.CameraMode.PER_FOLDER, "per_image": pycolmap.CameraMode.PER_IMAGE}
FEW_KEYPOINTS = 50  # an unregistered image with fewer keypoints is reported as such


@dataclass
class CameraSpec:
    """How cameras enter the database: ``model`` None = COLMAP's default (SIMPLE_RADIAL) with the
    focal length from EXIF (or 1.2 x the image size); ``params`` fixes the intrinsics."""

    model: str | None = None
    params: Sequence[float] | None = None
    mode: str = "auto"  # auto | single | per_folder | per_image

    def reader_options(self) -> pycolmap.ImageReaderOptions:
        options = pycolmap.ImageReaderOptions()
        if self.model is not None:
            options.camera_model = self.model
        if self.params is not None:
            if self.model is None:
                raise ValueError("camera params need a camera model (e.g. PINHOLE: fx,fy,cx,cy)")
            expected = len(pycolmap.Camera.create_from_model_name(0, self.model, 1.0, 1, 1).params)
            if len(self.params) != expected:
                raise ValueError(f"camera model {self.model} takes {expected} params, got {len(self.params)}")
            options.camera_params = ",".join(f"{float(p):.10g}" for p in self.params)
        return options

    def camera_mode(self) -> pycolmap.CameraMode:
        if self.mode not in CAMERA_MODES:
            raise ValueError(f"unknown camera mode '{self.mode}'; use one of {sorted(CAMERA_MODES)}")
        return CAMERA_MODES[self.mode]


@contextlib.contextmanager
def colmap_logging(verbose: bool) -> Iterator[None]:
    """COLMAP's own log (glog) on stderr only when verbose; warnings and errors always."""
    previous = pycolmap.logging.minloglevel
    if not verbose:
        pycolmap.logging.minloglevel = pycolmap.logging.WARNING
    try:
        yield
    finally:
        pycolmap.logging.minloglevel = previous


def create_database(database_path: str | Path, image_dir: str | Path, names: Sequence[str],
                    camera: CameraSpec | None = None, verbose: bool = False) -> dict[str, int]:
    """A new database (any old one is replaced) holding cameras and images; returns name -> image id."""
    camera = camera or CameraSpec()
    database_path = Path(database_path)
    database_path.parent.mkdir(parents=True, exist_ok=True)
    database_path.unlink(missing_ok=True)
    if not names:
        raise ValueError("no images to put in the database")
    with pycolmap.Database.open(database_path):
        pass  # import_images needs the file to exist
    with colmap_logging(verbose):
        pycolmap.import_images(database_path, image_dir, camera.camera_mode(), image_names=list(names),
                               options=camera.reader_options())
    with pycolmap.Database.open(database_path) as db:
        ids = {image.name: image.image_id for image in db.read_all_images()}
    absent = [n for n in names if n not in ids]
    if absent:
        logger.warning("COLMAP could not import %d image(s): %s", len(absent), ", ".join(absent[:10]))
    return ids


def import_features(database_path: str | Path, image_ids: Mapping[str, int], features_path: str | Path) -> None:
    with h5io.open_h5(features_path) as f, pycolmap.Database.open(database_path) as db:
        for name, image_id in tqdm(image_ids.items(), desc="importing keypoints", unit="image"):
            keypoints = h5io.read_keypoints(f, name) + 0.5  # OpenCV -> COLMAP pixel centres
            db.write_keypoints(image_id, keypoints.astype(np.float32))


def import_matches(database_path: str | Path, image_ids: Mapping[str, int], pairs: Sequence[Pair],
                   matches_path: str | Path, min_match_score: float | None = None) -> int:
    """Raw matches of every pair (either order once); returns the number of pairs written."""
    written = 0
    with h5io.open_h5(matches_path) as f, pycolmap.Database.open(database_path) as db:
        for name0, name1 in tqdm(h5io.missing_pairs(None, pairs), desc="importing matches", unit="pair"):
            if name0 not in image_ids or name1 not in image_ids:
                continue  # an image COLMAP could not import (warned in create_database)
            matches, scores = h5io.read_matches(f, name0, name1)
            if min_match_score is not None:
                matches = matches[scores > min_match_score]
            db.write_matches(image_ids[name0], image_ids[name1], matches.astype(np.uint32))
            written += 1
    return written


def verify_matches(database_path: str | Path, pairs: Sequence[Pair], work_dir: str | Path,
                   options: Mapping[str, Any] | None = None, verbose: bool = False) -> int:
    """COLMAP's two-view geometric verification (RANSAC on E/F/H); returns the verified pair count."""
    pairs_path = write_pairs(Path(work_dir) / "pairs-verify.txt", h5io.missing_pairs(None, pairs))
    with colmap_logging(verbose):
        pycolmap.verify_matches(database_path, pairs_path, options=pycolmap.TwoViewGeometryOptions(dict(options or {})))
    with pycolmap.Database.open(database_path) as db:
        return int(db.num_verified_image_pairs())


def incremental_mapping(database_path: str | Path, image_dir: str | Path, output_dir: str | Path,
                        options: Mapping[str, Any] | None = None, verbose: bool = False
                        ) -> pycolmap.Reconstruction | None:
    """COLMAP's incremental mapper; returns the largest model (None when nothing could be reconstructed).

    Every model is written under ``output_dir/models/<index>`` in COLMAP's binary format.
    """
    models_dir = Path(output_dir) / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    with pycolmap.Database.open(database_path) as db:
        num_images = int(db.num_images())
    bars: list[tqdm] = []

    def new_model() -> None:
        if bars:
            bars[-1].close()
        bars.append(tqdm(total=num_images, desc=f"mapping (model {len(bars)})", unit="image"))
        bars[-1].update(2)

    opts = pycolmap.IncrementalPipelineOptions(dict(options or {}))
    try:
        with colmap_logging(verbose):
            models = pycolmap.incremental_mapping(database_path, image_dir, models_dir, options=opts,
                                                  initial_image_pair_callback=new_model,
                                                  next_image_callback=lambda: bars[-1].update(1))
    finally:
        for bar in bars:
            bar.close()
    if not models:
        return None
    return max(models.values(), key=lambda rec: rec.num_reg_images())


def export_reconstruction(reconstruction: pycolmap.Reconstruction, output_dir: str | Path,
                          formats: Sequence[str] = ("bin", "txt", "ply")) -> dict[str, Path]:
    """COLMAP binary model in ``sfm/``, text model in ``sfm_text/``, coloured points in ``points.ply``."""
    output_dir = Path(output_dir)
    paths: dict[str, Path] = {}
    for fmt in formats:
        if fmt == "bin":
            paths[fmt] = output_dir / "sfm"
            paths[fmt].mkdir(parents=True, exist_ok=True)
            reconstruction.write_binary(paths[fmt])
        elif fmt == "txt":
            paths[fmt] = output_dir / "sfm_text"
            paths[fmt].mkdir(parents=True, exist_ok=True)
            reconstruction.write_text(paths[fmt])
        elif fmt == "ply":
            paths[fmt] = output_dir / "points.ply"
            tmp = output_dir / ".points.ply.tmp.ply"
            reconstruction.export_PLY(tmp)
            tmp.replace(paths[fmt])
        else:
            raise ValueError(f"unknown export format '{fmt}'; use bin, txt or ply")
    return paths


def summarize(reconstruction: pycolmap.Reconstruction | None, database_path: str | Path,
              names: Sequence[str]) -> dict[str, Any]:
    """Registered images, points, mean track length, mean reprojection error, and why others are missing."""
    with pycolmap.Database.open(database_path) as db:
        ids = {image.name: image.image_id for image in db.read_all_images()}
        num_keypoints = {name: int(db.num_keypoints_for_image(i)) for name, i in ids.items()}
    registered = set()
    if reconstruction is not None:
        registered = {reconstruction.images[i].name for i in reconstruction.reg_image_ids()}
    unregistered = {}
    for name in names:
        if name in registered:
            continue
        if name not in ids:
            unregistered[name] = "not imported by COLMAP"
        elif num_keypoints[name] < FEW_KEYPOINTS:
            unregistered[name] = f"too few features ({num_keypoints[name]} keypoints)"
        else:
            unregistered[name] = f"not registered by the mapper ({num_keypoints[name]} keypoints)"
    summary: dict[str, Any] = {"images": len(names), "registered": len(registered), "points": 0,
                               "mean_track_length": 0.0, "mean_reprojection_error": float("nan"),
                               "mean_observations_per_image": 0.0, "unregistered": unregistered}
    if reconstruction is not None:
        summary.update(points=int(reconstruction.num_points3D()),
                       mean_track_length=float(reconstruction.compute_mean_track_length()),
                       mean_reprojection_error=float(reconstruction.compute_mean_reprojection_error()),
                       mean_observations_per_image=float(reconstruction.compute_mean_observations_per_reg_image()))
    return summary


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    return fn(*args, **kwargs), time.perf_counter() - start
