"""Cache the features of a frozen extractor on MegaDepth: one h5 file per scene.

    python -m featmatch_core.scripts.export_megadepth --method sp|sift|aliked|disk [--num_workers N]
        [--data_root DIR] [--out DIR] [--resize 1024] [--max_num_keypoints 2048]
        [--scenes train val | LIST.txt | SCENE ...] [--device auto] [--half] [key=value ...]

Then train with ``data.load_features.do=true`` (the default ``--out`` is the folder the MegaDepth
recipes name in ``data.load_features.path``). The extractor config of ``--method`` is the one of
the MegaDepth recipes (``training/*-megadepth.yaml``); ``key=value`` arguments override it
(e.g. ``nms_radius=4``), and the recipe's ``data.features`` must then say the same: each file
records its extractor config and resize, and training refuses files that do not match.

Images are read and resized by ``--num_workers`` DataLoader workers, exactly as the training
dataset does; the extractor runs in this process (on CUDA when available). Every file is written
to a temporary name and renamed when complete; scenes whose file exists are skipped, so an
interrupted export continues where it stopped. ``--half`` stores descriptors as float16 (half
the disk space; training then sees descriptors rounded to float16).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..config import ConfigError, parse_dotlist, to_container
from ..datasets.megadepth_train import (
    SCENE_LIST_DIR,
    TRAIN_SCENES,
    VAL_SCENES,
    FeatureCache,
    MegaDepthPairs,
    MegaDepthUnavailableError,
    extract_features,
    extractor_signature,
    read_scene_list,
    write_feature_file,
)
from ..device import resolve_device

logger = logging.getLogger(__name__)

# The extractor configs of the MegaDepth recipes (as Glue Factory's: SuperPoint with NMS radius 3
# and no score threshold, ALIKED top-k without threshold, the others with their defaults). The
# keypoint budget is --max_num_keypoints; images are resized by --resize, not by the extractor.
METHODS: dict[str, dict[str, Any]] = {
    "sp": {"name": "superpoint", "detection_threshold": 0.0, "nms_radius": 3, "resize": None},
    "sift": {"name": "sift", "resize": None},
    "aliked": {"name": "aliked", "detection_threshold": 0.0, "resize": None},
    "disk": {"name": "disk", "resize": None},
}
EXPORT_ROOT = Path("outputs/exports")


def method_features(method: str, max_num_keypoints: int, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The extractor config of ``--method`` with the keypoint budget and ``key=value`` overrides."""
    if method not in METHODS:
        raise ConfigError(f"--method: unknown '{method}', expected one of {sorted(METHODS)}")
    conf = {**METHODS[method], "max_num_keypoints": int(max_num_keypoints)}
    return {**conf, **to_container(parse_dotlist(list(overrides)))}


def default_out(method: str, resize: int, max_num_keypoints: int) -> Path:
    return EXPORT_ROOT / f"megadepth-r{resize}-{method}-k{max_num_keypoints}"


def resolve_scenes(tokens: Sequence[str]) -> list[str]:
    """'train' / 'val' (the clean splits), scene list files, or scene ids."""
    named = {"train": TRAIN_SCENES, "val": VAL_SCENES}
    scenes: set[str] = set()
    for token in tokens:
        token = named.get(token, token)
        is_list = (SCENE_LIST_DIR / token).is_file() or token.endswith(".txt")
        scenes.update(read_scene_list(token) if is_list else [token])
    return sorted(scenes)


def _keep(item: Any) -> Any:
    return item  # DataLoader collate_fn: items as the dataset returns them (numpy images)


class SceneViews(torch.utils.data.Dataset):
    """The usable views of one scene, read and resized (in DataLoader workers)."""

    def __init__(self, pairs: MegaDepthPairs, scene: str) -> None:
        self.pairs, self.scene = pairs, scene
        self.views = pairs.views(scene)

    def __len__(self) -> int:
        return len(self.views)

    def __getitem__(self, index: int) -> dict[str, Any]:
        view = self.views[index]
        loaded = self.pairs.load_image(self.scene, view)
        if loaded["error"]:
            raise ValueError(f"MegaDepth scene {self.scene}: {loaded['error']}")
        return {"name": self.pairs.image_name(self.scene, view), "image": loaded["image"],
                "size": loaded["image_size"]}


