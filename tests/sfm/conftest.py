"""A generated room (three textured planes) seen from a few known poses, and a fast SIFT pipeline."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

import featmatch_core
from lightglue_ros.synthetic import RoomScene, default_K, trajectory

WIDTH, HEIGHT = 320, 240


@dataclass
class Scene:
    image_dir: Path
    names: list[str]
    K: np.ndarray
    poses: dict[str, np.ndarray]  # name -> T_cam_world
    depths: dict[str, np.ndarray]


@pytest.fixture(scope="session")
def room(tmp_path_factory) -> Scene:
    image_dir = tmp_path_factory.mktemp("room") / "images"
    image_dir.mkdir()
    scene, K = RoomScene(seed=0, texture_size=512), default_K(WIDTH, HEIGHT)
    names, poses, depths = [], {}, {}
    for i, T in enumerate(trajectory(5, step=0.25, seed=0)):
        image, depth = scene.render(K, T, WIDTH, HEIGHT)
        name = f"{i:03d}.png"
        cv2.imwrite(str(image_dir / name), image)
        names.append(name)
        poses[name], depths[name] = T, depth
    return Scene(image_dir, names, K, poses, depths)


@pytest.fixture(scope="session")
def sift_nn():
    """sift+nn at the images' own size (no upsampling to 1024 px): fast enough for CI."""
    return featmatch_core.load("sift+nn", ["extractor.resize=null", "extractor.max_num_keypoints=1024",
                                           "device=cpu"], download=False)


def pinhole(room: Scene):
    from featmatch_core.sfm.colmap import CameraSpec

    K = room.K  # OpenCV pixel centres; COLMAP's are +0.5
    return CameraSpec("PINHOLE", [K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5], "single")


MAPPING = ["mapping.min_model_size=3"]  # COLMAP keeps models of 10+ images by default


@pytest.fixture(scope="session")
def room_sfm(room, sift_nn, tmp_path_factory):
    """The whole chain run once on the room (exhaustive pairs), shared by the tests that read it."""
    from featmatch_core.sfm.reconstruct import reconstruct

    out = tmp_path_factory.mktemp("room_sfm")
    return reconstruct(room.image_dir, out, overrides=MAPPING, camera=pinhole(room), pipeline=sift_nn), out


class CountingPipeline:
    """Wraps a pipeline, counts extract / match_features calls, and can fail on the n-th call."""

    def __init__(self, pipeline, fail_extract_at: int | None = None, fail_match_at: int | None = None) -> None:
        self.pipeline = pipeline
        self.extractor, self.matcher, self.device = pipeline.extractor, pipeline.matcher, pipeline.device
        self.extract_calls = self.match_calls = 0
        self.fail_extract_at, self.fail_match_at = fail_extract_at, fail_match_at

    def extract(self, image):
        self.extract_calls += 1
        if self.extract_calls == self.fail_extract_at:
            raise KeyboardInterrupt
        return self.pipeline.extract(image)

    def match_features(self, feats0, feats1):
        self.match_calls += 1
        if self.match_calls == self.fail_match_at:
            raise KeyboardInterrupt
        return self.pipeline.match_features(feats0, feats1)
