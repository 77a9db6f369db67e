"""Where and how a run executes: torch threads, device, mixed precision (through accelerate)."""

from __future__ import annotations

import logging
import resource
import sys
from pathlib import Path

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


_ACCELERATORS: dict = {}


def make_accelerator(device: torch.device, mixed_precision: str):
    """An accelerate Accelerator with the precision that will really run on this device (one per process)."""
    from accelerate import Accelerator

    if device.type != "cuda" and mixed_precision != "no":
        # accelerate ignores fp16 on CPU and bf16 on this kind of CPU is ~5x slower: say what runs.
        log.warning("mixed_precision=%s is for CUDA; running fp32 on %s", mixed_precision, device.type)
        mixed_precision = "no"
    key = (device.type, mixed_precision)
    if key not in _ACCELERATORS:
        # accelerate keeps process-wide state: a second Accelerator must not change the precision.
        existing = next(iter(_ACCELERATORS.values()), None)
        _ACCELERATORS[key] = existing or Accelerator(
            mixed_precision=mixed_precision, cpu=device.type == "cpu"
        )
    return _ACCELERATORS[key]


class Precision:
    """Training-step plumbing through accelerate: autocast, scaled backward (fp16), gradient clipping.

    On CPU this is plain fp32 autograd; on CUDA with fp16 the loss is scaled and unscaled for clipping.
    """

    def __init__(self, device: torch.device, mixed_precision: str = "no"):
        self.accelerator = make_accelerator(device, mixed_precision)

    def prepare(self, optimizer):
        return self.accelerator.prepare_optimizer(optimizer, device_placement=False)

    def autocast(self):
        return self.accelerator.autocast()

    def step(self, loss, optimizer, params, max_norm: float | None = 1.0) -> None:
        optimizer.zero_grad()
        self.accelerator.backward(loss)
        if max_norm is not None:
            self.accelerator.clip_grad_norm_(params, max_norm)
        optimizer.step()


def enable_gradient_checkpointing(module, enabled: bool, device: torch.device) -> None:
    """Trade compute for activation memory (diffusers models); worth it on small GPUs, not on CPU."""
    if not enabled:
        return
    if device.type != "cuda":
        log.warning(
            "gradient checkpointing on %s costs time and saves little; it is meant for CUDA", device.type
        )
    module.enable_gradient_checkpointing()


def peak_memory_mb(device: torch.device | None = None) -> float:
    """Peak GPU memory on CUDA, else peak resident set size of this process, in MiB.

    On Linux the CPU peak is VmHWM from /proc/self/status: it belongs to this process image (a worker
    started by a big parent does not inherit the parent's peak, as ru_maxrss does across fork and
    exec) and `echo 5 > /proc/self/clear_refs` resets it between measurements.
    """
    if device is not None and device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024