def export_scene(pairs: MegaDepthPairs, scene: str, extractor: torch.nn.Module, cache: FeatureCache,
                 num_workers: int, device: torch.device, half: bool) -> Path:
    """Extract every usable view of ``scene`` into ``cache.path(scene)`` (atomic)."""
    loader = torch.utils.data.DataLoader(SceneViews(pairs, scene), batch_size=None, num_workers=num_workers,
                                         collate_fn=_keep)

    def entries() -> Iterator[tuple[str, tuple[int, int], dict[str, torch.Tensor]]]:
        for view in tqdm(loader, desc=f"scene {scene}", unit="image", leave=False):
            yield view["name"], view["size"], extract_features(extractor, view["image"], device)

    return write_feature_file(cache.path(scene), scene, cache.signature, cache.resize, entries(), half=half)


def export(features: dict[str, Any], scenes: Sequence[str], out: Path, data_root: Path | None = None,
           resize: int = 1024, num_workers: int = 0, device: str = "auto", half: bool = False,
           download: bool = True) -> dict[str, list[str]]:
    """Write ``out/<scene>.h5`` for every scene that has none; returns written and skipped scenes."""
    import h5py

    cache = FeatureCache(out, extractor_signature(features), resize)
    pairs = MegaDepthPairs({"root": str(data_root) if data_root else None, "download": download,
                            "resize": int(resize), "scenes": list(scenes), "num_per_scene": 0})
    done = [s for s in pairs.scenes if cache.path(s).is_file()]
    for scene in done:  # an existing file of another config is an error, before any work
        with h5py.File(cache.path(scene), "r") as handle:
            cache.check_attrs(handle, cache.path(scene))
    todo = [s for s in pairs.scenes if s not in done]
    if todo:
        from ..models import build_model

        torch_device = resolve_device(device)
        extractor = build_model("extractor", features).eval().to(torch_device)
        for scene in tqdm(todo, desc="scenes", unit="scene"):
            export_scene(pairs, scene, extractor, cache, num_workers, torch_device, half)
    return {"written": todo, "skipped": done}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m featmatch_core.scripts.export_megadepth",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", required=True, choices=sorted(METHODS), help="extractor")
    parser.add_argument("--num_workers", type=int, default=0, help="DataLoader workers reading the images")
    parser.add_argument("--data_root", type=Path, default=None,
                        help="folder holding megadepth/ (default: the data folder, downloaded if missing)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: outputs/exports/megadepth-r<resize>-<method>-k<max>)")
    parser.add_argument("--resize", type=int, default=1024, help="long side of the images (as data.resize)")
    parser.add_argument("--max_num_keypoints", type=int, default=2048)
    parser.add_argument("--scenes", nargs="+", default=["train", "val"],
                        help="'train', 'val' (the clean splits), scene list files or scene ids")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--half", action="store_true", help="store descriptors as float16")
    parser.add_argument("--no_download", action="store_true", help="fail instead of downloading MegaDepth")
    parser.add_argument("overrides", nargs="*", help="extractor config overrides key=value")
    args = parser.parse_intermixed_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    if args.num_workers < 0 or args.resize < 1 or args.max_num_keypoints < 1:
        parser.error("--num_workers must be >= 0, --resize and --max_num_keypoints >= 1")
    out = args.out or default_out(args.method, args.resize, args.max_num_keypoints)
    try:
        features = method_features(args.method, args.max_num_keypoints, args.overrides)
        result = export(features, resolve_scenes(args.scenes), out, args.data_root, args.resize,
                        args.num_workers, args.device, args.half, not args.no_download)
    except (ConfigError, MegaDepthUnavailableError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{len(result['written'])} scene(s) exported, {len(result['skipped'])} already there, in {out}.\n"
          f"Train from them with: data.load_features.do=true data.load_features.path={out} "
          f"data.resize={args.resize} and data.features = {features}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
