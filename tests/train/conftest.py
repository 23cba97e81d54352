"""Fixtures of the training tests: generated photos only."""

from __future__ import annotations

import cv2
import pytest

from featmatch_core.datasets.synthetic import random_texture


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    """A folder of four generated 400x300 photos."""
    root = tmp_path_factory.mktemp("photos")
    for i in range(4):
        cv2.imwrite(str(root / f"p{i}.jpg"), random_texture(300, 400, seed=20 + i))
    return root
