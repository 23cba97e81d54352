"""Export a config's models to ONNX.

    python -m featmatch_core.export onnx --conf superpoint+lightglue --out sp_lg.onnx --format colmap
    python -m featmatch_core.export onnx --conf sift+lightglue-cpu --out sift_lg_full.onnx --format full
    python -m featmatch_core.export onnx --conf disk+lightglue --out disk_lg.onnx --format opencv \\
        model.matcher.filter_threshold=0.2

Overrides are ``key=value`` on the whole config (``model.matcher.weights=PATH``). A SuperPoint
or DISK extractor is exported beside the matcher, to ``OUT.<name>.onnx`` (``--no-extractor``:
not). Formats:
``colmap`` (COLMAP's LightGlue ONNX matcher: pixels + image sizes in, matches0/mscores0 per
keypoint out), ``opencv`` (cv2.LightGlueMatcher, type LG_ALIKED with
setKeypointNormalization(cv2.LG_NORM_MAX_SIDE); not for SIFT), ``full`` (adaptive depth and
width; run it with model.matcher.backend=onnx model.matcher.onnx_file=FILE).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


from ..config import ConfigError, list_named_configs, load_config
from ..weights import WeightsUnavailableError
from .extractor_export import export_extractor, exportable_extractor
from .lightglue_export import FORMATS, export_lightglue
from .onnx_files import OnnxFileError


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m featmatch_core.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    onnx = commands.add_parser("onnx", help="export to ONNX")
    onnx.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. model.matcher.weights=PATH")
    onnx.add_argument("--conf", required=True, help=f"named config ({', '.join(list_named_configs())}) or a YAML path")
    onnx.add_argument("--out", type=Path, required=True, help="the matcher's .onnx file")
    onnx.add_argument("--format", choices=FORMATS, default="colmap", help="graph layout (default colmap)")
    onnx.add_argument("--no-extractor", action="store_true",
                      help="only the matcher (by default a SuperPoint/DISK extractor goes to OUT.<name>.onnx too)")
    onnx.add_argument("--offline", action="store_true", help="never download weights")
    args = parser.parse_args(argv)
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        parser.error(f"unexpected arguments {bad}: overrides are key=value")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    from ..models.pipeline import Pipeline

    args = parse_args(argv)
    try:
        conf = load_config(args.conf, args.overrides)
        if "backend" in conf.model.matcher:  # export the PyTorch model, whatever runs it later
            conf.model.matcher.backend = "torch"
        # the pipeline resolves the weights exactly as matching would (fallbacks included)
        pipe = Pipeline.from_conf(conf.model, download=not args.offline)
        path = export_lightglue(pipe.matcher, args.out, args.format)
        size = path.stat().st_size / 2**20
        print(f"wrote {path} ({args.format} format, {size:.1f} MiB): {type(pipe.matcher).__name__} "
              f"{pipe.conf.matcher.get('weights')}, {pipe.conf.matcher.n_layers} layers")
        name = pipe.conf.extractor.name
        if args.no_extractor:
            return 0
        if not exportable_extractor(pipe.extractor):
            print(f"extractor {name}: no ONNX export (exportable: superpoint, disk)")
            return 0
        extractor_path = export_extractor(pipe.extractor, args.out.with_suffix(f".{name}.onnx"))
        print(f"wrote {extractor_path} (extractor {name}: image (1,C,H,W) in [0, 1], resized by the caller to "
              f"long side {pipe.conf.extractor.get('resize')} -> keypoints, scores, descriptors)")
    except (ConfigError, WeightsUnavailableError, OnnxFileError, ValueError, TypeError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
