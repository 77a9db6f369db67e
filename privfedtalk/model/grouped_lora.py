"""Grouped LoRA: one U-Net forward for K clients, each sample using its own client's adapter weights.

The batch holds K equal groups of rows, group k = client k. The base (frozen) layers see the whole
batch, so their per-op overhead is paid once instead of K times; every peft LoRA layer adds
B_k·A_k·x for the rows of group k, with A_k and B_k taken from stacked (K, ...) tensors instead of the
layer's own weights (small Linear layers on a CPU: x times W + B_k·A_k, one merged weight per
client). Every other U-Net op (group norm, attention, time embedding) acts on each row on its own,
so client k's outputs, loss and gradients are those of a forward with its adapters alone; only the
summation order inside kernels differs (float rounding).

The stacked tensors are leaves of the caller's: backward of the sum of the K clients' losses gives
each slice k the gradient of client k's loss, because no other client's loss depends on it.
"""

from __future__ import annotations

import types
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from peft.tuners.lora.layer import LoraLayer
from torch import nn


def lora_layers(unet) -> list:
    """peft LoRA layers of the U-Net, in module order."""
    return [m for m in unet.modules() if isinstance(m, LoraLayer)]


def check_groupable(layer) -> None:
    """Only plain LoRA (no DoRA or other variant, no LoRA bias, no dropout, unmerged) is grouped."""
    if getattr(layer, "merged", False) or getattr(layer, "lora_variant", {}):
        raise ValueError(f"{type(layer).__name__}: merged or variant LoRA layers cannot be grouped")
    for name in layer.lora_A:
        if layer.lora_A[name].bias is not None or layer.lora_B[name].bias is not None:
            raise ValueError(f"LoRA adapter '{name}' has a bias: not supported by grouped LoRA")
        if not isinstance(layer.lora_dropout[name], nn.Identity):
            raise ValueError(f"LoRA adapter '{name}' has dropout: not supported by grouped LoRA")
    if not isinstance(layer.base_layer, (nn.Linear, nn.Conv2d)):
        raise ValueError(f"grouped LoRA supports Linear and Conv2d layers, not {type(layer.base_layer)}")


