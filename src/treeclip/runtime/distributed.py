"""Process groups for torchrun (one node or many) and SLURM `srun`, for training and for
splitting predict/embed inputs over ranks.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT. Under `srun`
without torchrun, SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID stand in for them, and
MASTER_ADDR/MASTER_PORT must be exported by the batch script. NCCL on GPUs, gloo on CPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from treeclip.errors import TreeclipError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(*names: str, default: int) -> int:
    for name in names:
        if os.environ.get(name, "").strip():
            return int(os.environ[name])
    return default


def pick_device(device: str, local_rank: int = 0) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise TreeclipError("--device cuda: no CUDA GPU is visible")
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if device != "cpu":
        raise TreeclipError(f"unknown device {device!r}; expected auto, cpu or cuda")
    return torch.device("cpu")


def world_size() -> int:
    """How many processes the launcher (torchrun, srun) started; 1 when run alone."""
    return _env_int("WORLD_SIZE", "SLURM_NTASKS", default=1)


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group if launched by torchrun or srun; a single process otherwise."""
    world = world_size()
    rank = _env_int("RANK", "SLURM_PROCID", default=0)
    local_rank = _env_int("LOCAL_RANK", "SLURM_LOCALID", default=0)
    dev = pick_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ:
            raise TreeclipError("multi-process run without MASTER_ADDR: launch with torchrun, or export "
                                "MASTER_ADDR and MASTER_PORT in the SLURM script")
        os.environ.setdefault("MASTER_PORT", "29500")
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world,
                                device_id=dev if dev.type == "cuda" else None)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
