#!/usr/bin/env bash
# One prepared device check (at most ~5 minutes on one GPU): the CUDA tests, LightGlue against the
# reference, extraction, a short training throughput run per recipe and the streaming replay.
# Prints every table and writes them, with date and hardware, to docs/benchmarks/gpu.md.
# Weights are random (nothing can be downloaded there): speed, not accuracy.
#
#   LIGHTGLUE_REF=/path/to/cvg-LightGlue-checkout PHOTOS=/path/to/photos bash benchmarks/gpu_check.sh
#
# On the lent GPU machine (no registry, no ../shared): prepare .device/ here with
# benchmarks/prepare_gpu_check.sh, carry it, and run `bash benchmarks/gpu_check.sh --device-setup`,
# which installs the carried wheels, uses the carried reference and photos and copies the report
# to $OUT.
#
# Without CUDA it runs the same steps on the CPU with smaller sizes (to try the script before
# spending device time); the report then says "cpu". Each step has its own time limit, the
# whole run a budget (BUDGET seconds, default 540: steps that would pass it are cut or
# skipped), and a failing step is reported and skipped, so that one run always yields a whole
# report. The steps come in order of importance.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1  # a step cut by its time limit still leaves what it printed

if [ "${1:-}" = --device-setup ]; then
    # the packages the image lacks, installed and packed for it by prepare_gpu_check.sh
    python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="data")' \
        .device/site.tar.xz /tmp/site || exit 1
    export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    export LIGHTGLUE_REF=${LIGHTGLUE_REF:-.device/lightglue_ref} PHOTOS=${PHOTOS:-.device/photos}
    # the device machine reaches nothing: no weight download to wait out (each try can take
    # its 30 s socket timeout where packets are dropped), the bundled fallbacks at once
    export FEATMATCH_OFFLINE=1
fi
BUDGET=${BUDGET:-540}
REPORT=${REPORT:-docs/benchmarks/gpu.md}
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
    echo "# Device check ($DEVICE)"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $HARDWARE, torch $(python3 -c 'import torch; print(torch.__version__, torch.version.cuda)'),"
    echo "commit $(git rev-parse --short HEAD 2>/dev/null || cat .device/commit 2>/dev/null || echo unknown). Produced by benchmarks/gpu_check.sh."
} > "$BODY"

step() {  # step TITLE SECONDS COMMAND...: run, show, append its output to the report
    local title=$1 limit=$2
    shift 2
    local left=$(( BUDGET - SECONDS ))
    if [ "$left" -lt 20 ]; then
        echo "== $title: skipped (budget spent)"
        printf '\n## %s\n\nskipped: the run'"'"'s %s s budget was spent\n' "$title" "$BUDGET" >> "$BODY"
        return
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
}

# the CUDA tests (skipped without CUDA) of the modules that have them
step "CUDA tests" 120 python3 -m pytest -q -p no:cacheprovider --continue-on-collection-errors tests/core tests/train tests/ros \
    -k "cuda or CUDA"
ref_args=()
[ -n "$REF" ] && ref_args=(--reference "$REF")
# shellcheck disable=SC2086
step "LightGlue, full depth" "$LG_S" python3 benchmarks/time_lightglue.py --device "$DEVICE" --num-keypoints $KPTS "${ref_args[@]}"
# shellcheck disable=SC2086
step "LightGlue, adaptive" "$LG_S" python3 benchmarks/time_lightglue.py --device "$DEVICE" --num-keypoints $KPTS --adaptive "${ref_args[@]}"
# pairs/s over STEPS steps of the full-size recipe (batch 32, bf16 on CUDA) and the GPU's busy
# share; the frozen extractor (random weights: no downloads there) runs inside the model on the
# GPU (the recipes' features_in auto; SIFT's backend auto is its torch back end on CUDA); the
# trainer prints the figures
for recipe in superpoint+lightglue sift+lightglue; do
    extra=()
    [ "$DEVICE" = cpu ] && extra=(train.batch_size=4 train.mixed_precision=null)
    step "training throughput: $recipe homography, $STEPS steps" 100 \
        python3 -m featmatch_core.train "gpu_check_$recipe" --conf "training/$recipe-homography.yaml" \
        "data.root=$PHOTOS" data.val_pairs=32 train.max_steps=$STEPS train.log_every_iter=10 \
        train.eval_every_iter=null train.save_every_iter=null "train.device=$DEVICE" data.features.weights=null \
        "train.num_workers=$(( $(nproc) > 8 ? 8 : $(nproc) ))" "${extra[@]}"
    rm -rf "outputs/training/gpu_check_$recipe"
