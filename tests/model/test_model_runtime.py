"""Runtime plumbing: precision requests that cannot run on this device are reported, not ignored."""

from __future__ import annotations

import logging

import torch

from privfedtalk.runtime import Precision, peak_memory_mb, resolve_device


def test_fp16_on_cpu_warns_and_trains_in_fp32(caplog):
    with caplog.at_level(logging.WARNING, logger="privfedtalk"):
        precision = Precision(torch.device("cpu"), "fp16")
    assert "running fp32 on cpu" in caplog.text
    assert precision.accelerator.mixed_precision == "no"
    layer = torch.nn.Linear(4, 1)
    optimizer = precision.prepare(torch.optim.SGD(layer.parameters(), lr=0.1))
    before = layer.weight.detach().clone()
    with precision.autocast():
        loss = layer(torch.ones(2, 4)).pow(2).mean()
    assert loss.dtype == torch.float32
    precision.step(loss, optimizer, layer.parameters())
    assert not torch.equal(before, layer.weight)


def test_cuda_request_without_cuda_falls_back_to_cpu(caplog):
    if torch.cuda.is_available():
        return
    with caplog.at_level(logging.WARNING, logger="privfedtalk"):
        assert resolve_device("cuda").type == "cpu"
    assert "not available" in caplog.text
    assert peak_memory_mb() > 10  # peak RSS of this process, in MiB
