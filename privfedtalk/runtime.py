"""Where and how a run executes: torch threads, device, mixed precision (torch.amp)."""

from __future__ import annotations

import logging
import os
import resource
import sys
from pathlib import Path

import torch

log = logging.getLogger("privfedtalk")


def setup_torch(threads: int) -> None:
    """Set the thread count explicitly and ask torch for deterministic kernels.

    The thread count is explicit because oversubscribed CPUs slow a step several-fold, and because it
    is part of what a run computes: CPU kernels split their reductions over threads, so the same seed
    at 1 and at 2 threads gives weights that differ in the last bits (and more after many steps). At a
    fixed thread count a CPU run is bit-reproducible; `make_deterministic` covers CUDA.
    """
    if threads > 0:
        torch.set_num_threads(threads)
    make_deterministic()


def make_deterministic() -> None:
    """Same seed, same numbers: deterministic kernels where torch has them, no autotuned algorithms.

    cuDNN's benchmark mode times several convolution algorithms and keeps the fastest, which can differ
    from one process to the next; cuBLAS needs a fixed workspace (CUBLAS_WORKSPACE_CONFIG, read when
    CUDA starts) to reduce in a fixed order. Ops without a deterministic kernel only warn (warn_only),
    so no configuration stops running. On CPU the kernels used here are deterministic already; the
    settings are for CUDA, where they may cost some speed (not measured here: no GPU in CI).
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        log.warning("device=%s asked for but CUDA is not available; running on cpu", name)
        return torch.device("cpu")
    return torch.device(name)


_AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


class Precision:
    """Training-step plumbing: autocast, loss scaling (fp16), gradient-norm clipping (torch.amp).

    Mixed precision runs on CUDA only: on a CPU, accelerate ignores fp16 and bf16 is ~5x slower, so a
    request becomes fp32 with a warning naming what runs. torch.amp keeps no process-wide state, so
    pretraining in fp16 and federated training in fp32 in one process each get what they asked for
    (accelerate's AcceleratorState cannot change precision once set).
    """

    def __init__(self, device: torch.device, mixed_precision: str = "fp32"):
        requested = str(mixed_precision)
        if device.type != "cuda" and requested != "fp32":
            log.warning("mixed_precision=%s is for CUDA; running fp32 on %s", requested, device.type)
            requested = "fp32"
        self.device = device
        self.mixed_precision = requested
        self.dtype = _AUTOCAST_DTYPES.get(requested)
        self.scaler = torch.amp.GradScaler("cuda") if requested == "fp16" else None

    @property
    def label(self) -> str:
        return "fp32" if self.dtype is None else self.mixed_precision

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None)

    def step(self, loss, optimizer, params, max_norm: float | None = 1.0) -> None:
        optimizer.zero_grad()
        params = list(params)
        if self.scaler is None:
            loss.backward()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(optimizer)
        if max_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, max_norm)
        if self.scaler is None:
            optimizer.step()
        else:
            self.scaler.step(optimizer)
            self.scaler.update()


def clip_grad_norm_per_group_(stacked, max_norm: float) -> torch.Tensor:
    """`torch.nn.utils.clip_grad_norm_` applied to each slice k of stacked (K, ...) parameters on its own.

    Slice k's norm is the L2 norm of every parameter's slice-k gradient, as clip_grad_norm_ computes
    over one client's parameters; each slice is scaled by min(1, max_norm / (norm + 1e-6)) as there.
    Returns the K norms before clipping.
    """
    grads = [p.grad for p in stacked if p.grad is not None]
    if not grads:
        return torch.zeros(0)
    per_param = torch.stack([torch.linalg.vector_norm(g.flatten(1), 2, dim=1) for g in grads], dim=1)
    norms = torch.linalg.vector_norm(per_param, 2, dim=1)
    scale = torch.clamp(max_norm / (norms + 1e-6), max=1.0)
    for g in grads:
        g.mul_(scale.view(-1, *([1] * (g.dim() - 1))).to(g.dtype))
    return norms


def grouped_step(loss, optimizer, stacked, max_norm: float | None = 1.0) -> None:
    """`Precision.step` in fp32 for K clients whose parameters are stacked (K, ...) leaves.

    `loss` is the sum of the clients' losses, so slice k of each gradient is client k's. Clipping is
    per client; an element-wise optimizer (AdamW) on the stacked tensors then updates every slice
    exactly as it would update that client's own tensors.
    """
    optimizer.zero_grad()
    loss.backward()
    if max_norm is not None:
        clip_grad_norm_per_group_(stacked, max_norm)
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
