#!/usr/bin/env bash
# Prepare, on this machine, what benchmarks/gpu_check.sh needs on a bare GPU machine that has
# PyTorch but no package registry: wheels of the packages its image lacks (Python 3.12,
# manylinux x86-64), a checkout of the reference cvg/LightGlue and a few training photos, all
# in .device/ (ignored by git, at most ~60 MB so that it travels with the working tree).
#
#   LIGHTGLUE_REF=/path/to/cvg-LightGlue PHOTOS=../shared/data/train_photos bash benchmarks/prepare_gpu_check.sh
#
# Then, on the device machine, from the repository root (the `run` tool's carry: [".device"]):
#   bash benchmarks/gpu_check.sh --device-setup
set -euo pipefail
cd "$(dirname "$0")/.."

REF=${LIGHTGLUE_REF:-}
PHOTOS=${PHOTOS:-../shared/data/train_photos}
NUM_PHOTOS=${NUM_PHOTOS:-24}
DIR=.device
grep -qxF "/$DIR/" .git/info/exclude 2>/dev/null || echo "/$DIR/" >> .git/info/exclude
rm -rf "$DIR" && mkdir -p "$DIR/wheels" "$DIR/photos"

# what the GPU image lacks (its package list: the device tool's KINDS.md) and their own needs,
# at the versions installed here
NAMES=(kornia kornia-rs omegaconf poselib rosbags apsw backports.zstd lz4 ruamel.yaml)
mapfile -t PINNED < <(python3 -c 'import sys; from importlib.metadata import version
for name in sys.argv[1:]: print(f"{name}=={version(name)}")' "${NAMES[@]}")
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any \
    -d "$DIR/wheels" "${PINNED[@]}"

if [ -n "$REF" ]; then
    mkdir -p "$DIR/lightglue_ref"
    cp -r "$REF/lightglue" "$DIR/lightglue_ref/"  # the package alone (no assets)
fi
# a few photos, downscaled to the recipes' 640x480 working size (the device has no ../shared)
python3 - "$PHOTOS" "$DIR/photos" "$NUM_PHOTOS" <<'EOF'
import sys
from pathlib import Path

import cv2

source, target, count = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
photos = sorted(p for p in source.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})[:count]
for i, path in enumerate(photos):
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        continue
    scale = 800 / max(image.shape[:2])
    image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(target / f"photo_{i:03d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
print(f"{len(list(target.iterdir()))} photos in {target}")
EOF
du -sh "$DIR"
