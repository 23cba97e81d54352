"""The officially released checkpoint files load unchanged, extras included, through both user paths:
``featmatch_core.load(conf)`` with ``weights=<path>``, and the cache directory as the downloader leaves it.

The files are built by tests/core/release_files.py from tests/fixtures/released_files.json (what the
released files hold) with random values; loading must put every value where the model uses it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from release_files import RELEASED, released_state, write_released_file

import featmatch_core
from featmatch_core import weights
from featmatch_core.models.matchers.lightglue import LightGlue, to_release_layout

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.timeout(120)]

Keymap = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def same_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return state


def gluestick_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"matcher.{k}": v for k, v in state.items()}


# weights id -> (how to reach the module in a pipeline, model state dict -> keys of the released file)
MODULES: dict[str, tuple[Callable[[object], torch.nn.Module], Keymap]] = {
    "superpoint_lightglue": (lambda p: p.matcher, to_release_layout),
    "disk_lightglue": (lambda p: p.matcher, to_release_layout),
    "aliked_lightglue": (lambda p: p.matcher, to_release_layout),
    "sift_lightglue": (lambda p: p.matcher, to_release_layout),
    "superglue_outdoor": (lambda p: p.matcher, same_keys),
    "gluestick_md": (lambda p: p.matcher, gluestick_keys),
    "superpoint_v1": (lambda p: p.extractor, same_keys),
    "disk-depth": (lambda p: p.extractor.model, same_keys),
    "aliked-n16": (lambda p: p.extractor.model, same_keys),
    "loftr_outdoor": (lambda p: p.model.net, same_keys),
}
WIREFRAME_POINTS = (lambda p: p.extractor.point_extractor, same_keys)

# named config -> {config section: weights id of the released file it loads}
PIPELINES = {
    "superpoint+lightglue": {"extractor": "superpoint_v1", "matcher": "superpoint_lightglue"},
    "disk+lightglue": {"extractor": "disk-depth", "matcher": "disk_lightglue"},
    "aliked+lightglue": {"extractor": "aliked-n16", "matcher": "aliked_lightglue"},
    "sift+lightglue": {"matcher": "sift_lightglue"},
    "superpoint+superglue": {"extractor": "superpoint_v1", "matcher": "superglue_outdoor"},
    "superpoint+lsd+gluestick": {"extractor": "superpoint_v1", "matcher": "gluestick_md"},
    "loftr": {"dense": "loftr_outdoor"},
}


@pytest.fixture
def offline(tmp_path, monkeypatch) -> Path:
    """No network, an empty torch.hub directory and a cache directory of our own."""
    monkeypatch.setenv(weights.OFFLINE_ENV, "1")
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(weights, "torch_hub_checkpoint_dir", lambda: tmp_path / "hub")
    return tmp_path / "cache"


def assert_loaded(pipe: object, name: str, section: str, weights_id: str, state: dict[str, torch.Tensor]) -> None:
    """Every tensor of the module equals the file's entry; no learned parameter was left out."""
    reach, keymap = WIREFRAME_POINTS if name.endswith("gluestick") and section == "extractor" else MODULES[weights_id]
    module = reach(pipe)
    ours = keymap({k: v.detach().cpu() for k, v in module.state_dict().items()})
    learned = set(keymap({k: torch.empty(0) for k, _ in module.named_parameters()}))
    assert learned <= set(state), sorted(learned - set(state))[:5]
    compared = 0
    for key, value in ours.items():
        if key in state:
            assert torch.equal(value.to(state[key].dtype), state[key]), f"{weights_id}: {key}"
            compared += 1
    assert compared >= len(learned) > 0
    assert not module.training


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_released_files_load_from_a_path(name, tmp_path, offline, caplog):
    files = {section: write_released_file(wid, tmp_path / "downloads" / wid, seed=i)
             for i, (section, wid) in enumerate(PIPELINES[name].items())}
    overrides = [f"{section}.weights={path}" for section, (path, _) in files.items()]
    with caplog.at_level(logging.INFO, logger="featmatch_core"):
        pipe = featmatch_core.load(name, overrides)
    for section, (path, state) in files.items():
        assert_loaded(pipe, name, section, PIPELINES[name][section], state)
        extras = RELEASED[PIPELINES[name][section]]["extras"]
        if extras:  # the unused entries are named once, at INFO, not as a warning or an error
            assert any(str(path) in r.message and "does not use" in r.message for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "ignoring" in r.message]


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_released_files_load_from_the_cache(name, offline):
    states = {}
    for i, (section, wid) in enumerate(PIPELINES[name].items()):
        expected = weights.cache_path(wid)
        path, states[section] = write_released_file(wid, expected.parent, seed=10 + i)
        assert path == expected  # the name the downloader gives the file
    pipe = featmatch_core.load(name)  # offline: found in the cache, nothing downloaded, no fallback
    for section, state in states.items():
        assert_loaded(pipe, name, section, PIPELINES[name][section], state)


