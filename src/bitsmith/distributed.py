"""Data-parallel training across processes: the process group, who this process is, and its share of a batch.

`torchrun --nproc_per_node N -m bitsmith train …` starts N copies of the command with RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT in their environment. `session()` (the CLI's
`train` and `qat` enter it) joins them into one process group: gloo when training runs on the CPU,
nccl when CUDA is available (each process then trains on the GPU numbered by its LOCAL_RANK).
Without those variables it does nothing and everything below is the one-process identity, so a
plain `bitsmith train` runs exactly the code it ran before.

How a batch is shared (docs/user-guide.md, "Distributed training"): `--batch-size` is the global
batch. Every rank draws the same shuffled order from the same seeded generator (the generator
state is part of the checkpoint, so a resumed run shuffles identically on every rank too), forms
the same global batches, and keeps its own contiguous slice of each (`shard_batches`). DDP then
averages the gradients of the slices, which is the gradient of the global batch: N processes take
the steps one process would take, only faster. The small collectives (sums of metrics, rank 0's
answer to a question) always go over a CPU (gloo) group, whatever the training backend.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from bitsmith.errors import BitsmithError, ConfigError

T = TypeVar("T")
_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# A rank waits this long for the others (rank 0 evaluating, writing a checkpoint) before giving up.
TIMEOUT = datetime.timedelta(minutes=30)

_cpu_group: Any = None  # the gloo group for the small collectives (the default group when it is gloo)


@dataclass(frozen=True)
class Context:
    """Who this process is: its rank among `world_size` processes and the device it trains on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    """True when torchrun (or any launcher speaking its protocol) started this process."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def context() -> Context:
    """This process's place in the current process group (rank 0 of 1 without one)."""
    if not (dist.is_available() and dist.is_initialized()):
        return Context()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if dist.get_backend() == "nccl" else torch.device("cpu")
    return Context(dist.get_rank(), dist.get_world_size(), local_rank, device)


def default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


@contextmanager
def session(backend: str | None = None) -> Iterator[Context]:
    """Join the process group torchrun's environment describes for the duration of the block, and
    leave it on the way out (after an error too, so the other ranks see a closed peer instead of
    waiting). Without torchrun's variables, or with a group already set up by the caller, it only
    yields the current context."""
    if not launched_by_torchrun() or (dist.is_available() and dist.is_initialized()):
        yield context()
        return
    missing = [name for name in _ENV if name not in os.environ]
    if missing:
        raise ConfigError(f"distributed launch: the environment lacks {', '.join(missing)}; start the command "
                          "with torchrun (it sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT)")
    try:
        world_size, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    except ValueError:
        raise ConfigError(f"distributed launch: WORLD_SIZE={os.environ['WORLD_SIZE']!r} and "
                          f"RANK={os.environ['RANK']!r} must be integers") from None
    if not 0 <= rank < world_size:
        raise ConfigError(f"distributed launch: RANK {rank} is outside 0..{world_size - 1} (WORLD_SIZE {world_size})")
    if world_size == 1:
        yield Context()
        return
    global _cpu_group
    backend = backend or default_backend()
    if backend == "nccl":
        # cuBLAS is deterministic only with a fixed workspace; training's deterministic mode needs it.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend, timeout=TIMEOUT)
    try:
        _cpu_group = dist.new_group(backend="gloo", timeout=TIMEOUT) if backend != "gloo" else None
        yield context()
    finally:
        _cpu_group = None
        dist.destroy_process_group()


def per_rank_batch(global_batch: int, ctx: Context) -> int:
    """Each rank's share of a global batch; the global batch must split evenly."""
    if global_batch % ctx.world_size:
        raise ConfigError(f"batch size {global_batch} does not split evenly over {ctx.world_size} processes; "
                          f"--batch-size is the global batch, so choose a multiple of {ctx.world_size}")
    return global_batch // ctx.world_size


def shard_batches(batches: Iterator[tuple[torch.Tensor, torch.Tensor]], ctx: Context,
                  device: torch.device | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's contiguous slice of every global batch, moved to `device` (default: the rank's).
    Every rank must iterate the same global batches (same generator state): the slices then
    partition each batch exactly as a DistributedSampler partitions an epoch."""
    device = ctx.device if device is None else device
    for x, y in batches:
        if ctx.distributed:
            share = per_rank_batch(len(y), ctx)
            x, y = x[ctx.rank * share:(ctx.rank + 1) * share], y[ctx.rank * share:(ctx.rank + 1) * share]
        yield x.to(device), y.to(device)


def shard_range(n: int, ctx: Context) -> range:
    """This rank's contiguous part of n items (evaluation): sizes differ by at most one."""
    return range(ctx.rank * n // ctx.world_size, (ctx.rank + 1) * n // ctx.world_size)


def wrap(model: nn.Module, ctx: Context) -> nn.Module:
    """The module to train: DistributedDataParallel around `model` (which must already be on
    ctx.device) under a process group, `model` itself otherwise. DDP copies rank 0's parameters
    and buffers to the others here, and averages gradients during backward."""
    if not ctx.distributed:
        return model
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    # A CPU model under an nccl group (QAT trains on the CPU) averages its gradients over gloo.
    group = _cpu_group if on_cpu else None
    device_ids = None if on_cpu else [ctx.device.index]
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, process_group=group)


def all_sum(values: list[float]) -> list[float]:
    """The sum over all ranks of each value (float64; the values themselves in one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, group=_cpu_group)
    return t.tolist()


def barrier() -> None:
    """Wait until every rank has arrived (nothing to wait for in one process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier(group=_cpu_group)


def on_main(fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0 only and give its result to every rank. If it raises a BitsmithError,
    every rank raises that error, so a refused folder or a bad checkpoint stops all processes with
    rank 0's message instead of leaving the others waiting for a rank that has exited."""
    if not (dist.is_available() and dist.is_initialized()):
        return fn()
    box: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            box[0] = ("ok", fn())
        except BitsmithError as e:
            box[0] = ("error", e)
            dist.broadcast_object_list(box, src=0, group=_cpu_group)
            raise
    dist.broadcast_object_list(box, src=0, group=_cpu_group)
    status, value = box[0]
    if status == "error":
        raise value
    return value
