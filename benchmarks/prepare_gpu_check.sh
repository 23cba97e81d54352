#!/usr/bin/env bash
# Prepare, on this machine, what benchmarks/gpu_check.sh needs on a bare GPU machine that has
# PyTorch but no package registry, all in .device/ (ignored by git): the packages its image lacks
# (Python 3.12, manylinux x86-64), installed into a folder and packed as site.tar.xz; a copy of
# the reference cvg/LightGlue; a few training photos.
#
#   LIGHTGLUE_REF=/path/to/cvg-LightGlue PHOTOS=../shared/data/train_photos bash benchmarks/prepare_gpu_check.sh
#
# Then, on the device machine, from the repository root (the `run` tool's carry: [".device"]):
#   bash benchmarks/gpu_check.sh --device-setup
#
# The device tool sends the working tree (tracked files, untracked ones git does not ignore) and
# the carried paths, 64 MiB at most in all. The tracked tree holds ~50 MiB of weights and a
# resume checkpoint, so the packages travel unpacked and xz-compressed (~9 MiB) rather than as
# wheels (~14 MiB, already deflated), and the script ends by checking the total.
set -euo pipefail
cd "$(dirname "$0")/.."

REF=${LIGHTGLUE_REF:-}
PHOTOS=${PHOTOS:-../shared/data/train_photos}
NUM_PHOTOS=${NUM_PHOTOS:-16}
LIMIT_MIB=${LIMIT_MIB:-62}  # the tool's 64 MiB, less a margin for what a session adds
DIR=.device
grep -qxF "/$DIR/" .git/info/exclude 2>/dev/null || echo "/$DIR/" >> .git/info/exclude
mkdir -p "$DIR"
# the reference may already live in .device (the usual case): keep it unless another one is given
if [ -n "$REF" ] && [ "$(realpath "$REF")" != "$(realpath -m "$DIR/lightglue_ref")" ]; then
    rm -rf "$DIR/lightglue_ref" && mkdir -p "$DIR/lightglue_ref"
    cp -r "$REF/lightglue" "$DIR/lightglue_ref/"  # the package alone (no assets)
fi
[ -d "$DIR/lightglue_ref/lightglue" ] ||
    echo "warning: no reference in $DIR/lightglue_ref (LIGHTGLUE_REF=...): its tables will lack the reference"
rm -rf "$DIR/wheels" "$DIR/photos" "$DIR/site.tar.xz" && mkdir -p "$DIR/photos"

# what the GPU image lacks (its package list: the device tool's KINDS.md) and their own needs,
# at the versions installed here, installed for the device's Python into a scratch folder
NAMES=(kornia kornia-rs omegaconf poselib rosbags apsw backports.zstd lz4 ruamel.yaml)
mapfile -t PINNED < <(python3 -c 'import sys; from importlib.metadata import version
for name in sys.argv[1:]: print(f"{name}=={version(name)}")' "${NAMES[@]}")
if [ "${#PINNED[@]}" -ne "${#NAMES[@]}" ]; then  # mapfile's pipe escapes set -e
    echo "could not read the installed versions of ${NAMES[*]} (pip install -e '.[dev]' first)" >&2
    exit 1
fi
SITE=$(mktemp -d)
trap 'rm -rf "$SITE"' EXIT
PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --no-deps --no-compile --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any \
    --target "$SITE" "${PINNED[@]}"
# the device's copy of the tree has no .git: the report names the commit prepared here
echo "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . 2>/dev/null || echo ' with uncommitted changes')" > "$DIR/commit"
tar -C "$SITE" -cf - . | xz -9 -T0 > "$DIR/site.tar.xz.part" && mv "$DIR/site.tar.xz.part" "$DIR/site.tar.xz"

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
    scale = 640 / max(image.shape[:2])
    image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(target / f"photo_{i:03d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 85])
print(f"{len(list(target.iterdir()))} photos in {target}")
EOF

# what the device tool will send: the working tree git does not ignore, plus the carried .device
python3 - "$DIR" "$LIMIT_MIB" <<'EOF'
import subprocess
import sys
from pathlib import Path

carried, limit = Path(sys.argv[1]), float(sys.argv[2])
listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                        check=True, capture_output=True).stdout.decode().split("\0")
tree = [Path(name) for name in listed if name and Path(name).is_file()]
extra = [path for path in carried.rglob("*") if path.is_file()]


def mib(paths):
    return sum(path.stat().st_size for path in paths) / 2**20


total = mib(tree) + mib(extra)
print(f"travels: working tree {mib(tree):.1f} MiB + {carried} {mib(extra):.1f} MiB = {total:.1f} MiB "
      f"(the device tool takes 64 MiB; this check {limit:g})")
if total > limit:
    print("too much to travel; the largest files:", file=sys.stderr)
    for path in sorted(tree + extra, key=lambda path: path.stat().st_size, reverse=True)[:8]:
        print(f"  {path.stat().st_size / 2**20:6.1f} MiB  {path}", file=sys.stderr)
    sys.exit(1)
EOF
