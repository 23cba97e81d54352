"""A generated room (three textured planes) seen from a few known poses, and a fast SIFT pipeline."""

from __future__ import annotations

import cv2
import pytest
from sfm_scene import HEIGHT, MAPPING, WIDTH, Scene, pinhole

import featmatch_core
from featmatch_core.datasets.room import RoomScene, default_K, trajectory


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


@pytest.fixture(scope="session")
def room_sfm(room, sift_nn, tmp_path_factory):
    """The whole chain run once on the room (exhaustive pairs), shared by the tests that read it."""
    from featmatch_core.sfm.reconstruct import reconstruct

    out = tmp_path_factory.mktemp("room_sfm")
    return reconstruct(room.image_dir, out, overrides=MAPPING, camera=pinhole(room), pipeline=sift_nn), out
