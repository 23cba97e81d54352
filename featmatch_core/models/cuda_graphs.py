"""CUDA graphs: static-shape work captured once and replayed with one launch.

On a GPU a small model is bound by kernel launches (several microseconds of host work each),
not by arithmetic. The dense part of an extractor (the network, and for SIFT the scale space
and the extremum test) has the same shapes for every frame of a camera, so it can be captured
as a CUDA graph and replayed: a hundred or more launches become one. What depends on the data
(how many points are found) stays eager around it.

:func:`capture` is the capture itself (also used by LightGlue's static pass);
:class:`GraphedCalls` replays a function of tensors per input signature, with eager calls
wherever a graph cannot apply (CPU tensors, autograd, a capture already running).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import torch
from torch import Tensor, nn
from torch.torch_version import TorchVersion
from torch.utils._pytree import tree_leaves, tree_map

from ..device import holding_constants

logger = logging.getLogger(__name__)

GRAPH_WARMUP_RUNS = 2  # eager runs on a side stream before a capture (lazy cuBLAS/cuDNN set-up)
# one capture at a time in the process: torch.cuda.graph synchronises the whole device as it
# starts, which fails a capture under way in another thread (a node's extraction and matching
# stages each capture the sizes they meet first at run time)
_CAPTURING = threading.RLock()
_CAPTURE_STREAMS: dict[torch.device, torch.cuda.Stream] = {}  # per device, made under _CAPTURING


def _indexed(device: torch.device) -> torch.device:
    """``cuda`` -> ``cuda:<current device>``: one key per GPU."""
    return torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)


def capture_stream(device: torch.device) -> torch.cuda.Stream:
    """The stream every capture on ``device`` runs on, made once. torch hands out streams from a
    pool of 32 per priority, round robin: a stream made per capture would, after 32 draws, be
    one a pipeline stage works on (whose kernels the capture would then record), and graphs
    captured on different streams cannot share their pool's memory. Stage streams
    (``device.own_stream``) are drawn at high priority, this one at the default priority."""
    device = _indexed(device)
    if device not in _CAPTURE_STREAMS:
        _CAPTURE_STREAMS[device] = torch.cuda.Stream(device, priority=0)
    return _CAPTURE_STREAMS[device]


# Before torch 2.12 a capture that fails leaves the caching allocator counting it as under way
# (pytorch#180395), and the next capture's start (torch.cuda.graph empties the cache) aborts the
# whole process on an internal assert: there, the first failure ends capturing in the process.
CAPTURE_AFTER_FAILURE = TorchVersion(torch.__version__) >= (2, 12)
_failed_capture: str | None = None  # why the first capture failed, where that ends capturing
_capture_counts = {"made": 0, "failed": 0, "refused": 0}  # in this process, written under _CAPTURING


def capture_counts() -> dict[str, int]:
    """Graphs captured, failed and refused (after a failure, torch < 2.12) in this process so
    far. A stream that still captures after its warm-up pays in latency: two warm-up runs and a
    capture per graph (a new LightGlue size captures one graph per step of its static pass)."""
    return dict(_capture_counts)  # no lock: a capture holds it for its whole length (written under it)


def capture(run: Callable[[], None], device: torch.device, pool: Any = None) -> Callable[[], None]:
    """``run`` as a CUDA graph (warmed up on a side stream, then captured); returns its replay.
    Raises what the capture raises (e.g. a read of a device value inside ``run``), and, after a
    failed capture on torch < 2.12, a RuntimeError at once (callers then run uncaptured)."""
    global _failed_capture
    with _CAPTURING, torch.cuda.device(device):  # restoring the stream must not move the thread to another GPU
        if _failed_capture is not None:
            _capture_counts["refused"] += 1
            raise RuntimeError(f"no CUDA-graph capture after a failed one on torch {torch.__version__} "
                               f"(< 2.12 cannot recover from it): {_failed_capture}")
        try:
            replay = _capture(run, device, pool)
        except Exception as err:
            _capture_counts["failed"] += 1
            if isinstance(err, _CaptureFailed):  # the capture itself (not a warm-up run) failed
                _CAPTURE_STREAMS.pop(_indexed(device), None)  # in case it was left capturing: a fresh one next
                if not CAPTURE_AFTER_FAILURE:
                    _failed_capture = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise
        _capture_counts["made"] += 1
        return replay


class _CaptureFailed(RuntimeError):
    """Raised from inside torch.cuda.graph: the capture had begun (the warm-up runs are behind)."""


def _capture(run: Callable[[], None], device: torch.device, pool: Any) -> Callable[[], None]:
    side = capture_stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    graph = torch.cuda.CUDAGraph()
    with holding_constants() as constants:  # read by the graph: kept as long as it is
        with torch.cuda.stream(side), uncached_autocast(device):
            for _ in range(GRAPH_WARMUP_RUNS):
                run()
        current = torch.cuda.current_stream(device)
        current.wait_stream(side)
        # thread_local: a capture in one thread (a node's tracking stage) must not fail another
        # thread's allocations (the default, global, errors on unsafe calls from any thread).
        # Captured on our capture stream, not torch.cuda.graph's default one, which anything
        # may use; one capture at a time (_CAPTURING) keeps it to itself; and when it fails,
        # torch.cuda.graph leaves the thread on the capture stream (its exit ends the capture
        # before it restores the stream), so the stream is restored here.
        try:
            with uncached_autocast(device), torch.cuda.graph(graph, pool=pool, stream=side,
                                                             capture_error_mode="thread_local"):
                run()
        except Exception as err:
            raise _CaptureFailed(str(err) or type(err).__name__) from err
        finally:
            torch.cuda.set_stream(current)

    def replay(graph: torch.cuda.CUDAGraph = graph, constants: list = constants) -> None:
        graph.replay()

    return replay


def uncached_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast in force without its cache of weight casts. A graph captured with the cache
    would read a cast the cache owns, and frees when the autocast region ends (pytorch#71631);
    without it the graph casts the weights itself at each replay."""
    if not torch.is_autocast_enabled(device.type):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.get_autocast_dtype(device.type), cache_enabled=False)


