"""SfM figures on castle_simu: the whole chain (featmatch_core.sfm) with several configs.

    python benchmarks/sfm_castle.py [--data ../shared/data/castle_simu] [--confs sift+nn sift+lightglue]
        [--pairs sequential:10] [mapping.mapper.init_min_tri_angle=8 ...]

The 40 rendered frames go in as one fixed PINHOLE camera (the dataset's K: fx=fy=700,
cx=320, cy=240 in OpenCV pixels, +0.5 for COLMAP). For each config: registered images,
3D points, mean track length, mean reprojection error, the camera-position error against the
ground-truth poses after a Sim(3) (Umeyama) alignment, and the time of each stage. The data is
GPL-2: outputs stay under outputs/ (git-ignored). Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from featmatch_core.sfm.colmap import CameraSpec  # noqa: E402
from featmatch_core.sfm.evaluate import camera_centres, centres_from_poses, position_errors  # noqa: E402
from featmatch_core.sfm.reconstruct import reconstruct  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "castle_simu"


def load_truth(data: Path) -> tuple[list[str], np.ndarray, dict[str, np.ndarray]]:
    names = sorted(p.name for p in (data / "images").glob("*.png"))
    if not names:
        raise FileNotFoundError(f"no images under {data / 'images'} (see the dataset's README)")
    K = np.loadtxt(data / "K.txt")
    poses = {name: np.loadtxt(data / "poses" / f"{Path(name).stem}.txt") for name in names}  # T_cam_world
    return names, K, poses


def run(conf: str, data: Path, out: Path, pairs: str, overrides: list[str], resume: bool) -> dict:
    names, K, poses = load_truth(data)
    camera = CameraSpec("PINHOLE", [K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5], "single")
    result = reconstruct(data / "images", out / conf, conf, overrides, pairs, camera, names,
                         overwrite=not resume, download=False)
    row = {"conf": conf, **{k: result.summary[k] for k in ("images", "registered", "points", "mean_track_length",
                                                          "mean_reprojection_error")},
           "timings_s": result.summary["timings_s"], "pairs": len(result.matching.matched) +
           len(result.matching.skipped)}
    if result.reconstruction is not None and result.summary["registered"] >= 3:
        errors = position_errors(camera_centres(result.reconstruction), centres_from_poses(poses))
        row.update(pos_err_mean_cm=100 * errors["mean"], pos_err_median_cm=100 * errors["median"],
                   pos_err_max_cm=100 * errors["max"])
    return row


def table(rows: list[dict]) -> str:
    head = ("conf", "reg", "points", "track", "reproj px", "pos err mean/med/max cm",
            "extract s", "match s", "import s", "verify s", "map s")
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in rows:
        t = r["timings_s"]
        err = (f"{r['pos_err_mean_cm']:.2f} / {r['pos_err_median_cm']:.2f} / {r['pos_err_max_cm']:.2f}"
               if "pos_err_mean_cm" in r else "n/a")
        lines.append(" | ".join([r["conf"], f"{r['registered']}/{r['images']}", str(r["points"]),
                                 f"{r['mean_track_length']:.2f}", f"{r['mean_reprojection_error']:.3f}", err,
                                 *(f"{t[k]:.1f}" for k in ("extract", "match", "import", "verify", "map"))]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="model.* / mapping.* / verification.* overrides")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--confs", nargs="+", default=["sift+nn", "sift+lightglue"])
    parser.add_argument("--pairs", default="sequential:10")
    parser.add_argument("--out", type=Path, default=Path("outputs/sfm_castle"))
    parser.add_argument("--seed", type=int, default=0, help="COLMAP's RANSAC and mapper seed (-1: random)")
    parser.add_argument("--resume", action="store_true", help="reuse features/matches of a previous run")
    args = parser.parse_intermixed_args(argv)
    if not (args.data / "images").is_dir():
        print(f"error: no castle_simu at {args.data}; pass --data", file=sys.stderr)
        return 2
    seeded = [f"mapping.random_seed={args.seed}", f"mapping.mapper.random_seed={args.seed}",
              f"verification.ransac.random_seed={args.seed}"] if args.seed >= 0 else []
    overrides = seeded + args.overrides
    rows = [run(conf, args.data, args.out, args.pairs, overrides, args.resume) for conf in args.confs]
    print(f"castle_simu, pairs {args.pairs}, overrides {' '.join(overrides) or 'none'}")
    print(table(rows))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
