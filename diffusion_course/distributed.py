"""Data-parallel training on several processes (PyTorch DistributedDataParallel, Li et al. 2020).

    torchrun --nproc_per_node=4 -m diffusion_course.train fmnist-ddpm --out runs/ddp

Every process ("rank") holds the whole model and the same seeded generator. Each step all ranks draw the
*global* batch (indices, t, ε, label dropout) exactly as a single process would, and each computes the
loss on its own slice of it; DDP averages the gradients, so the update equals the single-process one at
the same global batch (up to float rounding). Rank 0 alone writes checkpoints and manifests and shows
the progress bar. nccl on GPUs (one per rank), gloo on CPUs.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = ["is_initialized", "rank", "world_size", "is_main", "launched", "setup", "cleanup", "barrier",
           "all_reduce_mean", "all_reduce_max", "all_gather_cat", "wrap"]


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """True on rank 0 (and in an ordinary single process): the one that writes files and prints."""
    return rank() == 0


def launched() -> bool:
    """True when this process was started by ``torchrun`` with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def setup(device: str | torch.device | None = None) -> torch.device:
    """Join the process group torchrun set up (env ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...); return this
    rank's device: ``cuda:LOCAL_RANK`` with nccl when CUDA is used, else the CPU with gloo."""
    from .config import get_device

    dev = torch.device(device) if device is not None else get_device()
    if not launched():
        return dev
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA devices: use "
                             "--nproc_per_node <= the number of GPUs")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    elif dev.type != "cpu":
        raise ValueError(f"multi-process training runs on cuda (nccl) or cpu (gloo), not {dev.type}")
    if not is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return dev


def cleanup() -> None:
    if is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    if not is_initialized():
        return x
    x = x.clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x / world_size()


def all_reduce_max(x: torch.Tensor) -> torch.Tensor:
    if not is_initialized():
        return x
    x = x.clone()
    dist.all_reduce(x, op=dist.ReduceOp.MAX)
    return x


def all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Concatenate equal-shaped tensors of all ranks along dim 0, in rank order."""
    if not is_initialized():
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


class _Wrapped:
    """Calls go through DDP (which syncs gradients); attributes (``objective``, ``num_classes``,
    ``null_cond``...) come from the model itself, so the loss and samplers see the same model."""

    def __init__(self, ddp, module):
        self._ddp, self._module = ddp, module

    def __call__(self, *args, **kwargs):
        return self._ddp(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._module, name)


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module | _Wrapped:
    """``model`` itself in a single process; a DDP wrapper (with the model's attributes) under torchrun."""
    if world_size() == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    return _Wrapped(ddp, model)
