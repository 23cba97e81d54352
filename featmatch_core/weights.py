"""Official checkpoints: URLs, checksums, cache directory and a resumable downloader.

PLACEHOLDER API - being implemented. resolve_weights(source, download) -> Path;
load_checkpoint(path) -> state dict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import torch


def resolve_weights(source: str, download: bool = True) -> Path:
    path = Path(source).expanduser()
    if path.is_file():
        return path
    raise FileNotFoundError(source)


def load_checkpoint(path: Path) -> Dict[str, torch.Tensor]:
    return torch.load(str(path), map_location="cpu", weights_only=True)
