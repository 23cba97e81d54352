"""Time our SuperPoint, ALIKED, DISK and SIFT against the reference's (cvg/LightGlue), same weights.

    python benchmarks/time_extractors.py --reference /tmp/lightglue_ref [--device cuda]
        [--extractors superpoint aliked disk sift] [--sizes 640x480 1024x768] [--precisions fp32 fp16]

Both sides get the same random weights (nothing can be downloaded: the reference's constructors
are handed our state dict in place of their download), the same settings (at most
``--max-keypoints``, top-k selection) and the same RGB texture; each is called directly on the
image (no resizing). Runs of the two are interleaved so that load from other processes
affects them alike. Per case the table gives the median time over ``--repeat`` calls after
``--warmup`` (synchronised with the device; on CUDA ours also without its CUDA graphs, in the
same rounds), the launches per call (operators that are not views, each a kernel launch on a
GPU, so this shows where a small image is launch-bound; each of our CUDA graphs counts one,
also on a CPU, where they run through their buffers) and the reads of device values (syncs),
and how many of our keypoints lie within 1 px of one of the reference's.
The reference's ALIKED needs torchvision (its deformable convolutions and ResNet blocks); without
it that row says so. SIFT compares our torch back end (the GPU path) with the reference's OpenCV
SIFT, which runs on the CPU whatever the device; their points differ by design (the reference
gives OpenCV ``num_octaves`` as its levels per octave and a 4x lower threshold than COLMAP's).
``fp16``/``bf16`` run both sides under autocast; our ALIKED and DISK opt out of it on the CPU
(``autocast_devices``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import importlib
import statistics
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from featmatch_core.datasets.synthetic import random_texture  # noqa: I001
from featmatch_core.device import autocast, resolve_device
from featmatch_core.image import to_tensor_image
from featmatch_core.models import build_model
from featmatch_core.models.extractors.base import autocast_allowed
from lightglue_launches import Counter
from time_lightglue import timed

# the same selection on both sides: top-k (no score threshold), at most max_keypoints
# SIFT: our torch back end (the GPU path) against the reference's OpenCV SIFT (CPU)
OUR_CONF = {
    "superpoint": {"detection_threshold": 0.0005},
    "aliked": {"detection_threshold": -1.0},
    "disk": {},
    "sift": {"backend": "torch"},
}
REFERENCE_CONF = {
    "superpoint": {"detection_threshold": 0.0005},
    "aliked": {"detection_threshold": -1.0},
    "disk": {"detection_threshold": 0.0},
    "sift": {"backend": "opencv"},
}
REFERENCE_CLASS = {"superpoint": "SuperPoint", "aliked": "ALIKED", "disk": "DISK", "sift": "SIFT"}


def reference_modules(checkout: Path) -> Callable[[str], ModuleType]:
    """Importer of the checkout's ``lightglue/<name>.py`` files as modules of one package (they
    import each other), without the package's __init__ (which imports every extractor's needs)."""
    folder = Path(checkout) / "lightglue"
    if not (folder / "superpoint.py").is_file():
        raise SystemExit(f"{folder} has no superpoint.py: --reference must be a checkout of cvg/LightGlue")
    package = types.ModuleType("reference_lightglue_package")
    package.__path__ = [str(folder)]
    sys.modules[package.__name__] = package
    return lambda name: importlib.import_module(f"{package.__name__}.{name}")


@contextlib.contextmanager
def handed_weights(ours: torch.nn.Module) -> Iterator[None]:
    """The reference's constructors download their weights; hand them ours instead."""
    state = (ours.model if hasattr(ours, "model") else ours).state_dict()
    state.pop("dkd.hw_grid", None)  # kornia's ALIKED keeps its constant grid as a buffer; the release has none
    import kornia.feature

    original_url, original_disk = torch.hub.load_state_dict_from_url, kornia.feature.DISK.from_pretrained
    torch.hub.load_state_dict_from_url = lambda *args, **kwargs: copy.deepcopy(state)
    kornia.feature.DISK.from_pretrained = classmethod(lambda cls, *args, **kwargs: copy.deepcopy(ours.model).cpu())
    try:
        yield
    finally:
        torch.hub.load_state_dict_from_url = original_url
        kornia.feature.DISK.from_pretrained = original_disk


def build_pair(name: str, reference: Callable[[str], ModuleType] | None, max_keypoints: int, device: torch.device):
    """(ours, reference or an error text), sharing ours' random weights."""
    torch.manual_seed(0)
    conf = {"name": name, "resize": None, "weights": None, "max_num_keypoints": max_keypoints, **OUR_CONF[name]}
    ours = build_model("extractor", conf, pretrained=False).eval().to(device)
    if reference is None:
        return ours, "no --reference"
    try:
        with handed_weights(ours):
            theirs = getattr(reference(name), REFERENCE_CLASS[name])(max_num_keypoints=max_keypoints,
                                                                     **REFERENCE_CONF[name])
    except ImportError as err:  # the reference's ALIKED needs torchvision
        return ours, f"reference needs {err.name}"
    return ours, theirs.eval().to(device)


