"""Runtime plumbing: precision requests that cannot run on this device are reported, not ignored."""

from __future__ import annotations

import logging

import pytest
import torch

from privfedtalk.runtime import Precision, peak_memory_mb, resolve_device


def test_fp16_on_cpu_warns_and_trains_in_fp32(caplog):
    with caplog.at_level(logging.WARNING, logger="privfedtalk"):
        precision = Precision(torch.device("cpu"), "fp16")
    assert "running fp32 on cpu" in caplog.text
    assert precision.label == "fp32" and precision.scaler is None
    layer = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    before = layer.weight.detach().clone()
    with precision.autocast():
        loss = layer(torch.ones(2, 4)).pow(2).mean()
    assert loss.dtype == torch.float32
    precision.step(loss, optimizer, layer.parameters())
    assert not torch.equal(before, layer.weight)


def test_cuda_request_without_cuda_falls_back_to_cpu(caplog):
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    with caplog.at_level(logging.WARNING, logger="privfedtalk"):
        assert resolve_device("cuda").type == "cpu"
    assert "not available" in caplog.text
    assert peak_memory_mb() > 10  # peak RSS of this process, in MiB


def test_cpu_peak_memory_is_per_process_and_resettable():
    """A worker started by a big process reports its own peak, and clear_refs starts a new reading."""
    import subprocess
    import sys
    from pathlib import Path

    import numpy as np

    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc")
    block = np.ones(400 * 2**20 // 8)  # 400 MiB, touched
    parent_peak = peak_memory_mb()
    child = subprocess.run(
        [sys.executable, "-c", "from privfedtalk.runtime import peak_memory_mb; print(peak_memory_mb())"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert float(child.stdout) < parent_peak - 300  # ru_maxrss would inherit the parent's peak
    del block
    Path("/proc/self/clear_refs").write_text("5")
    assert peak_memory_mb() < parent_peak - 300


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp16_on_cuda_autocasts_and_scales():
    precision = Precision(torch.device("cuda"), "fp16")
    layer = torch.nn.Linear(4, 1).cuda()
    with precision.autocast():
        out = layer(torch.ones(2, 4, device="cuda"))
    assert out.dtype == torch.float16 and precision.scaler is not None
