"""Structure from motion of an image folder: features -> pairs -> matches -> COLMAP (pycolmap).

    python -m featmatch_core.sfm.reconstruct IMAGES OUT --conf sift+lightglue --pairs sequential:10
    python -m featmatch_core.sfm.reconstruct IMAGES OUT --camera PINHOLE --camera-params 700,700,320,240 \\
        --camera-mode single model.extractor.max_num_keypoints=2048 mapping.mapper.init_min_tri_angle=8

OUT receives features.h5 and matches.h5 (hloc's layout), pairs.txt, database.db, the largest
model (sfm/ binary, sfm_text/ text, points.ply), summary.json and, with --cloud (needs open3d),
cloud.ply (statistical outliers removed) and its picture cloud.png; re-running resumes from the
h5 files (only missing images and pairs are computed). Overrides: ``model.*`` (the pipeline of
the named config), ``mapping.*`` (pycolmap.IncrementalPipelineOptions, e.g.
``mapping.min_model_size=3``), ``verification.*`` (pycolmap.TwoViewGeometryOptions, e.g.
``verification.ransac.max_error=2``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pycolmap

from ..config import ConfigError, list_named_configs, parse_dotlist, to_container
from ..files import save_json
from ..models.pipeline import Pipeline, load
from ..weights import WeightsUnavailableError
from . import colmap
from .extract import ExtractionReport, extract_features, list_images, read_image_list
from .match import MatchingReport, match_pairs
from .pairs import pairs_from_spec, write_pairs

OVERRIDE_SECTIONS = ("model", "mapping", "verification")


@dataclass
class SfmResult:
    reconstruction: pycolmap.Reconstruction | None
    summary: dict[str, Any]
    timings: dict[str, float]  # seconds per stage
    extraction: ExtractionReport
    matching: MatchingReport
    paths: dict[str, Path] = field(default_factory=dict)


def split_overrides(overrides: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``model.*`` / ``mapping.*`` / ``verification.*`` dotlist -> one nested dict per section."""
    parsed = to_container(parse_dotlist(list(overrides))) if overrides else {}
    unknown = sorted(set(parsed) - set(OVERRIDE_SECTIONS))
    if unknown:
        raise ConfigError(f"overrides must start with one of {', '.join(s + '.' for s in OVERRIDE_SECTIONS)}; "
                          f"got {', '.join(unknown)}")
    return {section: parsed.get(section, {}) for section in OVERRIDE_SECTIONS}


def check_colmap_options(mapping: dict[str, Any], verification: dict[str, Any]) -> None:
    """Build the pycolmap options once before any work so that a typo fails at once, by name."""
    for name, cls, values in (("mapping", pycolmap.IncrementalPipelineOptions, mapping),
                              ("verification", pycolmap.TwoViewGeometryOptions, verification)):
        try:
            cls(dict(values))
        except (AttributeError, TypeError, ValueError) as err:
            raise ConfigError(f"bad {name}.* override for {cls.__name__}: {err}") from None


