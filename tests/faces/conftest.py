"""Fixtures for the face tests: real face photos shipped by installed packages, turned into short videos.

astronaut: skimage.data.astronaut() (Eileen Collins, bundled in scikit-image's data folder, no download).
grace: matplotlib's sample_data/grace_hopper.jpg (Grace Hopper, bundled with matplotlib).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

torch.set_num_threads(1)  # the test machine is shared

FPS = 25.0
RATE = 16000
PAN_FRAMES = 20
PAN_SIDE = 288


def _astronaut() -> np.ndarray:
    skimage_data = pytest.importorskip("skimage.data")
    return skimage_data.astronaut()  # (512,512,3) uint8, read from skimage's bundled astronaut.png


def _grace() -> np.ndarray:
    from matplotlib import cbook
    from PIL import Image

    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as image:
        return np.asarray(image.convert("RGB").resize((256, 300), Image.LANCZOS))  # (300,256,3)


def _pan_offsets(num: int = PAN_FRAMES) -> np.ndarray:
    """(num,2) int top-left (x, y) of the moving window: 3 px right and 1 px down per frame."""
    return np.array([(60 + 3 * t, 10 + t) for t in range(num)], np.int64)


def _pan_frames(num: int = PAN_FRAMES) -> np.ndarray:
    """(num,288,288,3) uint8: a window panning over the astronaut photo; the face moves (-3,-1) px a frame."""
    img = _astronaut()
    return np.stack([img[y : y + PAN_SIDE, x : x + PAN_SIDE] for x, y in _pan_offsets(num)])


def _sine(seconds: float, rate: int = RATE, freq: float = 220.0, channels: int = 1) -> np.ndarray:
    """(N,) or (N,channels) float32 sine at 0.3 with a 4 Hz loudness wobble (a stand-in for syllables)."""
    t = np.arange(round(seconds * rate)) / rate
    x = (0.3 * np.sin(2 * np.pi * freq * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))).astype(np.float32)
    return np.repeat(x[:, None], channels, axis=1) if channels > 1 else x


@pytest.fixture(scope="session")
def astronaut():
    return _astronaut()


@pytest.fixture(scope="session")
def grace():
    return _grace()


@pytest.fixture(scope="session")
def pan_frames():
    return _pan_frames()


@pytest.fixture(scope="session")
def pan_offsets():
    return _pan_offsets()


# Helpers are served as fixtures rather than imported, so no test relies on `conftest` being importable.
@pytest.fixture(scope="session")
def sine():
    return _sine
