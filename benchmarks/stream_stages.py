"""Streaming benchmark of the node's core: per-stage latency, fps, CPU use and memory per config.

    python benchmarks/stream_stages.py [--frames 300] [--keypoints 1024] [--rate max|realtime]
        [--loop 1] [--cases sift+nn sift+lightglue sift+lightglue:pipelined ...]
        [--out outputs/benchmarks/stream]

Replays the generated 640x480 room sequence (``lightglue_ros.replay --demo``: known poses and
depth) through ``FrameMatcher`` exactly as the node runs it, one case per fresh subprocess so
that peak memory and CPU time are the case's own. A case is
``CONF[:pipelined][:random][:cached][:PARAM=VALUE ...]``: ``pipelined`` extracts frame n+1 on a
second thread while frame n is matched, ``random`` runs the matcher with random weights
(``matcher.weights=null``, e.g. superpoint+lightglue offline). ``cached`` replays the bag twice
and times the second pass, whose features and matches come from the first pass's results (a
lookup instead of the networks): what is left is the node's CPU work per frame (decoding,
estimation, structure, decisions, messages), the ceiling of a stream whose extraction and
matching a GPU makes nearly free.
``sift+lightglue`` runs the bundled ``sift_lightglue_cpu`` when the official weights are absent
(the node's offline fallback, with the thresholds of the fallback config).

Per case: fps, p50/p95 of each stage (decode, extract, match, estimate, publish = building the
output messages, queued = waiting between stages) and of the whole frame (processing: from the
frame's arrival at the worker; latency: from its arrival at the node), frames dropped
(``--rate realtime``), the busy fraction of every CPU core over the run (/proc/stat), the
process's CPU time per wall second, and peak RSS. Prints a markdown table, writes JSON and a
plot of latency over frames (``latency.png``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("decode", "extract", "match", "estimate", "publish", "queued", "processing", "latency")
DEFAULT_CASES = ("sift+nn", "sift+lightglue", "sift+lightglue:pipelined", "superpoint+lightglue:random")


def cpu_ticks() -> list[tuple[int, int]]:
    """(busy, total) jiffies of every core since boot (Linux /proc/stat; [] elsewhere)."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return []
    ticks = []
    for line in lines:
        name, *values = line.split()
        if name.startswith("cpu") and name != "cpu":
            numbers = [int(v) for v in values[:8]]
            idle = numbers[3] + numbers[4]  # idle + iowait
            ticks.append((sum(numbers) - idle, sum(numbers)))
    return ticks


def core_busy(before: list[tuple[int, int]], after: list[tuple[int, int]]) -> list[float]:
    return [(b1 - b0) / max(t1 - t0, 1) for (b0, t0), (b1, t1) in zip(before, after, strict=True)]


def percentile(values: list[float], q: float) -> float | None:
    import numpy as np

    return float(np.percentile(values, q)) if values else None


FLAGS = ("pipelined", "random", "cached")


def parse_case(case: str) -> tuple[str, set[str], list[str]]:
    """``CONF[:pipelined][:random][:cached][:PARAM=VALUE ...]`` -> conf, flags, node parameters."""
    conf, *flags = case.split(":")
    params = [f for f in flags if "=" in f]
    flags = [f for f in flags if "=" not in f]
    unknown = set(flags) - set(FLAGS)
    if unknown:
        raise SystemExit(f"case {case!r}: unknown flag(s) {sorted(unknown)}; flags are {', '.join(FLAGS)} "
                         "and node parameters as name=value")
    return conf, set(flags), params


def cache_features_and_matches() -> None:
    """Make ``FeatureStream`` remember each frame's features (by stamp) and each pair's matches
    (by stamps), and give them back when asked again: the second pass over a bag then costs
    the networks nothing (a pair the first pass never matched is matched for real)."""
    from featmatch_core.models.pipeline import FeatureStream

    features, matches = {}, {}
    extract, match = FeatureStream.extract, FeatureStream.match

    def cached_extract(self, image, stamp=None):
        if stamp not in features:
            features[stamp] = extract(self, image, stamp)
        return features[stamp]

    def cached_match(self, frame0, frame1):
        key = (frame0.stamp, frame1.stamp)
        if key not in matches:
            matches[key] = match(self, frame0, frame1)
        return matches[key]

    FeatureStream.extract, FeatureStream.match = cached_extract, cached_match