def reconstruct(image_dir: str | Path, output_dir: str | Path, conf: str = "sift+nn",
                overrides: Sequence[str] = (), pairs: str = "exhaustive", camera: colmap.CameraSpec | None = None,
                image_names: Sequence[str] | None = None, min_match_score: float | None = None,
                export: Sequence[str] = ("bin", "txt", "ply"), overwrite: bool = False, verbose: bool = False,
                pipeline: Pipeline | None = None, download: bool = True, batch_size: int = 1) -> SfmResult:
    """The whole chain; every stage's output lands in ``output_dir``. ``batch_size``: pairs per
    matcher call (``match_pairs``; LightGlue at full depth batches them, for a GPU)."""
    image_dir, output_dir = Path(image_dir), Path(output_dir)
    sections = split_overrides(overrides)
    check_colmap_options(sections["mapping"], sections["verification"])
    names = list(image_names) if image_names is not None else list_images(image_dir)
    pair_list = pairs_from_spec(pairs, names)  # a pairs file naming unknown images fails here, before any work
    if pipeline is None:
        pipeline = load(conf, sections["model"], download=download)
    paths = {"features": output_dir / "features.h5", "matches": output_dir / "matches.h5",
             "pairs": output_dir / "pairs.txt", "database": output_dir / "database.db"}
    timings: dict[str, float] = {}

    extraction = extract_features(pipeline, image_dir, paths["features"], names, overwrite=overwrite)
    timings["extract"] = extraction.seconds
    usable = [n for n in names if n not in extraction.failed]
    dropped = set(extraction.failed)
    pair_list = [p for p in pair_list if not dropped & set(p)]
    write_pairs(paths["pairs"], pair_list)
    matching = match_pairs(pipeline, pair_list, paths["features"], paths["matches"], overwrite=overwrite,
                           batch_size=batch_size)
    timings["match"] = matching.seconds

    start = time.perf_counter()
    image_ids = colmap.create_database(paths["database"], image_dir, usable, camera, verbose)
    colmap.import_features(paths["database"], image_ids, paths["features"])
    colmap.import_matches(paths["database"], image_ids, pair_list, paths["matches"], min_match_score)
    timings["import"] = time.perf_counter() - start
    _, timings["verify"] = colmap.timed(colmap.verify_matches, paths["database"], pair_list, output_dir,
                                        sections["verification"], verbose)
    reconstruction, timings["map"] = colmap.timed(colmap.incremental_mapping, paths["database"], image_dir,
                                                  output_dir, sections["mapping"], verbose)
    if reconstruction is not None:
        paths.update(colmap.export_reconstruction(reconstruction, output_dir, export))
    summary = colmap.summarize(reconstruction, paths["database"], names)
    summary["unreadable"] = dict(extraction.failed)
    for name, reason in extraction.failed.items():
        summary["unregistered"][name] = f"unreadable image ({reason})"
    summary["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
    save_json(output_dir / "summary.json", _json_safe(summary))
    return SfmResult(reconstruction, summary, timings, extraction, matching, paths)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    return obj


def format_summary(summary: dict[str, Any]) -> str:
    lines = [
        f"registered images:       {summary['registered']} / {summary['images']}",
        f"3D points:               {summary['points']}",
        f"mean track length:       {summary['mean_track_length']:.2f}",
        f"mean reprojection error: {summary['mean_reprojection_error']:.3f} px",
        "time per stage:          " + ", ".join(f"{k} {v:.1f} s" for k, v in summary["timings_s"].items()),
    ]
    if summary["unregistered"]:
        lines.append(f"not registered ({len(summary['unregistered'])}):")
        lines += [f"  {name}: {why}" for name, why in sorted(summary["unregistered"].items())]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m featmatch_core.sfm.reconstruct", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", type=Path, help="image folder (names are paths relative to it)")
    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument("overrides", nargs="*", help="model.* / mapping.* / verification.* key=value overrides")
    parser.add_argument("--conf", default="sift+nn", help=f"named config ({', '.join(list_named_configs())}) "
                        "or a YAML path")
    parser.add_argument("--pairs", default="exhaustive",
                        help="exhaustive | sequential:WINDOW | path of a pairs file ('name0 name1' lines)")
    parser.add_argument("--image-list", type=Path, default=None, help="only these images (one name per line)")
    parser.add_argument("--camera", default=None, help="COLMAP camera model (default: SIMPLE_RADIAL from EXIF)")
    parser.add_argument("--camera-params", default=None, help="fixed intrinsics, comma-separated (e.g. fx,fy,cx,cy)")
    parser.add_argument("--camera-mode", default="auto", choices=sorted(colmap.CAMERA_MODES))
    parser.add_argument("--min-match-score", type=float, default=None, help="drop matches scored below this")
    parser.add_argument("--export", default="bin,txt,ply", help="comma-separated: bin, txt, ply")
    parser.add_argument("--cloud", action="store_true",
                        help="also cloud.ply without outliers and a picture cloud.png (needs open3d)")
    parser.add_argument("--overwrite", action="store_true", help="recompute features and matches")
    parser.add_argument("--offline", action="store_true", help="never download weights")
    parser.add_argument("--verbose", action="store_true", help="show COLMAP's own log")
    parser.add_argument("--batch-size", type=int, default=1,
                        help="pairs per matcher call (LightGlue at full depth matches them as one padded batch: "
                             "the same matches, fewer launches on a GPU; on a CPU pair by pair is faster)")
    return parser.parse_intermixed_args(argv)  # overrides may follow options


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        params = [float(p) for p in args.camera_params.split(",")] if args.camera_params else None
        camera = colmap.CameraSpec(args.camera, params, args.camera_mode)
        camera.reader_options()
        if args.cloud:
            from .pointcloud import require_open3d

            require_open3d()  # before hours of work, not after
        names = read_image_list(args.image_list, args.images) if args.image_list else None
        result = reconstruct(args.images, args.out, args.conf, args.overrides, args.pairs, camera, names,
                             args.min_match_score, args.export.split(","), args.overwrite, args.verbose,
                             download=not args.offline, batch_size=args.batch_size)
    except (ConfigError, WeightsUnavailableError, FileNotFoundError, NotADirectoryError, ValueError, KeyError,
            OSError, ImportError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err  # KeyError's str() adds quotes
        print(f"error: {message}", file=sys.stderr)
        return 2
    print(format_summary(result.summary))
    if args.cloud and result.reconstruction is not None:
        from .pointcloud import export_cloud

        cloud = export_cloud(result.reconstruction, args.out)
        print(f"point cloud: {cloud['kept']} of {cloud['points']} points kept after outlier removal -> "
              f"{cloud['ply']}" + (f", picture {cloud['png']} ({cloud['renderer']})" if "png" in cloud else ""))
    if result.summary["unreadable"]:
        print("unreadable images skipped: " + ", ".join(sorted(result.summary["unreadable"])))
    print(f"outputs in {args.out}: " + json.dumps({k: str(v) for k, v in result.paths.items()}))
    if result.reconstruction is None:
        print("no model could be reconstructed: with small baselines try mapping.mapper.init_min_tri_angle=4, "
              "with few images mapping.min_model_size=3, or more pairs (--pairs exhaustive)", file=sys.stderr)
    return 0 if result.reconstruction is not None else 1


if __name__ == "__main__":
    sys.exit(main())