def function_identity(fn: Callable[..., Any]) -> Hashable:
    """What makes two callables the same computation: a bound method's function (the module is
    the cache's own), a partial's function and arguments (which must be hashable)."""
    if isinstance(fn, functools.partial):
        return function_identity(fn.func), fn.args, tuple(sorted(fn.keywords.items()))
    return getattr(fn, "__func__", fn)


class _Replay:
    """One captured signature: the inputs the graph reads (its own buffers, or tensors it reads
    where they are, which it keeps alive) and the outputs it writes."""

    def __init__(self, fn: Callable[..., Any], inputs: tuple[Tensor, ...], direct: tuple[bool, ...],
                 use_graph: bool) -> None:
        with torch.inference_mode(False):  # normal tensors: written in place under any grad mode
            self.arguments = tuple(x if read_there else torch.empty_like(x)
                                   for x, read_there in zip(inputs, direct, strict=True))
        self.direct = direct
        self.load(inputs)
        self.outputs: Any = None

        def run() -> None:
            self.outputs = fn(*self.arguments)

        def run_into_outputs() -> None:  # without a graph: the outputs still keep their memory
            outputs = fn(*self.arguments)
            if self.outputs is None:
                self.outputs = outputs
                return
            for kept, new in zip(tree_leaves(self.outputs), tree_leaves(outputs), strict=True):
                if isinstance(kept, Tensor):
                    kept.copy_(new)

        self.replay = capture(run, inputs[0].device) if use_graph else run_into_outputs

    def load(self, inputs: tuple[Tensor, ...]) -> None:
        for argument, x, read_there in zip(self.arguments, inputs, self.direct, strict=True):
            if not read_there:
                argument.copy_(x)

    def __call__(self, inputs: tuple[Tensor, ...], copy_outputs: bool) -> Any:
        self.load(inputs)
        self.replay()
        if not copy_outputs:
            return self.outputs
        # copies: the next replay overwrites the graph's outputs
        return tree_map(lambda t: t.clone() if isinstance(t, Tensor) else t, self.outputs)

    def output_addresses(self) -> set[int]:
        return {t.data_ptr() for t in tree_leaves(self.outputs) if isinstance(t, Tensor)}


