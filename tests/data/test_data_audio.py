"""Audio features: log-mel basics and the frame <-> mel-token alignment at 25, 30 and 29.97 fps."""

from __future__ import annotations

import numpy as np
import pytest

from privfedtalk.data.audio import (
    LOG_FLOOR,
    feature_tokens,
    frame_audio_features,
    frame_loudness,
    log_mel_spectrogram,
    mel_filterbank,
)

SR = 16000


def test_log_mel_shape_and_silence_floor():
    audio = np.zeros(SR, np.float32)
    mel = log_mel_spectrogram(audio, SR, n_mels=32, hop_ms=10.0)
    assert mel.shape == (1 + SR // 160, 32) and mel.dtype == np.float32
    assert np.allclose(mel, LOG_FLOOR)


def test_mel_filterbank_triangles():
    fb = mel_filterbank(SR, 512, 32)
    assert fb.shape == (32, 257)
    assert np.all(fb >= 0) and np.all(fb.max(axis=1) > 0.5) and fb.max() <= 1.0
    centres = fb.argmax(axis=1)
    assert np.all(np.diff(centres) >= 0)  # filters ordered by frequency


def test_tone_lands_in_its_mel_band():
    t = np.arange(SR) / SR
    mel = log_mel_spectrogram(0.5 * np.sin(2 * np.pi * 1000 * t), SR, n_mels=32)
    fb = mel_filterbank(SR, 512, 32)
    assert abs(int(mel[50].argmax()) - int(fb[:, 32].argmax())) <= 1  # bin 32 of 512 at 16 kHz = 1 kHz


@pytest.mark.parametrize("fps", [25.0, 30.0, 29.97])
@pytest.mark.parametrize("frame", [0, 7, 40])
def test_burst_aligns_with_frame_centre_token(fps, frame):
    num = 50
    audio = np.zeros(round(num / fps * SR) + 1, np.float32)
    centre = int(round((frame + 0.5) / fps * SR))
    half = 80  # 10 ms tone burst centred on the frame's centre time
    t = np.arange(-half, half) / SR
    audio[max(0, centre - half) : centre + half] = (0.5 * np.sin(2 * np.pi * 800 * t) * np.hanning(2 * half))[
        max(0, half - centre) :
    ]
    feats = frame_audio_features(audio, SR, fps, num, n_mels=32, hop_ms=10.0, window_ms=200.0)
    tokens = feature_tokens(10.0, 200.0)
    assert feats.shape == (num, tokens, 32) and feats.dtype == np.float32
    energy = feats.mean(axis=2)  # (num, tokens)
    assert int(energy[frame].argmax()) == tokens // 2
    assert int(energy[:, tokens // 2].argmax()) == frame
    loud = frame_loudness(audio, SR, fps, num)
    assert loud.shape == (num,) and int(loud.argmax()) == frame


def test_features_silence_is_minus_one_and_loud_is_positive():
    num, fps = 25, 25.0
    audio = np.zeros(SR, np.float32)
    audio[SR // 2 :] = 0.5 * np.sin(2 * np.pi * 200 * np.arange(SR // 2) / SR)
    feats = frame_audio_features(audio, SR, fps, num)
    assert np.all(feats[:2] == -1.0)  # fixed affine: silence maps to exactly -1 in every clip
    assert feats[-3:].max() > 0.0 and feats.max() < 1.5


def test_frame_loudness_values():
    fps, num = 25.0, 10
    t = np.arange(SR) / SR
    loud = frame_loudness(0.4 * np.sin(2 * np.pi * 250 * t), SR, fps, num)
    assert np.allclose(loud, 0.4 / np.sqrt(2), rtol=1e-3)
    past_end = frame_loudness(np.ones(160, np.float32), SR, fps, 3)
    assert past_end[0] == pytest.approx(np.sqrt(160 / 640)) and past_end[1] == 0.0
