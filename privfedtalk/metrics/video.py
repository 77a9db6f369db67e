"""Frame-level video metrics: PSNR, SSIM, mouth-region crops, mouth opening and temporal stability.

Videos are arrays of shape (frames, height, width, 3), float in [0, 1] or uint8 (divided by 255).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

_SSIM_WINDOW = 11
_SSIM_SIGMA = 1.5
_SSIM_K1 = 0.01
_SSIM_K2 = 0.03


def as_float_video(frames) -> np.ndarray:
    """Return `frames` as float64 (frames, height, width, 3) in [0, 1].

    uint8 input is divided by 255; float input is taken as already in [0, 1] (not clipped, so that an
    out-of-range prediction is penalised rather than hidden). A single (height, width, 3) frame is
    promoted to a one-frame video.
    """
    arr = np.asarray(frames)
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float64) / 255.0
    else:
        arr = arr.astype(np.float64, copy=False)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"expected video of shape (frames, height, width, 3), got {arr.shape}")
    return arr


def _pair(pred, target) -> tuple[np.ndarray, np.ndarray]:
    p = as_float_video(pred)
    t = as_float_video(target)
    if p.shape != t.shape:
        raise ValueError(f"pred and target shapes differ: {p.shape} vs {t.shape}")
    if p.size == 0:
        raise ValueError(f"empty video of shape {p.shape}")
    return p, t


def psnr(pred, target) -> float:
    """Peak signal-to-noise ratio in dB, data range 1.0.

    pred, target: (frames, height, width, 3). The MSE is pooled over every pixel and channel of every
    frame (not a mean of per-frame PSNRs, which would let one perfect frame dominate with +inf).
    Returns math.inf when the inputs are identical.
    """
    p, t = _pair(pred, target)
    mse = float(np.mean((p - t) ** 2))
    if mse == 0.0:
        return math.inf
    return -10.0 * math.log10(mse)


def _gaussian_kernel(size: int, sigma: float) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    kernel = torch.exp(-(coords**2) / (2.0 * sigma**2))
    return kernel / kernel.sum()


def _ssim_window(height: int, width: int) -> tuple[int, float]:
    """Window size and sigma for a frame: 11 / 1.5, shrunk for frames smaller than 11 px.

    The shrunk window is the largest odd size that fits, with sigma scaled in proportion so the
    Gaussian keeps the same shape relative to the window.
    """
    size = min(_SSIM_WINDOW, height, width)
    if size % 2 == 0:
        size -= 1
    return size, _SSIM_SIGMA * size / _SSIM_WINDOW


def ssim(pred, target) -> float:
    """Structural similarity (Wang et al. 2004), averaged over every channel of every frame.

    pred, target: (frames, height, width, 3). Gaussian window 11x11 with sigma 1.5, K1 = 0.01,
    K2 = 0.03, data range 1. Local statistics use 'valid' filtering (no padding), so border pixels
    are not biased by invented values; the SSIM map is therefore (height-10, width-10) per channel.
    Frames smaller than 11 px in either side (e.g. mouth crops) use the largest odd window that
    fits, with sigma scaled by size/11. Returns 1.0 for identical inputs.
    """
    p, t = _pair(pred, target)
    if np.array_equal(p, t):
        return 1.0
    n, h, w, c = p.shape
    size, sigma = _ssim_window(h, w)
    g = _gaussian_kernel(size, sigma)
    kx = g.view(1, 1, 1, size)
    ky = g.view(1, 1, size, 1)

    def blur(x: torch.Tensor) -> torch.Tensor:
        # Separable Gaussian: two 1-D passes equal the 2-D window at a fraction of the cost.
        return F.conv2d(F.conv2d(x, kx), ky)

    # Every channel of every frame becomes an independent single-channel image.
    x = torch.from_numpy(np.ascontiguousarray(p.transpose(0, 3, 1, 2))).reshape(n * c, 1, h, w)
    y = torch.from_numpy(np.ascontiguousarray(t.transpose(0, 3, 1, 2))).reshape(n * c, 1, h, w)
    c1 = (_SSIM_K1 * 1.0) ** 2
    c2 = (_SSIM_K2 * 1.0) ** 2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return float((num / den).mean())


def crop_box(frames, box) -> np.ndarray:
    """Crop a fixed box from every frame: frames[:, y0:y1, x0:x1].

    frames: (frames, height, width, 3), any dtype (returned unconverted, so uint8 stays uint8).
    box: (x0, y0, x1, y1) in pixels, end-exclusive; values are rounded and clamped to the frame.
    Raises ValueError when the clamped box is empty.
    """
    arr = np.asarray(frames)
    if arr.ndim != 4:
        raise ValueError(f"expected video of shape (frames, height, width, 3), got {arr.shape}")
    h, w = arr.shape[1], arr.shape[2]
    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    x0, x1 = min(max(x0, 0), w), min(max(x1, 0), w)
    y0, y1 = min(max(y0, 0), h), min(max(y1, 0), h)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"box {tuple(box)} is empty inside a {w}x{h} frame")
    return arr[:, y0:y1, x0:x1]


def luminance(frames) -> np.ndarray:
    """Rec. 601 luma 0.299R + 0.587G + 0.114B in [0, 1]; (frames, h, w, 3) -> (frames, h, w)."""
    v = as_float_video(frames)
    return v[..., 0] * 0.299 + v[..., 1] * 0.587 + v[..., 2] * 0.114


def mouth_opening(frames, box, threshold: float = 0.25) -> np.ndarray:
    """Per-frame mouth opening: fraction of pixels in `box` whose luminance is below `threshold`.

    frames: (frames, height, width, 3); box: (x0, y0, x1, y1) as in `crop_box`.
    Returns float64 array of shape (frames,) with values in [0, 1].

    No learned model is involved. In the synthetic corpus the mouth interior is drawn dark
    (luminance <= ~0.15) while skin and lips are bright (>= 0.35), so with the fixed ground-truth
    mouth box the dark area inside it grows with how wide the mouth is open. The threshold 0.25 sits
    between the two populations. On real faces this is only a rough proxy (beards, shadows).
    """
    lum = luminance(crop_box(as_float_video(frames), box))
    return (lum < threshold).mean(axis=(1, 2))


def _check_temporal(v: np.ndarray) -> None:
    if v.shape[0] < 2:
        raise ValueError(f"need at least 2 frames for a temporal metric, got {v.shape[0]}")


def temporal_jitter(pred, target) -> float:
    """Mean absolute error between predicted and true frame-to-frame changes.

    pred, target: (frames, height, width, 3), frames >= 2. Compares (pred[t+1] - pred[t]) with
    (target[t+1] - target[t]), averaged over all pixels, channels and t. A constant offset from the
    target costs nothing (its motion is right); flicker or wrong motion does. 0 for pred == target.
    """
    p, t = _pair(pred, target)
    _check_temporal(p)
    return float(np.mean(np.abs(np.diff(p, axis=0) - np.diff(t, axis=0))))


def flicker(video) -> float:
    """Mean absolute adjacent-frame difference |v[t+1] - v[t]| of one video (frames >= 2).

    Measures how much a video changes from frame to frame; 0 for a static video.
    """
    v = as_float_video(video)
    _check_temporal(v)
    return float(np.mean(np.abs(np.diff(v, axis=0))))