class GraphedCalls:
    """Calls of static-shape functions of one module, replayed as CUDA graphs.

    ``graphs(fn, *inputs, key=...)`` returns ``fn(*inputs)`` (any nest of tensors). On CUDA,
    without autograd, the first call of each signature captures a graph; later calls copy the
    inputs into its buffers, replay it and return copies of its outputs. The signature is
    ``fn`` as :func:`function_identity` sees it, ``key``, the input shapes, dtypes and device,
    the autocast in force and where the module's parameters live. ``fn`` must be a pure
    function of its inputs, the module's parameters and its settings (a partial's arguments,
    or ``key``): nothing else it reads may change between calls, and it must not read device
    values (the capture then fails and the signature runs eagerly, with a warning). Elsewhere
    it is a plain call.

    Chained graphs need no copies: ``copy_outputs=False`` returns a graph's own outputs (valid
    until its next replay), and a later call given them among its first ``in_place`` inputs
    reads them where they are (their addresses join its signature; it keeps them alive). Other
    tensors among those inputs (e.g. the outputs of an eager fallback) are copied as usual.

    ``use_graphs``: None (default) captures on CUDA; False keeps the buffers and copies without
    capturing, on any device: how the CPU tests run this path.
    """

    def __init__(self, module: nn.Module, max_cached: int = 32, use_graphs: bool | None = None) -> None:
        # the module is not kept (it keeps this cache): its parameter and buffer slots are, so
        # that a moved or replaced tensor gives a new signature
        self.module_type = type(module).__name__
        self.max_cached = max_cached
        self.use_graphs = use_graphs
        self.replays: OrderedDict[tuple, _Replay | None] = OrderedDict()  # None: runs eagerly
        self.captures = 0  # signatures built so far (tests read it)
        self.lent: set[int] = set()  # addresses of the outputs returned without copies
        self.slots = [(m._parameters, n) for m in module.modules() for n in m._parameters] + \
                     [(m._buffers, n) for m in module.modules() for n in m._buffers]

    def applies(self, device: torch.device) -> bool:
        """Whether calls on ``device`` go through captured graphs (or buffers, ``use_graphs=False``)."""
        return self.use_graphs is not None or device.type == "cuda"

    def __call__(self, fn: Callable[..., Any], *inputs: Tensor, key: Hashable = (), in_place: int = 0,
                 copy_outputs: bool = True) -> Any:
        device = inputs[0].device
        if (not self.applies(device) or torch.is_grad_enabled() or torch.compiler.is_compiling()
                or (device.type == "cuda" and torch.cuda.is_current_stream_capturing())):
            return fn(*inputs)
        use_graphs = device.type == "cuda" if self.use_graphs is None else self.use_graphs
        direct = tuple(i < in_place and x.data_ptr() in self.lent for i, x in enumerate(inputs))
        signature = self.signature(fn, inputs, direct, key, use_graphs)
        replay = self.replays.get(signature, False)
        if replay is False:
            replay = self.build(signature, fn, inputs, direct, use_graphs)
        else:
            self.replays.move_to_end(signature)
        if replay is None:
            return fn(*inputs)
        result = replay(inputs, copy_outputs)
        if not copy_outputs:
            self.lent |= replay.output_addresses()
        return result

    def signature(self, fn: Callable[..., Any], inputs: tuple[Tensor, ...], direct: tuple[bool, ...],
                  key: Hashable, use_graphs: bool) -> tuple:
        device = inputs[0].device
        autocast = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None
        weights = tuple([None if slots[name] is None else slots[name].data_ptr() for slots, name in self.slots])
        shapes = tuple((x.shape, x.dtype, x.device, x.data_ptr() if read_there else None)
                       for x, read_there in zip(inputs, direct, strict=True))
        return (function_identity(fn), key, shapes, autocast, torch.is_inference_mode_enabled(),
                weights, use_graphs)

    def build(self, signature: tuple, fn: Callable[..., Any], inputs: tuple[Tensor, ...], direct: tuple[bool, ...],
              use_graphs: bool) -> _Replay | None:
        while len(self.replays) >= self.max_cached:
            _, dropped = self.replays.popitem(last=False)
            if dropped is not None:  # its outputs are no longer this cache's to lend
                self.lent -= dropped.output_addresses()
        try:
            replay: _Replay | None = _Replay(fn, inputs, direct, use_graphs)
        except RuntimeError as err:
            if not use_graphs:
                raise
            name = getattr(fn.func if isinstance(fn, functools.partial) else fn, "__name__", "a function")
            logger.warning("%s: CUDA graph capture of %s failed (%s); it runs uncaptured", self.module_type,
                           name, str(err).splitlines()[0] if str(err) else type(err).__name__)
            replay = None
        self.replays[signature] = replay
        self.captures += 1
        return replay
