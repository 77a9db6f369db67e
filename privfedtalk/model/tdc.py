"""Temporal denoising consistency (TDC): penalise flicker between adjacent frames of a window."""

from __future__ import annotations

import torch


def tdc_loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 between the adjacent-frame differences of a prediction and of its target.

    predicted, target: (batch, window, ...) for frames that share one diffusion timestep; the
    target is the true noise (or velocity, or clean latent for the x0-space variant). A prediction
    whose frame-to-frame changes match the target's scores 0, whatever its per-frame error.
    """
    if predicted.shape != target.shape or predicted.dim() < 3:
        raise ValueError(
            f"tdc_loss needs equal (batch, window, ...) shapes, got {predicted.shape}, {target.shape}"
        )
    predicted_step = predicted[:, 1:] - predicted[:, :-1]
    target_step = target[:, 1:] - target[:, :-1]
    return (predicted_step.float() - target_step.float()).abs().mean()
