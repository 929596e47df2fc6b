"""Process groups for ``torchrun``: DistributedDataParallel's standard setup, nothing home-made.

``torchrun`` describes each process in its environment (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``, ``MASTER_PORT``); a plain ``python`` process is rank 0 of 1 and needs no group.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in the job."""

    rank: int = 0
    """Global rank (0 .. world_size - 1); rank 0 alone logs and writes files."""
    local_rank: int = 0
    """Rank on this node: the CUDA device index to use."""
    world_size: int = 1
    """Number of processes in the job."""
    initialized_here: bool = False
    """Whether ``setup_distributed`` created the process group (and ``teardown`` should destroy it)."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def environment_rank() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from the torchrun environment; (0, 0, 1) without it."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)),
            int(os.environ.get("WORLD_SIZE", 1)))


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def bf16_is_fast(device: torch.device) -> bool:
    """Whether bf16 matmuls are faster than fp32 on ``device``: on CUDA, and on CPUs with bf16 matrix instructions,
    AMX tiles (Intel Xeon since Sapphire Rapids: a bf16 matmul 7x as fast as fp32, the TinyStories recipe 1.3x the
    bytes per second) or AVX-512 BF16 (AMD Zen 4 and later, Intel Cooper Lake: a bf16 matmul 2.5x as fast, the
    recipe 1.4x the bytes per second); not on other CPUs, nor on MPS."""
    if device.type == "cuda":
        return True
    if device.type == "cpu":
        # Private probes in PyTorch: one that is absent means unknown, so no.
        probes = (getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))
        return any(bool(probe and probe()) for probe in probes)
    return False


def choose_device(requested: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto``: CUDA (this process's ``local_rank`` GPU), then Apple MPS, then CPU; otherwise as given.

    Raises ``ValueError`` with a one-line reason for a name that is not a device, or a device this machine
    lacks (before any work starts, rather than a PyTorch error deep inside loading or training)."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {requested!r} is not a device name: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this PyTorch build has no CUDA support" if torch.version.cuda is None else "no GPU is visible"
            raise ValueError(f"device {requested!r} is not available: {why} (use cpu or auto)")
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
        elif device.index >= torch.cuda.device_count():
            raise ValueError(f"device {requested!r} is not available: {torch.cuda.device_count()} GPU(s) visible")
    elif device.type == "mps" and not _mps_available():
        raise ValueError(f"device {requested!r} is not available: no Apple MPS backend here (use cpu or auto)")
    return device


def setup_distributed(device: torch.device) -> DistributedContext:
    """Join the torchrun process group (NCCL on CUDA, gloo otherwise); a lone process gets rank 0 of 1."""
    rank, local_rank, world_size = environment_rank()
    if world_size <= 1:
        return DistributedContext()
    if dist.is_initialized():
        return DistributedContext(dist.get_rank(), local_rank, dist.get_world_size(), initialized_here=False)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # Imported after the group exists, torch's compiler keeps references to it (torch 2.13), so that
    # destroy_process_group cannot free it: gloo's threads would run on into the interpreter's exit and can abort it.
    importlib.import_module("torch._dynamo")
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistributedContext(rank, local_rank, world_size, initialized_here=True)


def teardown(context: DistributedContext) -> None:
    """Destroy the process group if ``setup_distributed`` created it."""
    if context.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], device: torch.device, context: DistributedContext) -> list[float]:
    """Sum a few numbers over all processes (returned unchanged in a lone process)."""
    if not context.enabled:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()
