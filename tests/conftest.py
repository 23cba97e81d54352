"""Shared fixtures: generated images only (tests never need ../shared or downloads)."""

from __future__ import annotations

import pytest
import torch

from featmatch_core.datasets.synthetic import homography_pair


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path_factory):
    """Tests never reach the network and never touch the user's weight cache."""
    monkeypatch.setenv("FEATMATCH_OFFLINE", "1")
    monkeypatch.setenv("FEATMATCH_CACHE_DIR", str(tmp_path_factory.mktemp("weights_cache")))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))
    yield


@pytest.fixture(scope="session")
def synthetic_pair():
    """(image0, image1, H_0to1): a 640x480 texture and a random homography of it."""
    return homography_pair(480, 640, seed=3)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a test module (``pytestmark = pytest.mark.usefixtures(...)``): with
    another process on this 2-core machine, two threads stall each other at every parallel region."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
