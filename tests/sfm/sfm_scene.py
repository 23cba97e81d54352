"""Helpers of the sfm tests: the generated scene's record, a COLMAP camera for it, a counting pipeline."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

WIDTH, HEIGHT = 320, 240
MAPPING = ["mapping.min_model_size=3"]  # COLMAP keeps models of 10+ images by default


@dataclass
class Scene:
    image_dir: Path
    names: list[str]
    K: np.ndarray
    poses: dict[str, np.ndarray]  # name -> T_cam_world
    depths: dict[str, np.ndarray]


def pinhole(room: Scene):
    from featmatch_core.sfm.colmap import CameraSpec

    K = room.K  # OpenCV pixel centres; COLMAP's are +0.5
    return CameraSpec("PINHOLE", [K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5], "single")


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

    def match_features(self, feats0, feats1, image_states=None):
        self.match_calls += 1
        if self.match_calls == self.fail_match_at:
            raise KeyboardInterrupt
        return self.pipeline.match_features(feats0, feats1, image_states)
