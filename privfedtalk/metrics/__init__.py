"""Evaluation metrics: frame quality, mouth-region sync and Fréchet distance on features."""

from privfedtalk.metrics.frechet import frechet_distance, frechet_from_stats, gaussian_stats
from privfedtalk.metrics.membership import roc_auc, roc_curve, tpr_at_fpr
from privfedtalk.metrics.sync import lag_correlation, lip_sync_scores, pearson
from privfedtalk.metrics.video import (
    as_float_video,
    crop_box,
    flicker,
    luminance,
    mouth_opening,
    psnr,
    ssim,
    temporal_jitter,
)

__all__ = [
    "as_float_video",
    "crop_box",
    "flicker",
    "frechet_distance",
    "frechet_from_stats",
    "gaussian_stats",
    "lag_correlation",
    "lip_sync_scores",
    "luminance",
    "mouth_opening",
    "pearson",
    "psnr",
    "roc_auc",
    "roc_curve",
    "ssim",
    "temporal_jitter",
    "tpr_at_fpr",
]
