"""Extract features of an image folder (or a list of its images) into a features h5 file.

Incremental: images already in the file are skipped, so a run interrupted half-way resumes
where it stopped. Unreadable images are skipped and reported, never fatal.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from ..config import to_container
from ..image import read_image
from ..models.pipeline import Pipeline
from . import h5io

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pnm", ".bmp", ".tif", ".tiff", ".webp")
logger = logging.getLogger(__name__)


@dataclass
class ExtractionReport:
    extracted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already in the file
    failed: dict[str, str] = field(default_factory=dict)  # name -> why (unreadable image)
    seconds: float = 0.0


def list_images(image_dir: str | Path) -> list[str]:
    """Image files under ``image_dir`` (recursively), as sorted '/'-separated relative names."""
    root = Path(image_dir)
    if not root.is_dir():
        raise NotADirectoryError(f"no image folder at {root}")
    names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                   if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not names:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
    return names


def read_image_list(path: str | Path, image_dir: str | Path) -> list[str]:
    """Names of a list file (one per line, relative to ``image_dir``); a name without a file is an error."""
    names = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    missing = [n for n in names if not (Path(image_dir) / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{path} lists {len(missing)} image(s) absent from {image_dir}: "
                                f"{', '.join(missing[:10])}")
    return names


def features_fingerprint(pipeline: Pipeline) -> str:
    return h5io.fingerprint_of({"extractor": to_container(pipeline.extractor.conf)})


def extract_features(pipeline: Pipeline, image_dir: str | Path, features_path: str | Path,
                     names: Sequence[str] | None = None, overwrite: bool = False) -> ExtractionReport:
    """Features of ``names`` (default: every image under ``image_dir``) into ``features_path``."""
    start = time.perf_counter()
    image_dir, features_path = Path(image_dir), Path(features_path)
    names = list(names) if names is not None else list_images(image_dir)
    if overwrite:
        features_path.unlink(missing_ok=True)
    features_path.parent.mkdir(parents=True, exist_ok=True)
    report = ExtractionReport()
    with h5io.open_h5(features_path, "a") as f:
        h5io.drop_partial_groups(f)
        h5io.check_fingerprint(f, features_fingerprint(pipeline), "features")
        done = set(h5io.list_names(f))
        report.skipped = [n for n in names if n in done]
        todo = [n for n in names if n not in done]
        for name in tqdm(todo, desc="extracting features", unit="image", disable=not todo):
            try:
                image = read_image(image_dir / name)
            except OSError as err:  # FileNotFoundError included
                report.failed[name] = str(err)
                logger.warning("skipping %s: %s", name, err)
                continue
            h5io.write_features(f, name, pipeline.extract(image))
            f.flush()
            report.extracted.append(name)
    report.seconds = time.perf_counter() - start
    return report
