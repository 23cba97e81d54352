#!/usr/bin/env bash
# The prepared device check, in two parts of at most 5 minutes each on one GPU: the CUDA tests,
# LightGlue against the reference, extraction, a short training throughput run per recipe and
# the streaming replays. Prints every table and writes them, with date and hardware, to
# docs/benchmarks/gpu.md (part 1, or both parts in one run) and docs/benchmarks/gpu-part2.md.
# Weights are random (nothing can be downloaded there) except the bundled SIFT ones: speed, not
# accuracy.
#
#   LIGHTGLUE_REF=/path/to/cvg-LightGlue-checkout PHOTOS=/path/to/photos bash benchmarks/gpu_check.sh [--part 1|2]
#
# On the lent GPU machine (no registry, no ../shared): prepare .device/ here with
# benchmarks/prepare_gpu_check.sh, carry it, and run `bash benchmarks/gpu_check.sh --device-setup
# --part 1`, then, on the same warm machine, `--part 2` (or a fixed part 1 again): the setup
# unpacks the carried packages, uses the carried reference and photos and copies the report to
# $OUT. Two short calls leave time to rerun one, where one long call would not.
#
# Without CUDA it runs the same steps on the CPU with smaller sizes (to try the script before
# spending device time); the report then says "cpu". Each step has its own time limit, each part
# a budget (BUDGET seconds, default 290 a part: steps that would pass it are cut or skipped), and
# a failing step is reported and skipped, so that one run always yields a whole report. Within a
# part the steps come in order of importance, and part 1 holds the issue's headline figures.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1  # a step cut by its time limit still leaves what it printed

SETUP=0
PART=all
while [ $# -gt 0 ]; do
    case $1 in
        --device-setup) SETUP=1 ;;
        --part) PART=${2:-}; shift ;;
        *) echo "unknown argument $1 (use --device-setup, --part 1|2)" >&2; exit 2 ;;
    esac
    shift
done
case $PART in 1 | 2 | all) ;; *) echo "--part takes 1 or 2, got '$PART'" >&2; exit 2 ;; esac
if [ "$SETUP" = 1 ]; then
    # the packages the image lacks, installed and packed for it by prepare_gpu_check.sh
    python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="data")' \
        .device/site.tar.xz /tmp/site || exit 1
    export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    export LIGHTGLUE_REF=${LIGHTGLUE_REF:-.device/lightglue_ref} PHOTOS=${PHOTOS:-.device/photos}
    # the device machine reaches nothing: no weight download to wait out (each try can take
    # its 30 s socket timeout where packets are dropped), the bundled fallbacks at once
    export FEATMATCH_OFFLINE=1
fi
PARTS=$([ "$PART" = all ] && echo 2 || echo 1)
BUDGET=${BUDGET:-$(( 290 * PARTS ))}
DEFAULT_REPORT=docs/benchmarks/gpu.md
[ "$PART" = 2 ] && DEFAULT_REPORT=docs/benchmarks/gpu-part2.md
REPORT=${REPORT:-$DEFAULT_REPORT}
REF=${LIGHTGLUE_REF:-}
PHOTOS=${PHOTOS:-../shared/data/train_photos}
DEVICE=$(python3 -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
if [ "$DEVICE" = cuda ]; then
    KPTS="512 1024 2048 4096"; STEPS=100; FRAMES=300; LG_S=60
    EXTRACT=(--precisions fp32 fp16 --extractors sift:torch sift:kornia)
    EXTRACT_REF=(--sizes 640x480 1024x768 --precisions fp32 fp16)
    BATCHED=(--batches 1 8 32 --keypoints 1024 2048 --pairs 64)
    HARDWARE=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)
else
    KPTS="512"; STEPS=2; FRAMES=20; LG_S=120
    EXTRACT=(--precisions fp32 --extractors sift:torch)
    EXTRACT_REF=(--sizes 320x240 --precisions fp32 --warmup 1 --repeat 2)
    BATCHED=(--batches 1 4 --keypoints 256 --pairs 8)
    HARDWARE="cpu: $(python3 -c 'import os; print(os.cpu_count())') cores"