def test_released_lightglue_gives_the_matches_of_the_same_weights_without_extras(tmp_path):
    """The .r entries change nothing: the file with them and a copy without them match identically."""
    path, state = write_released_file("sift_lightglue", tmp_path)
    plain = tmp_path / "plain.pth"
    torch.save({k: v for k, v in state.items() if not k.endswith(".r")}, plain)
    with_extras = LightGlue.from_pretrained({"features": "sift"}, weights=str(path))
    without = LightGlue.from_pretrained({"features": "sift"}, weights=str(plain))
    gen = torch.Generator().manual_seed(0)
    feats = {"keypoints": torch.rand(1, 64, 2, generator=gen) * 500,
             "descriptors": torch.randn(1, 64, 128, generator=gen),
             "scales": torch.rand(1, 64, generator=gen) + 1, "oris": torch.rand(1, 64, generator=gen),
             "image_size": torch.tensor([[500.0, 500.0]])}
    with torch.inference_mode():
        a = with_extras({"image0": feats, "image1": feats})
        b = without({"image0": feats, "image1": feats})
    assert torch.equal(a["matches0"], b["matches0"]) and torch.equal(a["matching_scores0"], b["matching_scores0"])


def released_lightglue(tmp_path: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> Path:
    state = released_state("superpoint_lightglue")
    edit(state)
    path = tmp_path / "superpoint_lightglue.pth"
    torch.save(state, path)
    return path


@pytest.mark.parametrize(("edit", "message"), [
    (lambda s: s.pop("cross_attn.4.to_v.weight"), r"(?s)missing 1 keys.*transformers\.4\.cross_attn\.to_v\.weight"),
    (lambda s: s.update({"self_attn.0.Wqkv.weight": torch.zeros(768, 128)}), "shape mismatch"),
    # a projection this configuration does not have: loading without it would silently change the model
    (lambda s: s.update({"input_proj.weight": torch.zeros(256, 256)}), r"(?s)unexpected 1 keys.*input_proj\.weight"),
])
def test_a_released_file_with_wrong_used_tensors_is_refused(tmp_path, edit, message):
    path = released_lightglue(tmp_path, edit)
    with pytest.raises(ValueError, match=message) as err:
        LightGlue.from_pretrained({"features": "superpoint"}, weights=str(path))
    assert str(path) in str(err.value)


def test_foreign_entries_are_ignored_with_one_warning(tmp_path, caplog):
    path = released_lightglue(tmp_path, lambda s: s.update({"train_step": torch.tensor(5)}))
    with caplog.at_level(logging.INFO, logger="featmatch_core"):
        LightGlue.from_pretrained({"features": "superpoint"}, weights=str(path))
        LightGlue.from_pretrained({"features": "superpoint"}, weights=str(path))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "train_step" in r.message]
    assert len(warnings) == 1 and str(path) in warnings[0].message


def test_pickled_objects_of_a_training_state_are_never_executed(tmp_path):
    """A training state may pickle objects of classes we do not have (its hyper-parameters):
    the weights still load; a pickle that would call a blocked function is refused."""
    path, state = write_released_file("loftr_outdoor", tmp_path)
    loaded = weights.load_checkpoint(path)
    assert set(loaded) == {f"matcher.{k}" for k in state}
    assert all(torch.equal(loaded[f"matcher.{k}"], v) for k, v in list(state.items())[:20])

    canary = tmp_path / "canary"
    canary.write_text("still here")

    class RemovesAFile:
        def __reduce__(self):
            import os
            return os.remove, (str(canary),)

    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": RemovesAFile()}, evil)
    with pytest.raises(ValueError, match=f"cannot read checkpoint {evil}"):
        weights.load_checkpoint(evil)
    assert canary.read_text() == "still here"


@pytest.mark.parametrize("content", [b"", b"not a checkpoint\n", "truncated"])
def test_unreadable_files_name_the_file(tmp_path, content):
    path = tmp_path / "superpoint_lightglue.pth"
    if content == "truncated":
        whole, _ = write_released_file("superpoint_lightglue", tmp_path / "whole")
        content = whole.read_bytes()[: whole.stat().st_size // 2]
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"cannot read checkpoint {path}.*truncated or corrupt"):
        LightGlue.from_pretrained({"features": "superpoint"}, weights=str(path))