done
# SuperPoint, ALIKED and DISK against the reference's, same random weights, at most 2048 points
# (the reference's ALIKED needs torchvision, which the device image has)
step "extraction against the reference" 120 python3 benchmarks/time_extractors.py --device "$DEVICE" \
    --extractors superpoint aliked disk sift "${EXTRACT_REF[@]}" "${ref_args[@]}"
# SIFT on the device: our torch back end (OpenCV's algorithm) and kornia's; 2048 points at 640x480
step "SIFT extraction on the device (torch and kornia back ends)" 60 python3 benchmarks/bench_speed.py --devices "$DEVICE" \
    "${EXTRACT[@]}" --no-matching --repeats 5 --out outputs/gpu_check/extract_speed.json
# the demo sequence's bag, rendered once (on the CPU, ~20 s for 300 frames) for every streaming step
BAG=outputs/demo/room_bag
step "the demo bag for the streaming steps ($FRAMES frames, 640x480)" 60 \
    python3 -c "from lightglue_ros.replay import make_demo_bag; make_demo_bag($FRAMES)"
# trained weights (bundled) on SIFT on the device (torch back end): real matches, so that
# estimation is timed too, and the whole frame path on the GPU
step "streaming replay, sift+lightglue (bundled), SIFT backend torch, --rate max" 90 \
    python3 -m lightglue_ros.replay "$BAG" --conf sift+lightglue -p "device=$DEVICE" --no-plots \
    --overwrite --out-dir outputs/gpu_check/replay_sift_torch extractor.backend=torch
step "streaming replay, the same with two stages (match_ahead=never: the third stage's gain)" 60 \
    python3 -m lightglue_ros.replay "$BAG" --conf sift+lightglue -p "device=$DEVICE" -p match_ahead=never \
    --no-plots --no-bag --overwrite --out-dir outputs/gpu_check/replay_sift_torch_two_stages extractor.backend=torch
step "streaming replay, superpoint+lightglue (random weights), --rate max" 90 \
    python3 -m lightglue_ros.replay "$BAG" --conf superpoint+lightglue -p "device=$DEVICE" --no-plots \
    --overwrite --out-dir outputs/gpu_check/replay extractor.weights=null matcher.weights=null
step "the node's CPU work alone (features and matches from a first pass): two stages, three" 90 \
    python3 benchmarks/stream_stages.py --bag "$BAG" --frames "$FRAMES" --out outputs/gpu_check/stream_cached \
    -p "device=$DEVICE" \
    --cases sift+lightglue:pipelined:cached:match_ahead=never sift+lightglue:pipelined:cached:match_ahead=always
step "batched matching (SfM): pairs/s at batch 1 / 8 / 32, full depth" 60 \
    python3 benchmarks/batched_matching.py --device "$DEVICE" "${BATCHED[@]}" --out outputs/gpu_check/batched.json
step "SIFT extraction (CPU, OpenCV) against plain OpenCV" 30 python3 benchmarks/time_sift.py --repeat 3
# last (compiling takes a while): the static pass's layers fused by torch.compile, then captured
[ "$DEVICE" = cuda ] && step "LightGlue 1024, full depth, with torch.compile'd layers" 120 \
    python3 benchmarks/time_lightglue.py --device cuda --num-keypoints 1024 --compile --repeat 20 "${ref_args[@]}"

echo >> "$BODY"
echo "Run time: ${SECONDS} s." >> "$BODY"
mv "$BODY" "$REPORT"
echo "report: $REPORT"
[ -n "${OUT:-}" ] && cp "$REPORT" "$OUT/"
exit 0
