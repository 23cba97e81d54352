"""Crash-safe writing: results land complete under their final name or not at all."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np

PathLike = str | Path


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write to a temporary file beside ``path`` then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_image(path: PathLike, image_bgr: np.ndarray) -> Path:
    """Encode with OpenCV by the file extension and write atomically."""
    ext = Path(path).suffix or ".png"
    ok, buf = cv2.imencode(ext, image_bgr)
    if not ok:
        raise ValueError(f"OpenCV cannot encode an image as '{ext}'")
    return atomic_write_bytes(path, buf.tobytes())


def save_json(path: PathLike, obj: Any) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def figure_png(fig: Any, dpi: int = 110) -> bytes:
    """A matplotlib figure as PNG bytes (tight bounding box); the figure is closed."""
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return buffer.getvalue()


def save_figure(path: PathLike, fig: Any, dpi: int = 110) -> Path:
    """Write a matplotlib figure as PNG atomically and close it."""
    return atomic_write_bytes(path, figure_png(fig, dpi))
