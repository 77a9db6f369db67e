"""Grouped LoRA equals each client's own LoRA product added to the base output, values and gradients.

The reference is the obvious per-client computation: rows of group k through conv/linear A_k then B_k.
Every conv shape the tap path (`_add_tap_delta`) takes is checked against it, and against the grouped
convolution path it replaces; shapes the tap path does not take (stride, dilation) must still match
through the fallback. Small Linear layers take `merged_linear` (one weight per client), large ones the
low-rank products (`add_linear_delta`); both are checked.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from privfedtalk.model.grouped_lora import (
    _add_tap_delta,
    _grouped_conv_delta,
    add_conv_delta,
    add_linear_delta,
    merged_linear,
)

K, N, RANK = 3, 2, 2


def per_client_conv(x, a, b, lora_a):
    rows = x.reshape(K, N, *x.shape[1:])
    outs = []
    for k in range(K):
        hidden = F.conv2d(
            rows[k], a[k], stride=lora_a.stride, padding=lora_a.padding, dilation=lora_a.dilation
        )
        outs.append(F.conv2d(hidden, b[k]))
    return torch.cat(outs)


def inputs(channels, out, kernel, size, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(K * N, channels, size, size, generator=generator, dtype=torch.float64)
    a = torch.randn(K, RANK, channels, kernel, kernel, generator=generator, dtype=torch.float64)
    b = torch.randn(K, out, RANK, 1, 1, generator=generator, dtype=torch.float64)
    return [t.requires_grad_(True) for t in (x, a, b)]


def values_and_grads(fn, x, a, b, lora_a):
    out = fn(x, a, b, lora_a)
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    grads = torch.autograd.grad((out * weights).sum(), (x, a, b))
    return [out.detach(), *grads]


@pytest.mark.parametrize(
    "kernel,stride,padding,dilation",
    [(3, 1, 1, 1), (3, 1, 0, 1), (1, 1, 0, 1), (5, 1, 2, 1), (3, 1, 2, 1), (3, 2, 1, 1), (3, 1, 2, 2)],
)
def test_conv_delta_equals_each_clients_own_convolutions(kernel, stride, padding, dilation):
    lora_a = nn.Conv2d(5, RANK, kernel, stride=stride, padding=padding, dilation=dilation, bias=False)
    x, a, b = inputs(5, 4, kernel, 6)
    base = torch.randn(per_client_conv(x, a, b, lora_a).shape, dtype=x.dtype)
    expected = values_and_grads(lambda *t: base + per_client_conv(*t), x, a, b, lora_a)
    got_all = values_and_grads(lambda *t: add_conv_delta(*t, base.clone()), x, a, b, lora_a)
    for got, want in zip(got_all, expected):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_tap_path_is_taken_for_stride_one_and_matches_the_grouped_convolution():
    lora_a = nn.Conv2d(4, RANK, 3, padding=1, bias=False)
    x, a, b = inputs(4, 3, 3, 5, seed=1)

    def zero():  # the tap path adds into the base output in place
        return torch.zeros(K * N, 3, 5, 5, dtype=x.dtype)

    tap = values_and_grads(lambda *t: _add_tap_delta(*t[:3], lora_a.padding, zero()), x, a, b, lora_a)
    grouped = values_and_grads(_grouped_conv_delta, x, a, b, lora_a)
    for got, want in zip(tap, grouped):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    # Swapping two clients' A must change the result (the check above can fail).
    swapped = a.detach().clone()[[1, 0, 2]]
    assert not torch.allclose(_add_tap_delta(x, swapped, b, lora_a.padding, zero()), tap[0])


def test_linear_delta_accumulates_each_clients_product_into_the_base_output():
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(K * N, 7, 6, generator=generator, dtype=torch.float64)
    a = torch.randn(K, RANK, 6, generator=generator, dtype=torch.float64)
    b = torch.randn(K, 5, RANK, generator=generator, dtype=torch.float64)
    base = torch.randn(K * N, 7, 5, generator=generator, dtype=torch.float64)
    rows = x.reshape(K, N, 7, 6)
    expected = base + torch.cat([rows[k] @ a[k].T @ b[k].T for k in range(K)])
    torch.testing.assert_close(add_linear_delta(x, a, b, base), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("with_bias", [True, False])
def test_merged_linear_equals_the_base_layer_plus_each_clients_products(with_bias):
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(K * N, 7, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(5, 6, generator=generator, dtype=torch.float64)
    bias = torch.randn(5, generator=generator, dtype=torch.float64) if with_bias else None
    # Two adapters on the layer (as shared + identity would be), ranks 1 and 2.
    pairs = [
        (
            torch.randn(K, r, 6, generator=generator, dtype=torch.float64).requires_grad_(True),
            torch.randn(K, 5, r, generator=generator, dtype=torch.float64).requires_grad_(True),
        )
        for r in (1, 2)
    ]
    leaves = [x] + [t for pair in pairs for t in pair]
    rows = x.reshape(K, N, 7, 6)
    per_client = [
        F.linear(rows[k], weight, bias) + sum(rows[k] @ a[k].T @ b[k].T for a, b in pairs) for k in range(K)
    ]
    expected = torch.cat(per_client)
    got = merged_linear(x, weight, bias, pairs)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    weights = torch.linspace(-1, 1, got.numel(), dtype=got.dtype).view_as(got)
    for g, e in zip(
        torch.autograd.grad((got * weights).sum(), leaves),
        torch.autograd.grad((expected * weights).sum(), leaves),
    ):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10)
    # Swapping two clients' B must change the output (the check above can fail).
    swapped = [(a, b.detach()[[1, 0, 2]]) for a, b in pairs]
    assert not torch.allclose(merged_linear(x, weight, bias, swapped), got)


def test_tap_path_takes_a_channels_last_input_and_base():
    lora_a = nn.Conv2d(4, RANK, 3, padding=1, bias=False)
    x, a, b = inputs(4, 3, 3, 5, seed=4)
    base = torch.randn(K * N, 3, 5, 5, dtype=x.dtype)
    expected = base + per_client_conv(x, a, b, lora_a)
    last = torch.channels_last
    got = _add_tap_delta(
        x.contiguous(memory_format=last), a, b, lora_a.padding, base.contiguous(memory_format=last)
    )
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
