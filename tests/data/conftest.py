"""Shared fixtures for the data-layer tests: a tiny synthetic corpus and small signal generators."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from privfedtalk.data.synthetic import synthesize_corpus

torch.set_num_threads(1)  # the test machine is shared


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """2 identities x 1 clip x 2 s at 64x64, 25 fps; returns the manifest."""
    root = tmp_path_factory.mktemp("corpus")
    return synthesize_corpus(root, identities=2, clips=1, seconds=2.0, fps=25.0, size=64, seed=0)


def _smooth_frames(num: int, height: int, width: int) -> np.ndarray:
    """(num,H,W,3) uint8 smoothly varying colour pattern that drifts over time."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = []
    for i in range(num):
        r = 128 + 60 * np.sin(xx / 9 + i * 0.2)
        g = 128 + 60 * np.cos(yy / 7 - i * 0.1)
        b = 128 + 50 * np.sin((xx + yy) / 11)
        frames.append(np.stack([r, g, b], axis=-1))
    return np.stack(frames).astype(np.uint8)


def _tone_with_noise(num_samples: int, sample_rate: int = 16000, seed: int = 0) -> np.ndarray:
    """(N,) float32: 440 Hz sine at 0.4 plus white noise at 0.05."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples) / sample_rate
    return (0.4 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(num_samples)).astype(np.float32)


# Helpers are served as fixtures rather than imported, so no test relies on `conftest` being importable.
@pytest.fixture(scope="session")
def smooth_frames():
    return _smooth_frames


@pytest.fixture(scope="session")
def tone_with_noise():
    return _tone_with_noise
