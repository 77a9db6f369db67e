"""Audio features aligned to video frames: log-mel spectrogram, per-frame log-mel windows, per-frame loudness.

Time convention: mel frame i is centred at i*hop seconds; video frame t covers [t/fps, (t+1)/fps) with centre
(t+0.5)/fps.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "LOG_FLOOR",
    "LOG_CEIL",
    "mel_filterbank",
    "log_mel_spectrogram",
    "normalize_log_mel",
    "frame_audio_features",
    "frame_loudness",
    "feature_tokens",
]

_EPS = 1e-5
LOG_FLOOR = math.log(_EPS)  # log-mel value of digital silence (about -11.51)
# Log-mel level mapped to +1: the loudest mel bands of full-scale (peak ~1) speech sit near it.
LOG_CEIL = -3.0


def _hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, np.float64) / 700.0)


def _mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m, np.float64) / 2595.0) - 1.0)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None):
    """HTK-mel triangular filters with unit peak: (n_mels, n_fft//2+1) float32."""
    fmax = sample_rate / 2.0 if fmax is None else fmax
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    freqs = np.arange(n_fft // 2 + 1) * sample_rate / n_fft
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rise = (freqs[None] - lo) / np.maximum(mid - lo, 1e-9)
    fall = (hi - freqs[None]) / np.maximum(hi - mid, 1e-9)
    return np.clip(np.minimum(rise, fall), 0.0, None).astype(np.float32)


def log_mel_spectrogram(
    audio: np.ndarray, sample_rate: int, n_mels: int = 32, hop_ms: float = 10.0, win_ms: float = 25.0
) -> np.ndarray:
    """Log-mel power spectrogram: (mel_frames, n_mels) float32 with mel_frames = 1 + N // hop.

    audio: (N,) float mono. Frames are Hann-windowed, zero-padded at the ends (so silence stays at the floor)
    and centred at i*hop. Power is scaled by 1/sum(window)^2, so a full-scale sine peaks near 0.25 per bin;
    values are log(1e-5 + mel power), floor LOG_FLOOR.
    """
    x = np.asarray(audio, np.float32).reshape(-1)
    hop = max(1, int(round(hop_ms * sample_rate / 1000.0)))
    win = max(2, int(round(win_ms * sample_rate / 1000.0)))
    n_fft = 1 << (win - 1).bit_length()
    num = 1 + x.size // hop
    half = win // 2
    padded = np.zeros(half + (num - 1) * hop + win, np.float32)
    padded[half : half + x.size] = x
    frames = np.lib.stride_tricks.sliding_window_view(padded, win)[::hop][:num]  # (num, win)
    window = np.hanning(win + 2)[1:-1].astype(np.float32)  # periodic-ish Hann without zero end points
    spec = np.fft.rfft(frames * window, n=n_fft, axis=1)
    power = (spec.real**2 + spec.imag**2) / float(window.sum()) ** 2
    mel = power @ mel_filterbank(sample_rate, n_fft, n_mels).T
    return np.log(_EPS + mel).astype(np.float32)


def normalize_log_mel(log_mel: np.ndarray) -> np.ndarray:
    """Fixed affine map: silence (LOG_FLOOR) -> -1, LOG_CEIL (loud speech) -> +1; louder input exceeds 1.

    Fixed, not per-clip statistics, so silence is -1 in every clip and loudness differences survive.
    """
    mid, half = (LOG_CEIL + LOG_FLOOR) / 2.0, (LOG_CEIL - LOG_FLOOR) / 2.0
    return ((np.asarray(log_mel, np.float32) - mid) / half).astype(np.float32)


def feature_tokens(hop_ms: float = 10.0, window_ms: float = 200.0) -> int:
    """Number of mel frames (tokens) per video frame."""
    return max(1, int(round(window_ms / hop_ms)))


def frame_audio_features(
    audio: np.ndarray,
    sample_rate: int,
    fps: float,
    num_frames: int,
    n_mels: int = 32,
    hop_ms: float = 10.0,
    window_ms: float = 200.0,
) -> np.ndarray:
    """Per-video-frame log-mel windows: (num_frames, tokens, n_mels) float32, normalised to about [-1, 1].

    tokens = round(window_ms / hop_ms). Token `tokens // 2` of row t is the mel frame nearest the frame's
    centre time (t+0.5)/fps; the window spans tokens//2 mel frames before it and the rest after. Positions
    outside the audio are filled with silence (-1 after normalisation).
    """
    tokens = feature_tokens(hop_ms, window_ms)
    log_mel = log_mel_spectrogram(audio, sample_rate, n_mels=n_mels, hop_ms=hop_ms)
    hop_s = max(1, int(round(hop_ms * sample_rate / 1000.0))) / sample_rate  # the hop actually used
    centres = np.rint((np.arange(num_frames) + 0.5) / fps / hop_s).astype(np.int64)
    index = centres[:, None] - tokens // 2 + np.arange(tokens)[None, :]  # (num_frames, tokens)
    padded = np.concatenate([log_mel, np.full((1, n_mels), LOG_FLOOR, np.float32)])
    index = np.where((index < 0) | (index >= log_mel.shape[0]), log_mel.shape[0], index)
    return normalize_log_mel(padded[index])


def frame_loudness(audio: np.ndarray, sample_rate: int, fps: float, num_frames: int) -> np.ndarray:
    """RMS of the audio inside each video frame's span [t/fps, (t+1)/fps): (num_frames,) float32.

    Samples past the end of the audio count as silence.
    """
    x = np.asarray(audio, np.float64).reshape(-1)
    bounds = np.floor(np.arange(num_frames + 1) * sample_rate / fps + 1e-9).astype(np.int64)
    csum = np.concatenate([[0.0], np.cumsum(x * x)])
    lo, hi = bounds[:-1], bounds[1:]
    energy = csum[np.minimum(hi, x.size)] - csum[np.minimum(lo, x.size)]
    return np.sqrt(np.maximum(energy, 0.0) / np.maximum(hi - lo, 1)).astype(np.float32)