fi
mkdir -p "$(dirname "$REPORT")" outputs/gpu_check
BODY=outputs/gpu_check/report.md.tmp
{
    echo "# Device check ($DEVICE$([ "$PART" = all ] || echo ", part $PART"))"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $HARDWARE, torch $(python3 -c 'import torch; print(torch.__version__, torch.version.cuda)'),"
    echo "shared memory for the data-loader workers: $(df -h /dev/shm 2>/dev/null | awk 'NR == 2 {print $2}')."
    echo "commit $(git rev-parse --short HEAD 2>/dev/null || cat .device/commit 2>/dev/null || echo unknown). Produced by benchmarks/gpu_check.sh."
} > "$BODY"

asked() {  # PART: is this part to run?
    [ "$PART" = all ] || [ "$PART" = "$1" ]
}
step() {  # step PART TITLE SECONDS COMMAND...: run (if PART is asked for), show, append its output to the report
    local part=$1 title=$2 limit=$3
    shift 3
    asked "$part" || return 0
    local left=$(( BUDGET - SECONDS ))
    if [ "$left" -lt 20 ]; then
        echo "== $title: skipped (budget spent)"
        printf '\n## %s\n\nskipped: the run'"'"'s %s s budget was spent\n' "$title" "$BUDGET" >> "$BODY"
        return 1
    fi
    [ "$left" -lt "$limit" ] && limit=$left
    echo "== $title"
    local log=outputs/gpu_check/step.log
    timeout "$limit" "$@" > "$log" 2>&1
    local rc=$?
    tail -n 40 "$log"
    {
        echo
        echo "## $title"
        echo
        echo '```'
        echo "\$ $*"
        tr '\r' '\n' < "$log" | grep -v -e '^\s*$' -e '%|' | tail -n 40  # without progress bars
        echo '```'
        [ $rc -eq 0 ] || echo "exit status $rc$( [ $rc -eq 124 ] && echo ' (time limit)')"
    } >> "$BODY"
    return $rc
}

ref_args=()
[ -n "$REF" ] && ref_args=(--reference "$REF")
BAG=outputs/demo/room_bag
demo_bag() {  # PART: the demo sequence's bag for the streaming steps (rendered on the CPU, ~20 s
    # for 300 frames); part 2 takes the one part 1 made on the same (warm) machine
    asked "$1" || return 0
    [ "$1" = 2 ] && [ -f "$BAG/metadata.yaml" ] && [ "$(cat outputs/gpu_check/bag_frames 2>/dev/null)" = "$FRAMES" ] &&
        return 0
    rm -f outputs/gpu_check/bag_frames
    step "$1" "the demo bag for the streaming steps ($FRAMES frames, 640x480)" 45 \
        python3 -c "from lightglue_ros.replay import make_demo_bag; make_demo_bag($FRAMES)" &&
        echo "$FRAMES" > outputs/gpu_check/bag_frames
}
training() {  # PART RECIPE: pairs/s over STEPS steps of the full-size recipe (batch 32, bf16 on
    # CUDA) and the GPU's busy share; the frozen extractor (random weights: no downloads there)
    # runs inside the model on the GPU (the recipes' features_in auto; SIFT's backend auto is its
    # torch back end on CUDA); the trainer prints the figures
    asked "$1" || return 0
    local extra=()
    [ "$DEVICE" = cpu ] && extra=(train.batch_size=4 train.mixed_precision=null)
    step "$1" "training throughput: $2 homography, $STEPS steps" 80 \
        python3 -m featmatch_core.train "gpu_check_$2" --conf "training/$2-homography.yaml" \
        "data.root=$PHOTOS" data.val_pairs=32 train.max_steps=$STEPS train.log_every_iter=10 \
        train.eval_every_iter=null train.save_every_iter=null "train.device=$DEVICE" data.features.weights=null \
        "train.num_workers=$(( $(nproc) > 8 ? 8 : $(nproc) ))" "${extra[@]}"
    # the logged rates too (every 10 steps): the closing line is missing when the limit cuts the run
    local metrics="outputs/training/gpu_check_$2/metrics.csv"
    [ -f "$metrics" ] && printf '\nLogged (step,epoch,split,key,value):\n```\n%s\n```\n' \
        "$(grep -E ',train,(samples_per_s|step_time|data_time),' "$metrics" | tail -n 9)" >> "$BODY"
    rm -rf "outputs/training/gpu_check_$2"
}