def host_work(model: torch.nn.Module, make_call: Callable[[torch.nn.Module], Callable[[], object]],
              device: torch.device) -> tuple[int, int]:
    """(launches: operators that are not views, and one per CUDA graph replay; reads of device
    values) of one call. Our extractors' graphed parts count as one launch each: on a CPU they
    run through their buffers (what a GPU replays), in a copy of the model."""
    graphed = hasattr(model, "graphed_calls") and model.conf.cuda_graphs
    if graphed and device.type != "cuda":
        model = copy.deepcopy(model)
        model.graphed_calls.use_graphs = False
    call = make_call(model)
    call()  # builds the graphs of this size
    counter = Counter()
    replays = [r for r in model.graphed_calls.replays.values() if r is not None] if graphed else []
    for replay in replays:
        replay.replay = counter.one_launch(replay.replay)
    try:
        with counter:
            call()
    finally:
        for replay in replays:
            replay.replay = replay.replay.original
    return counter.kernels + counter.steps, counter.reads


def keypoint_agreement(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """Share of our keypoints within 1 px of one of the reference's."""
    if len(ours) == 0 or len(theirs) == 0:
        return float("nan")
    nearest = torch.cdist(ours.float().cpu(), theirs.float().cpu()).min(dim=1).values
    return float((nearest <= 1.0).float().mean())


def table_row(name: str, size: str, precision: str, ours: torch.nn.Module, theirs: torch.nn.Module | str,
              image: torch.Tensor, device: torch.device, warmup: int, repeat: int) -> str:
    """Time both sides on one image (interleaved) and count their host work."""
    ours_amp = precision if autocast_allowed(ours, device) else "fp32"
    runners: dict[str, Callable[[], dict]] = {}

    def run(model: torch.nn.Module, amp: str) -> Callable[[], dict]:
        def call() -> dict:
            with torch.inference_mode(), autocast(device, amp):
                return model({"image": image})
        return call

    runners["ours"] = run(ours, ours_amp)
    if device.type == "cuda" and ours.conf.cuda_graphs:  # the graphs' gain, in the same run
        eager = copy.deepcopy(ours)
        eager.conf.cuda_graphs = False
        runners["eager"] = run(eager, ours_amp)
    if not isinstance(theirs, str):
        runners["reference"] = run(theirs, precision)
    for key, call in list(runners.items()):
        try:
            for _ in range(warmup):
                call()
        except (RuntimeError, NotImplementedError) as err:  # e.g. an operator without a kernel for this dtype
            if key != "reference":
                raise
            del runners[key]
            theirs = f"reference fails: {str(err).splitlines()[0][:60]}"
    times: dict[str, list[float]] = {key: [] for key in runners}
    for _ in range(repeat):
        for key, call in runners.items():
            times[key].append(timed(call, device))
    ms = {key: statistics.median(values) for key, values in times.items()}
    sides = {"ours": (ours, ours_amp), "reference": (theirs, precision)}
    work = {key: host_work(model, functools.partial(run, amp=amp), device)
            for key, (model, amp) in sides.items() if key in runners}
    eager_ms = f"{ms['eager']:.2f}" if "eager" in ms else "-"
    if isinstance(theirs, str):
        return (f"| {name} | {size} | {precision} | {theirs} | {ms['ours']:.2f} | {eager_ms} | | "
                f"- / {work['ours'][0]} | - / {work['ours'][1]} | |")
    agreement = keypoint_agreement(runners["ours"]()["keypoints"][0], runners["reference"]()["keypoints"][0])
    return (f"| {name} | {size} | {precision} | {ms['reference']:.2f} | {ms['ours']:.2f} | {eager_ms} | "
            f"{ms['ours'] / ms['reference']:.2f} | {work['reference'][0]} / {work['ours'][0]} | "
            f"{work['reference'][1]} / {work['ours'][1]} | {agreement:.3f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, default=None, help="checkout of cvg/LightGlue")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--extractors", nargs="+", default=list(OUR_CONF), choices=list(OUR_CONF))
    parser.add_argument("--sizes", nargs="+", default=["640x480", "1024x768"])
    parser.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--max-keypoints", type=int, default=2048)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    device = resolve_device(args.device)
    reference = reference_modules(args.reference) if args.reference is not None else None
    print(f"device {device}, at most {args.max_keypoints} keypoints, median of {args.repeat} calls")
    print("| extractor | size | precision | reference ms | ours ms | ours without graphs ms | ours / reference | "
          "launches ref / ours | reads ref / ours | keypoints within 1 px |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.extractors:
        ours, theirs = build_pair(name, reference, args.max_keypoints, device)
        for size in args.sizes:
            width, height = (int(v) for v in size.split("x"))
            gray = to_tensor_image(random_texture(height, width, seed=1))
            image = gray.expand(-1, 3, -1, -1).contiguous().to(device)
            for precision in args.precisions:
                print(table_row(name, size, precision, ours, theirs, image, device, args.warmup, args.repeat),
                      flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
