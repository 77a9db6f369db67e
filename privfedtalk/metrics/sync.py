"""Lip-sync scores from 1-D per-frame series: Pearson correlation, lagged correlation, sync summary.

Series are per-video-frame (e.g. mouth opening from `video.mouth_opening`, audio loudness per frame).
"""

from __future__ import annotations

import numpy as np


def _series(x, name: str) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(x, dtype=np.float64))
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D series, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values")
    return arr


def pearson(x, y) -> float:
    """Pearson correlation of two equal-length 1-D series, in [-1, 1].

    Never returns nan: if either series is constant (zero variance) or has fewer than 2 samples,
    the correlation is undefined and 0.0 ("no linear relation") is returned. Constancy is tested
    exactly (peak-to-peak == 0) so that rounding in the mean of a constant series cannot fake a
    correlation. Non-finite values raise ValueError.
    """
    a = _series(x, "x")
    b = _series(y, "y")
    if a.shape != b.shape:
        raise ValueError(f"series lengths differ: {a.size} vs {b.size}")
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    ac = a - a.mean()
    bc = b - b.mean()
    denom = np.sqrt(np.dot(ac, ac) * np.dot(bc, bc))
    if denom == 0.0:
        return 0.0
    return float(np.clip(np.dot(ac, bc) / denom, -1.0, 1.0))


def lag_correlation(signal, reference, max_lag: int = 5) -> dict:
    """Correlation of `signal` with `reference` over lags -max_lag..max_lag.

    For lag L the pairs are (signal[t], reference[t - L]) for every t where both indices exist, so
    only the overlapping part is used (the series may differ in length). Sign convention: if the
    signal is the reference delayed by k frames, signal[t] = reference[t - k], the best lag is +k;
    a positive lag therefore means the signal lags behind (comes after) the reference.

    Returns {"corr": correlation at lag 0, "best_corr": the largest (signed) correlation over the
    lags, "best_lag": the lag achieving it (int in [-max_lag, max_lag])}. Ties go to the smallest
    |lag|, then to the negative lag. Lags leaving fewer than 2 overlapping samples score 0.0.
    """
    s = _series(signal, "signal")
    r = _series(reference, "reference")
    max_lag = int(max_lag)
    if max_lag < 0:
        raise ValueError(f"max_lag must be >= 0, got {max_lag}")
    corrs = {}
    for lag in range(-max_lag, max_lag + 1):
        # t ranges over indices valid for both signal[t] and reference[t - lag].
        t0 = max(0, lag)
        t1 = min(s.size, r.size + lag)
        corrs[lag] = pearson(s[t0:t1], r[t0 - lag : t1 - lag]) if t1 - t0 >= 2 else 0.0
    best_lag = max(corrs, key=lambda k: (corrs[k], -abs(k), -k))
    return {"corr": corrs[0], "best_corr": corrs[best_lag], "best_lag": int(best_lag)}


def lip_sync_scores(generated_opening, true_opening, loudness, max_lag: int = 5) -> dict:
    """Lip-sync summary of a generated video, all inputs per-frame 1-D series.

    generated_opening: mouth opening of the generated video (frames,); true_opening: of the real
    video (frames,); loudness: audio loudness resampled to the video frame rate (frames,).
    Returns:
      sync_corr / sync_corr_best / sync_lag: generated vs true opening at lag 0, best over
        lags and the best lag (positive = generated mouth moves later than the real one);
      audio_corr / audio_corr_best / audio_lag: generated opening vs loudness, likewise
        (positive = mouth moves after the sound).
    Lag conventions as in `lag_correlation` with the generated opening as the signal.
    """
    true_sync = lag_correlation(generated_opening, true_opening, max_lag)
    audio_sync = lag_correlation(generated_opening, loudness, max_lag)
    return {
        "sync_corr": true_sync["corr"],
        "sync_corr_best": true_sync["best_corr"],
        "sync_lag": true_sync["best_lag"],
        "audio_corr": audio_sync["corr"],
        "audio_corr_best": audio_sync["best_corr"],
        "audio_lag": audio_sync["best_lag"],
    }
