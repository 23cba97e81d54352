"""Generated images with known geometry, for tests, demos and homography pre-training."""

from __future__ import annotations

import cv2
import numpy as np


def random_texture(height: int = 480, width: int = 640, seed: int = 0) -> np.ndarray:
    """A textured uint8 grayscale image: multi-scale noise plus random shapes (corners, blobs).

    Rich in repeatable local structure, so that detectors find many well-localised points.
    """
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width), np.float32)
    for cell, weight in ((64, 0.5), (16, 0.3), (4, 0.2)):
        coarse = rng.random((height // cell + 2, width // cell + 2)).astype(np.float32)
        image += weight * cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    canvas = (np.clip(image, 0, 1) * 160 + 40).astype(np.uint8)
    for _ in range(int(height * width / 2500)):
        color = int(rng.integers(0, 256))
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        size = int(rng.integers(4, 24))
        if rng.random() < 0.5:
            cv2.rectangle(canvas, (x, y), (x + size, y + int(rng.integers(4, 24))), color, -1)
        else:
            pts = (np.array([x, y]) + rng.integers(-size, size, (3, 2))).astype(np.int32)
            cv2.fillPoly(canvas, [pts], color)
    return canvas


def sample_homography(size: tuple[int, int], seed: int = 0, max_angle_deg: float = 20.0,
                      scale_range: tuple[float, float] = (0.8, 1.2), perspective: float = 2e-4,
                      max_shift: float = 0.1) -> np.ndarray:
    """A random homography about the image centre: rotation, scale, shift, mild perspective."""
    w, h = size
    rng = np.random.default_rng(seed)
    angle = np.deg2rad(rng.uniform(-max_angle_deg, max_angle_deg))
    scale = rng.uniform(*scale_range)
    centre = np.array([[1, 0, -w / 2], [0, 1, -h / 2], [0, 0, 1]])
    rot = np.array([[scale * np.cos(angle), -scale * np.sin(angle), 0],
                    [scale * np.sin(angle), scale * np.cos(angle), 0], [0, 0, 1]])
    persp = np.eye(3)
    persp[2, :2] = rng.uniform(-perspective, perspective, 2)
    shift = np.array([[1, 0, w / 2 + rng.uniform(-max_shift, max_shift) * w],
                      [0, 1, h / 2 + rng.uniform(-max_shift, max_shift) * h], [0, 0, 1]])
    H = shift @ persp @ rot @ centre
    return H / H[2, 2]


def warp_image(image: np.ndarray, H: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Warp ``image`` into a (W, H) canvas so that ``x_out ~ H x_in``; borders replicate."""
    return cv2.warpPerspective(image, H, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def homography_pair(height: int = 480, width: int = 640, seed: int = 0, **kwargs
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image0, image1, H_0to1) from a random texture and a random homography."""
    image0 = random_texture(height, width, seed)
    H = sample_homography((width, height), seed=seed + 1, **kwargs)
    return image0, warp_image(image0, H, (width, height)), H
