"""HPatches sequences: image pairs related by a known homography.

Layout of the official release (``hpatches-sequences-release.tar.gz``)::

    <root>/hpatches-sequences-release/
        i_<name>/  (illumination changes, 57 sequences)   v_<name>/  (viewpoint changes, 59)
            1.ppm ... 6.ppm
            H_1_2 ... H_1_6   3x3 text, maps pixels of image 1 to image k: x_k ~ H x_1

``root`` may be the release folder itself, its parent (the default, under
:func:`~featmatch_core.datasets.base.data_dir`), any folder of sequence folders (even a
single ``v_graffiti/`` with ``1.ppm``, ``2.ppm``, ``H_1_2``) or one sequence folder.
Each sequence gives the pairs (1, k), k = 2..6, whose ``H_1_k`` file exists.

Evaluation protocol (Glue Factory's ``eval/hpatches.py``, the one the LightGlue paper uses):
images resized so that the *short* side is 480 px (``resize=480, resize_side='short'``; the
other side truncated to an int), ``H`` rescaled to match (``H' = S1 H S0^-1``), and the 8
sequences with very large images skipped (``ignore_large_images``), which leaves
52 i_ + 56 v_ = 108 sequences, 540 pairs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

from .base import (
    BASE_CONF,
    PairDataset,
    check_choice,
    join_errors,
    load_view,
    pair_views,
    read_matrix,
    scale_homography,
)
from .download import DatasetUnavailableError, ensure_archive_dataset

logger = logging.getLogger(__name__)

URL = "http://icvl.ee.ic.ac.uk/vbalnt/hpatches/hpatches-sequences-release.tar.gz"
SHA256 = None  # not published; verify by hand and record it here to have downloads checked
RELEASE = "hpatches-sequences-release"
#: Sequences with very large images, left out by earlier papers (D2-Net, SuperGlue, LightGlue)
#: and by Glue Factory when ``ignore_large_images`` is set. The spellings are the release's.
LARGE_SEQUENCES = ("i_contruction", "i_crownnight", "i_dc", "i_pencils", "i_whitebuilding",
                   "v_artisans", "v_astronautis", "v_talent")
IMAGE_EXTENSIONS = (".ppm", ".png", ".jpg", ".jpeg", ".pgm")


def _image_path(sequence: Path, index: int) -> Path | None:
    for ext in IMAGE_EXTENSIONS:
        path = sequence / f"{index}{ext}"
        if path.is_file():
            return path
    return None


def _is_sequence(folder: Path) -> bool:
    return folder.is_dir() and (_image_path(folder, 1) is not None or any(folder.glob("H_1_*")))


class HPatches(PairDataset):
    """HPatches pairs with ``H_0to1`` (float64, for the images as returned), ``scene`` (the
    sequence), ``is_illu`` (an ``i_`` sequence)."""

    default_conf: ClassVar[dict[str, Any]] = {
        **BASE_CONF,
        "resize": 480,
        "resize_side": "short",
        "subset": "all",  # all | i (illumination) | v (viewpoint)
        "ignore_large_images": True,  # skip LARGE_SEQUENCES, as the usual protocol does
    }
    dirname = "hpatches"
    url = URL

    def _check_conf(self) -> None:
        super()._check_conf()
        check_choice(self, "subset", ("all", "i", "v"))

    def _init(self) -> None:
        sequences = self._locate()
        if not sequences:
            parent = self.root.parent if self.root.name == RELEASE else self.root
            ensure_archive_dataset(parent, [RELEASE], URL, SHA256, download=self.conf.download, what="HPatches")
            sequences = self._locate()
            if not sequences:
                raise DatasetUnavailableError(f"HPatches: no sequence folders (i_*/v_* with 1.ppm and H_1_k) "
                                              f"under {self.root}")
        self.pairs: list[tuple[str, Path, Path, Path, Any]] = []  # (sequence, image 1, image k, H file, H)
        missing: list[Path] = []
        for seq in sequences:
            name = seq.name
            if self.conf.ignore_large_images and name in LARGE_SEQUENCES:
                continue
            if self.conf.subset != "all" and not name.startswith(f"{self.conf.subset}_"):
                continue
            found = 0
            for k in range(2, 7):
                h_path = seq / f"H_1_{k}"
                if not h_path.is_file():
                    continue
                path0, path1 = _image_path(seq, 1), _image_path(seq, k)
                if path0 is None or path1 is None:
                    missing += [seq / f"{i}.ppm" for i, p in ((1, path0), (k, path1)) if p is None]
                    continue
                self.pairs.append((name, path0, path1, h_path, read_matrix(h_path, (3, 3))))
                found += 1
            if found < 5:
                logger.info("HPatches sequence %s has %d of the 5 pairs", seq, found)
        if missing:
            unique = sorted(set(missing))
            listed = "\n".join(f"    {p}" for p in unique[:10])
            more = f"\n    ... and {len(unique) - 10} more" if len(unique) > 10 else ""
            raise DatasetUnavailableError(
                f"HPatches at {self.root} is incomplete: these images have an H_1_k file but are missing:\n"
                f"{listed}{more}\n  Extract {URL} again (delete the incomplete folder first).")
        if not self.pairs:
            raise DatasetUnavailableError(
                f"HPatches: no pairs under {self.root} with subset={self.conf.subset!r}, "
                f"ignore_large_images={self.conf.ignore_large_images} (sequences: "
                f"{', '.join(s.name for s in sequences)})")

    def _locate(self) -> list[Path]:
        root = self.root
        if (root / RELEASE).is_dir():
            root = root / RELEASE
        if not root.is_dir():
            return []
        if _is_sequence(root):
            return [root]
        return sorted(d for d in root.iterdir() if _is_sequence(d))

    @property
    def sequences(self) -> list[str]:
        return sorted({p[0] for p in self.pairs})

    def __len__(self) -> int:
        return len(self.pairs)

    def pair_name(self, index: int) -> str:
        seq, _, path1, _, _ = self.pairs[index]
        return f"{seq}/1_{path1.stem}"

    def _get(self, index: int) -> dict[str, Any]:
        seq, path0, path1, _, H = self.pairs[index]
        view0 = load_view(path0, self.conf.resize, self.conf.resize_side)
        view1 = load_view(path1, self.conf.resize, self.conf.resize_side)
        return {
            "name": self.pair_name(index),
            "scene": seq,
            "is_illu": seq.startswith("i_"),
            **pair_views(view0, view1),
            "H_0to1": scale_homography(H, view0["scale"], view1["scale"]),
            "load_error": join_errors(view0["error"], view1["error"]),
        }
