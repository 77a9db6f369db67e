"""Where and how a run executes: torch threads, device, mixed precision (through accelerate)."""

from __future__ import annotations

import logging
import resource
import sys

import torch

log = logging.getLogger("privfedtalk")


def setup_torch(threads: int) -> None:
    """Set the thread count explicitly: oversubscribed CPUs slow a step several-fold."""
    if threads > 0:
        torch.set_num_threads(threads)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        log.warning("device=%s asked for but CUDA is not available; running on cpu", name)
        return torch.device("cpu")
    return torch.device(name)


def make_accelerator(device: torch.device, mixed_precision: str):
    """An accelerate Accelerator with the precision that will really run on this device."""
    from accelerate import Accelerator

    if device.type != "cuda" and mixed_precision != "no":
        # accelerate ignores fp16 on CPU and bf16 on this kind of CPU is ~5x slower: say what runs.
        log.warning("mixed_precision=%s is for CUDA; running fp32 on %s", mixed_precision, device.type)
        mixed_precision = "no"
    return Accelerator(mixed_precision=mixed_precision, cpu=device.type == "cpu")


def peak_memory_mb(device: torch.device | None = None) -> float:
    """Peak GPU memory on CUDA, else peak resident set size of this process, in MiB."""
    if device is not None and device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024
