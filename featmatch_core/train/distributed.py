"""Data-parallel plumbing: process group, spawning, samplers, reductions.

One process per replica, started with :func:`spawn` on a free port of 127.0.0.1 (nothing
listens beyond the loopback); backend gloo on CPU, nccl on CUDA. Gradients are averaged by
``DistributedDataParallel``. The helpers below are no-ops in a single process.
"""

from __future__ import annotations

import datetime
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler, Sampler

LOCALHOST = "127.0.0.1"
DEFAULT_CPU_WORLD_SIZE = 2
# Rank 0 may run benchmarks while the others wait in a barrier: allow long waits.
TIMEOUT = datetime.timedelta(hours=2)


def find_free_port() -> int:
    """A TCP port free on the loopback interface right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


def default_world_size(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.device_count()
    return DEFAULT_CPU_WORLD_SIZE


def _loopback_interface() -> str | None:
    try:
        names = [name for _, name in socket.if_nameindex()]
    except (OSError, AttributeError):
        return None
    for candidate in ("lo", "lo0"):
        if candidate in names:
            return candidate
    return None


def init_process_group(rank: int, world_size: int, port: int, device: torch.device) -> torch.device:
    """Join the group (gloo on CPU, nccl on CUDA); returns this process's device."""
    if device.type == "cuda":
        torch.cuda.set_device(rank)
        device = torch.device("cuda", rank)
        backend = "nccl"
    else:
        backend = "gloo"
        # gloo would otherwise resolve the host name and may pick a non-loopback interface
        loopback = _loopback_interface()
        if loopback and "GLOO_SOCKET_IFNAME" not in os.environ:
            os.environ["GLOO_SOCKET_IFNAME"] = loopback
    dist.init_process_group(backend=backend, init_method=f"tcp://{LOCALHOST}:{port}", rank=rank,
                            world_size=world_size, timeout=TIMEOUT)
    return device


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True if ``flag`` is true on any process (every process gets the same answer)."""
    if not is_distributed():
        return bool(flag)
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def mean_over_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average scalars with the same keys on every process."""
    if not is_distributed() or not values:
        return dict(values)
    keys = sorted(values)
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    tensor /= dist.get_world_size()
    return dict(zip(keys, tensor.tolist(), strict=True))


def gather_objects(obj: Any) -> list[Any]:
    """Every process's ``obj`` (picklable), in rank order."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


class ResumableSampler(DistributedSampler):
    """DistributedSampler (per-epoch seeded shuffle, one shard per process; also used with a
    single process) that can start an epoch after its first ``skip`` samples."""

    def __init__(self, dataset, num_replicas: int, rank: int, seed: int, shuffle: bool = True,
                 drop_last: bool = False) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:  # type: ignore[override]
        super().set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.skip:])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.skip)


class ShardSampler(Sampler):
    """Every ``world``-th index from ``rank``, in order, without padding (exact means)."""

    def __init__(self, length: int, num_replicas: int, rank: int) -> None:
        self.indices = list(range(rank, length, num_replicas))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def spawn(fn: Callable[..., None], nprocs: int, args: Sequence[Any]) -> None:
    """Run ``fn(rank, *args)`` in ``nprocs`` fresh processes; re-raise the first failure.

    ``fn`` must be importable by name (a module-level function), ``args`` picklable.
    """
    import torch.multiprocessing as mp

    try:
        mp.spawn(fn, args=tuple(args), nprocs=nprocs, join=True)
    except mp.ProcessRaisedException as err:
        raise DistributedWorkerError(str(err)) from None


class DistributedWorkerError(RuntimeError):
    """A spawned training process raised; the message holds its traceback."""