# ---- part 1: the issue's headline figures ----
# the CUDA tests (skipped without CUDA) of the modules that have them
# (-rfE: a line per failure or error; with pytest-timeout, which the image has, a test that hangs
# is stopped after 60 s rather than the whole step)
per_test=()
python3 -c "import pytest_timeout" 2>/dev/null && per_test=(--timeout 60)
step 1 "CUDA tests" 100 python3 -m pytest -q -rfE -p no:cacheprovider "${per_test[@]}" --continue-on-collection-errors \
    tests/core tests/train tests/ros -k "cuda or CUDA"
# shellcheck disable=SC2086
step 1 "LightGlue, full depth" "$LG_S" python3 benchmarks/time_lightglue.py --device "$DEVICE" --num-keypoints $KPTS "${ref_args[@]}"
demo_bag 1
# trained weights (bundled) on SIFT on the device (torch back end): real matches, so that
# estimation is timed too, and the whole frame path on the GPU
step 1 "streaming replay, sift+lightglue (bundled), SIFT backend torch, --rate max" 60 \
    python3 -m lightglue_ros.replay "$BAG" --conf sift+lightglue -p "device=$DEVICE" --no-plots \
    --overwrite --out-dir outputs/gpu_check/replay_sift_torch extractor.backend=torch
training 1 superpoint+lightglue

# ---- part 2: the other tables ----
# shellcheck disable=SC2086
step 2 "LightGlue, adaptive" "$LG_S" python3 benchmarks/time_lightglue.py --device "$DEVICE" --num-keypoints $KPTS --adaptive "${ref_args[@]}"
training 2 sift+lightglue
# SuperPoint, ALIKED and DISK against the reference's, same random weights, at most 2048 points
# (the reference's ALIKED needs torchvision, which the device image has)
step 2 "extraction against the reference" 70 python3 benchmarks/time_extractors.py --device "$DEVICE" \
    --extractors superpoint aliked disk sift "${EXTRACT_REF[@]}" "${ref_args[@]}"
# SIFT on the device: our torch back end (OpenCV's algorithm) and kornia's; 2048 points at 640x480
step 2 "SIFT extraction on the device (torch and kornia back ends)" 40 python3 benchmarks/bench_speed.py --devices "$DEVICE" \
    "${EXTRACT[@]}" --no-matching --repeats 5 --out outputs/gpu_check/extract_speed.json
demo_bag 2  # kept from part 1 on a warm machine
step 2 "streaming replay, superpoint+lightglue (random weights), --rate max" 60 \
    python3 -m lightglue_ros.replay "$BAG" --conf superpoint+lightglue -p "device=$DEVICE" --no-plots \
    --overwrite --out-dir outputs/gpu_check/replay extractor.weights=null matcher.weights=null
step 2 "batched matching (SfM): pairs/s at batch 1 / 8 / 32, full depth" 40 \
    python3 benchmarks/batched_matching.py --device "$DEVICE" "${BATCHED[@]}" --out outputs/gpu_check/batched.json
step 2 "streaming replay, sift+lightglue with two stages (match_ahead=never: the third stage's gain)" 45 \
    python3 -m lightglue_ros.replay "$BAG" --conf sift+lightglue -p "device=$DEVICE" -p match_ahead=never \
    --no-plots --no-bag --overwrite --out-dir outputs/gpu_check/replay_sift_torch_two_stages extractor.backend=torch
step 2 "the node's CPU work alone (features and matches from a first pass): two stages, three" 60 \
    python3 benchmarks/stream_stages.py --bag "$BAG" --frames "$FRAMES" --out outputs/gpu_check/stream_cached \
    -p "device=$DEVICE" \
    --cases sift+lightglue:pipelined:cached:match_ahead=never sift+lightglue:pipelined:cached:match_ahead=always
# last (compiling takes a while): the static pass's layers fused by torch.compile, then captured
[ "$DEVICE" = cuda ] && step 2 "LightGlue 1024, full depth, with torch.compile'd layers" 90 \
    python3 benchmarks/time_lightglue.py --device cuda --num-keypoints 1024 --compile --repeat 20 "${ref_args[@]}"

echo >> "$BODY"
echo "Run time: ${SECONDS} s." >> "$BODY"
mv "$BODY" "$REPORT"
echo "report: $REPORT"
[ -n "${OUT:-}" ] && cp "$REPORT" "$OUT/"
exit 0