def run_case(case: str, args: argparse.Namespace) -> dict:
    """One replay in this process (the child): its summary, per-stage percentiles, CPU and memory."""
    from lightglue_ros import replay

    conf, flags, params = parse_case(case)
    pipelined, random_weights = "pipelined" in flags, "random" in flags
    out_dir = args.out / case.replace(":", "_").replace("+", "_").replace("=", "-")
    # the output bag is written, as the node publishes: "publish" times building the messages
    argv = [str(args.bag), "--conf", conf, "--rate", args.rate, "--loop", str(args.loop), "--overwrite",
            "--no-plots", "--quiet", "--out-dir", str(out_dir), "-p", f"max_keypoints={args.keypoints}",
            "-p", f"pipelined={'true' if pipelined else 'false'}", "-p", "resize=0"]
    for param in [*args.param, *params]:  # the case's own last: they win
        argv += ["-p", param]
    if random_weights:  # every network of the pipeline (SuperPoint too), not only the matcher
        argv += ["matcher.weights=null"] + (["extractor.weights=null"] if not conf.startswith("sift") else [])
    replay_args = replay.parse_args(argv)
    if "cached" in flags:
        cache_features_and_matches()
        replay.run(replay_args)  # the first pass fills the caches
    ticks0, cpu0, wall0 = cpu_ticks(), os.times(), time.perf_counter()
    result = replay.run(replay_args)
    ticks1, cpu1, wall = cpu_ticks(), os.times(), time.perf_counter() - wall0
    records = result.records[args.warmup:]
    row = {"case": case, "frames": len(result.records), "fps": result.summary["throughput_fps"],
           "dropped": result.summary["frames_dropped"], "matches": result.summary.get("matches_mean"),
           "pose_auc@10": result.summary.get("pose_auc@10"),
           "cpu_cores_used": (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / wall,
           "core_busy": core_busy(ticks0, ticks1),
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
           "rss_start_mb": result.summary["rss_start_mb"], "rss_end_mb": result.summary["rss_end_mb"]}
    for stage in STAGES:
        values = [r[f"{stage}_ms"] for r in records if f"{stage}_ms" in r]
        row[f"{stage}_p50_ms"], row[f"{stage}_p95_ms"] = percentile(values, 50), percentile(values, 95)
    row["latency_ms"] = [r.get("latency_ms") for r in result.records]
    row["rss_mb"] = [r.get("rss_mb") for r in result.records]
    return row


def table(rows: list[dict]) -> str:
    def cell(value) -> str:
        return "-" if value is None else f"{value:.0f}" if abs(value) >= 10 else f"{value:.2f}"

    header = ["case", "fps"] + [f"{s} p50/p95" for s in STAGES] + ["dropped", "cores busy", "CPU s/s", "peak RSS MB"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        stages = [f"{cell(row[f'{s}_p50_ms'])} / {cell(row[f'{s}_p95_ms'])}" for s in STAGES]
        busy = " ".join(f"{b:.0%}" for b in row["core_busy"])
        lines.append("| " + " | ".join([row["case"], f"{row['fps']:.2f}", *stages, str(row["dropped"]), busy,
                                        f"{row['cpu_cores_used']:.2f}", f"{row['peak_rss_mb']:.0f}"]) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from featmatch_core.files import save_figure

    fig, ax = plt.subplots(figsize=(8, 4))
    for row in rows:
        ax.plot([v if v is not None else float("nan") for v in row["latency_ms"]], lw=0.8, label=row["case"])
    ax.set_xlabel("frame")
    ax.set_ylabel("latency, ms")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title("per-frame latency (arrival at the node -> result)")
    save_figure(path, fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--keypoints", type=int, default=1024)
    parser.add_argument("--rate", choices=("max", "realtime"), default="max")
    parser.add_argument("--loop", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=5, help="frames left out of the percentiles")
    parser.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES),
                        help="CONF[:pipelined][:random][:cached][:PARAM=VALUE ...], e.g."
                             " sift+lightglue:pipelined:precision=bf16")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                        help="node parameter for every case (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks/stream"))
    parser.add_argument("--bag", type=Path, default=None, help="replay this bag instead of the demo sequence")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # one case, JSON on stdout
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.child is not None:
        print("RESULT " + json.dumps(run_case(args.child, args)))
        return 0
    for case in args.cases:
        parse_case(case)  # a bad case fails before any replay
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.bag is None:
        # in a subprocess: Linux keeps a process's peak RSS across fork and exec, so rendering the
        # bag here would become every case's "peak RSS"
        code = f"from lightglue_ros.replay import make_demo_bag; print(make_demo_bag({args.frames}))"
        made = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
        args.bag = ROOT / made.stdout.strip().splitlines()[-1]  # relative to the child's cwd, ROOT
    args.bag = args.bag.resolve()
    rows: list[dict] = []
    failed: list[str] = []
    for case in args.cases:
        cmd = [sys.executable, __file__, "--child", case, "--bag", str(args.bag), "--keypoints", str(args.keypoints),
               "--rate", args.rate, "--loop", str(args.loop), "--warmup", str(args.warmup), "--out", str(args.out)]
        cmd += [f"--param={param}" for param in args.param]
        print(f"-- {case}", flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:  # report it, and keep the other cases' results
            print(proc.stdout[-2000:], proc.stderr[-4000:], sep="\n")
            print(f"case {case} failed (exit {proc.returncode})", flush=True)
            failed.append(case)
            continue
        rows.append(json.loads(line.removeprefix("RESULT ")))
    print(f"\n{args.frames} frames 640x480, {args.keypoints} keypoints, rate {args.rate}, loop {args.loop}\n")
    print(table(rows))
    from featmatch_core.files import save_json

    save_json(args.out / "stream_stages.json", {"frames": args.frames, "keypoints": args.keypoints,
                                                 "rate": args.rate, "loop": args.loop, "rows": rows})
    plot(rows, args.out / "latency.png")
    print(f"\nwrote {args.out / 'stream_stages.json'} and {args.out / 'latency.png'}")
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
