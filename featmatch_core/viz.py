"""Drawings of keypoints and matches (OpenCV, so the ROS debug image can reuse them)."""

from __future__ import annotations

import cv2
import numpy as np


def _to_bgr(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    return np.ascontiguousarray(image[..., ::-1])  # RGB -> BGR


def score_colors(scores: np.ndarray) -> np.ndarray:
    """Red (low) to green (high) BGR colours for scores in [0, 1]."""
    s = np.clip(np.asarray(scores, dtype=np.float64), 0, 1)[:, None]
    return np.concatenate([np.zeros_like(s), 255 * s, 255 * (1 - s)], 1).astype(np.uint8)


def draw_matches(image0: np.ndarray, image1: np.ndarray, keypoints0: np.ndarray, keypoints1: np.ndarray,
                 matches: np.ndarray, scores: np.ndarray | None = None,
                 correct: np.ndarray | None = None, margin: int = 10,
                 title: str | None = None, lines0: np.ndarray | None = None,
                 lines1: np.ndarray | None = None, line_matches: np.ndarray | None = None) -> np.ndarray:
    """Side-by-side BGR picture of two images (RGB or gray uint8) with their matches.

    Lines are green/red by ``correct`` when given, else coloured by ``scores``; all
    keypoints are drawn as small blue dots. Line segments (``lines0``/``lines1``, (L, 2, 2)):
    unmatched ones thin grey, each matched pair (``line_matches``, (K, 2)) thick in a colour of
    its own in both images.
    """
    img0, img1 = _to_bgr(image0), _to_bgr(image1)
    h0, w0 = img0.shape[:2]
    h1, w1 = img1.shape[:2]
    canvas = np.full((max(h0, h1), w0 + margin + w1, 3), 255, np.uint8)
    canvas[:h0, :w0] = img0
    canvas[:h1, w0 + margin:] = img1
    offset = np.array([w0 + margin, 0.0])
    for x, y in np.asarray(keypoints0).reshape(-1, 2):
        cv2.circle(canvas, (int(round(x)), int(round(y))), 1, (255, 128, 0), -1, cv2.LINE_AA)
    for x, y in np.asarray(keypoints1).reshape(-1, 2) + offset:
        cv2.circle(canvas, (int(round(x)), int(round(y))), 1, (255, 128, 0), -1, cv2.LINE_AA)
    matches = np.asarray(matches, dtype=np.int64).reshape(-1, 2)
    if correct is not None:
        colors = np.where(np.asarray(correct, bool)[:, None], [[0, 200, 0]], [[0, 0, 255]]).astype(np.uint8)
    elif scores is not None:
        colors = score_colors(scores)
    else:
        colors = np.tile(np.array([[0, 200, 0]], np.uint8), (len(matches), 1))
    pts0 = np.asarray(keypoints0)[matches[:, 0]]
    pts1 = np.asarray(keypoints1)[matches[:, 1]] + offset
    for p0, p1, c in zip(pts0, pts1, colors, strict=False):
        a = (int(round(p0[0])), int(round(p0[1])))
        b = (int(round(p1[0])), int(round(p1[1])))
        cv2.line(canvas, a, b, tuple(int(v) for v in c), 1, cv2.LINE_AA)
        cv2.circle(canvas, a, 2, tuple(int(v) for v in c), -1, cv2.LINE_AA)
        cv2.circle(canvas, b, 2, tuple(int(v) for v in c), -1, cv2.LINE_AA)
    if lines0 is not None and lines1 is not None:
        _draw_segments(canvas, lines0, lines1, line_matches, offset)
    if title:
        for color, thickness in (((255, 255, 255), 4), ((0, 0, 0), 1)):
            cv2.putText(canvas, title, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.6, color, thickness, cv2.LINE_AA)
    return canvas


def _draw_segments(canvas: np.ndarray, lines0: np.ndarray, lines1: np.ndarray,
                   line_matches: np.ndarray | None, offset: np.ndarray) -> None:
    """Segments of both images on the side-by-side canvas; matched pairs share a colour."""
    lines0 = np.asarray(lines0, dtype=np.float64).reshape(-1, 2, 2)
    lines1 = np.asarray(lines1, dtype=np.float64).reshape(-1, 2, 2) + offset
    for segment in np.concatenate([lines0, lines1]):
        a, b = (tuple(int(round(v)) for v in p) for p in segment)
        cv2.line(canvas, a, b, (160, 160, 160), 1, cv2.LINE_AA)
    matches = np.zeros((0, 2), np.int64) if line_matches is None else np.asarray(line_matches).reshape(-1, 2)
    hues = (np.arange(len(matches)) * 47 % 180).astype(np.uint8)  # well-spread distinct hues
    hsv = np.stack([hues, np.full_like(hues, 255), np.full_like(hues, 230)], -1)[None]
    colors = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0] if len(matches) else np.zeros((0, 3), np.uint8)
    for (i, j), c in zip(matches, colors, strict=True):
        for segment in (lines0[i], lines1[j]):
            a, b = (tuple(int(round(v)) for v in p) for p in segment)
            cv2.line(canvas, a, b, tuple(int(v) for v in c), 2, cv2.LINE_AA)