def add_linear_delta(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """base + delta for rows (K·n, ..., in) -> (K·n, ..., out): group k times A_k (K, r, in) then
    B_k (K, out, r), the B product accumulated into the base layer's output in place (one baddbmm_)."""
    groups = a.shape[0]
    flat = x.reshape(groups, -1, x.shape[-1])
    hidden = torch.bmm(flat, a.transpose(1, 2))
    base.view(groups, -1, b.shape[1]).baddbmm_(hidden, b.transpose(1, 2))
    return base


def add_conv_delta(
    x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, lora_a: nn.Conv2d, base: torch.Tensor
) -> torch.Tensor:
    """base + delta for images (K·n, C, H, W) -> (K·n, out, H', W'): group k through conv A_k
    (K, r, C, kh, kw), then B_k (K, out, r, 1, 1), peft's lora_B being a 1x1 conv.

    A stride-1 A (the resnets' 3x3 convs) takes `_add_tap_delta`; any other A a grouped convolution
    (`_grouped_conv_delta`), the same numbers by a slower road.
    """
    if _taps_fit(lora_a):
        return _add_tap_delta(x, a, b, lora_a.padding, base)
    return base.add_(_grouped_conv_delta(x, a, b, lora_a))


def _taps_fit(lora_a: nn.Conv2d) -> bool:
    """Stride 1, no dilation or groups, and a numeric padding below the kernel size."""
    if lora_a.stride != (1, 1) or lora_a.dilation != (1, 1) or lora_a.groups != 1:
        return False
    padding = lora_a.padding
    return isinstance(padding, tuple) and all(0 <= p < k for p, k in zip(padding, lora_a.kernel_size))


def _add_tap_delta(
    x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, padding: tuple[int, int], base: torch.Tensor
) -> torch.Tensor:
    """base + delta with a stride-1 A_k as one matmul per client.

    Each of A_k's kh·kw taps is a 1x1 projection of the C channels to r, so client k's (kh·kw·r, C)
    taps times its images' pixels as columns (C, n·H·W) give every tap's projection at every pixel in
    one matmul per client: on a CPU the adapter's cost over the plain conv (fwd + bwd) is 1.2–1.9x
    lower than with one small matmul per image, transposing x included. `_TapSum` adds each tap's
    map, shifted by the tap's offset, onto the H' x W' grid of a conv with padding p; B_k times the
    result, one matmul per client, is added into the base output. Same arithmetic as the conv.
    """
    groups, rank, channels, kh, kw = a.shape
    n = x.shape[0] // groups
    height, width = x.shape[-2:]
    pixels = x.reshape(groups, n, channels, height * width).transpose(1, 2).reshape(groups, channels, -1)
    taps = a.permute(0, 3, 4, 1, 2).reshape(groups, kh * kw * rank, channels)
    projected = torch.bmm(taps, pixels).view(groups, kh, kw, rank, n, height, width)
    hidden = _TapSum.apply(projected.permute(0, 3, 4, 1, 2, 5, 6), padding)  # (K, r, n, H', W')
    out_h, out_w = hidden.shape[-2:]
    out_channels = b.shape[1]
    delta = torch.bmm(b.reshape(groups, out_channels, rank), hidden.reshape(groups, rank, -1))
    per_image = delta.view(groups, out_channels, n, out_h * out_w).transpose(1, 2)
    base.view(groups, n, out_channels, out_h * out_w).add_(per_image)
    return base


def _tap_windows(tap: int, padding: int, size: int, out_size: int) -> tuple[slice, slice]:
    """(output, input) ranges along one axis where tap `tap` of a stride-1 conv reads inside the image:
    output o reads input o + tap − padding."""
    start = max(0, padding - tap)
    stop = min(out_size, size + padding - tap)
    return slice(start, stop), slice(start + tap - padding, stop + tap - padding)


class _TapSum(torch.autograd.Function):
    """(..., kh, kw, H, W) per-tap maps -> (..., H', W'): output pixel o sums, over the taps t, tap t's
    map at o + t − p (inside the image). It is col2im (F.fold) with the kernel flipped, but as kh·kw
    strided adds, and its backward (im2col) kh·kw strided copies: CPU col2im/im2col loop over the
    images one at a time, which costs more than the arithmetic at these sizes."""

    @staticmethod
    def forward(ctx, maps, padding):
        *leading, kh, kw, height, width = maps.shape
        out_h, out_w = height + 2 * padding[0] - kh + 1, width + 2 * padding[1] - kw + 1
        ctx.windows = [
            (i, j, _tap_windows(i, padding[0], height, out_h), _tap_windows(j, padding[1], width, out_w))
            for i in range(kh)
            for j in range(kw)
        ]
        ctx.maps_shape = maps.shape
        out = maps.new_zeros(*leading, out_h, out_w)
        for i, j, (rows_out, rows_in), (cols_out, cols_in) in ctx.windows:
            out[..., rows_out, cols_out] += maps[..., i, j, rows_in, cols_in]
        return out

    @staticmethod
    def backward(ctx, grad_out):
        grad_maps = grad_out.new_zeros(ctx.maps_shape)
        for i, j, (rows_out, rows_in), (cols_out, cols_in) in ctx.windows:
            grad_maps[..., i, j, rows_in, cols_in] = grad_out[..., rows_out, cols_out]
        return grad_maps, None


def _grouped_conv_delta(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, lora_a: nn.Conv2d) -> torch.Tensor:
    """Any A as a grouped convolution with K groups: the K clients become K channel groups of n images;
    A_k is conv group k (A's kernel, stride, padding, dilation), B_k a batched matmul per group."""
    groups, rank = a.shape[:2]
    n = x.shape[0] // groups
    channels_first = x.reshape(groups, n, *x.shape[1:]).transpose(0, 1).reshape(n, -1, *x.shape[2:])
    hidden = F.conv2d(
        channels_first,
        a.reshape(groups * rank, *a.shape[2:]),
        stride=lora_a.stride,
        padding=lora_a.padding,
        dilation=lora_a.dilation,
        groups=groups,
    )  # (n, K·r, H', W')
    height, width = hidden.shape[-2:]
    hidden = hidden.reshape(n, groups, rank, height * width).permute(1, 0, 3, 2)  # (K, n, HW, r)
    out = torch.matmul(hidden, b.reshape(groups, 1, b.shape[1], rank).transpose(-1, -2))  # (K, n, HW, out)
    return out.permute(0, 1, 3, 2).reshape(groups * n, b.shape[1], height, width)


# On a CPU, a Linear layer with at most this many weights takes `merged_linear`: measured (K = 16,
# fwd + bwd, 1 thread) it costs ~1.5x the plain layer at 64 x 64 against ~2.4x for the low-rank
# products, the same at 128 x 128, and more above (its weight gradient is a full in x out product).
MERGE_MAX_WEIGHTS = 128 * 128


def merged_linear(x: torch.Tensor, weight, bias, pairs) -> torch.Tensor:
    """Rows (K·n, ..., in) -> (K·n, ..., out) through group k's own weight W + Σ B_k A_k, one batched
    matmul: for small layers, where the low-rank products are many tiny matmuls (rank 1: matrix-vector
    products) that cost more than the layer. `pairs` holds each adapter's (A (K, r, in), B (K, out, r)),
    the scaling already in B."""
    groups = pairs[0][0].shape[0]
    merged = weight.expand(groups, *weight.shape)
    for a, b in pairs:
        merged = torch.baddbmm(merged, b, a)
    flat = x.reshape(groups, -1, x.shape[-1])
    if bias is None:
        out = torch.bmm(flat, merged.transpose(1, 2))
    else:
        out = torch.baddbmm(bias, flat, merged.transpose(1, 2))
    return out.reshape(*x.shape[:-1], weight.shape[0])


def _merges(layer, x: torch.Tensor) -> bool:
    base = layer.base_layer
    return (
        isinstance(base, nn.Linear)
        and x.device.type == "cpu"
        and base.weight.numel() <= MERGE_MAX_WEIGHTS
        and not getattr(layer, "fan_in_fan_out", False)
    )


def _grouped_forward(layer, x, *args, stacked, **kwargs):
    names = [name for name in layer.active_adapters if name in layer.lora_A]
    # The scaling multiplies B (K·out·r values), not the delta (a whole activation).
    pairs = [
        (stacked[id(layer.lora_A[name].weight)], stacked[id(layer.lora_B[name].weight)] * layer.scaling[name])
        for name in names
    ]
    if pairs and _merges(layer, x):
        return merged_linear(x, layer.base_layer.weight, layer.base_layer.bias, pairs)
    # The add_*_delta helpers add into the base layer's fresh output in place (its own backward does
    # not keep it), so no activation-sized copy is made per adapter.
    result = layer.base_layer(x, *args, **kwargs)
    for name, (a, b) in zip(names, pairs):
        if isinstance(layer.base_layer, nn.Conv2d):
            result = add_conv_delta(x, a, b, layer.lora_A[name], result)
        else:
            result = add_linear_delta(x, a, b, result)
    return result


@contextmanager
def grouped_lora(unet, stacked: dict[int, torch.Tensor]):
    """Within the block, LoRA layers read their weights from `stacked` (id of the layer's weight ->
    (K, *weight.shape)) and apply slice k to the k-th of K equal row groups of every batch."""
    layers = lora_layers(unet)
    for layer in layers:
        check_groupable(layer)
    try:
        for layer in layers:
            layer.forward = types.MethodType(
                lambda self, x, *args, **kwargs: _grouped_forward(self, x, *args, stacked=stacked, **kwargs),
                layer,
            )
        yield
    finally:
        for layer in layers:
            layer.__dict__.pop("forward", None)
