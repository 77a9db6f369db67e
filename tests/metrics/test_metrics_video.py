"""Video metrics on constructed inputs with known answers."""

import math

import numpy as np
import pytest

from privfedtalk.metrics import crop_box, flicker, mouth_opening, psnr, ssim, temporal_jitter


def _video(frames=4, h=32, w=32, seed=0, low=0.2, high=0.7):
    rng = np.random.default_rng(seed)
    return rng.uniform(low, high, size=(frames, h, w, 3))


def test_identical_videos_psnr_inf_ssim_one():
    v = _video()
    assert psnr(v, v.copy()) == math.inf
    assert ssim(v, v.copy()) == 1.0


@pytest.mark.parametrize("delta", [0.01, 0.05, 0.2])
def test_psnr_constant_offset(delta):
    v = _video()
    assert psnr(v + delta, v) == pytest.approx(-10 * math.log10(delta**2), abs=1e-6)


def test_uint8_matches_float():
    v8 = (_video() * 255).round().astype(np.uint8)
    w8 = np.clip(v8.astype(int) + 3, 0, 255).astype(np.uint8)
    assert psnr(v8, w8) == pytest.approx(psnr(v8 / 255.0, w8 / 255.0))
    assert ssim(v8, w8) == pytest.approx(ssim(v8 / 255.0, w8 / 255.0))


def test_ssim_monotone_in_noise():
    # A smooth image so SSIM is far from its floor and noise clearly lowers structure.
    y, x = np.mgrid[0:32, 0:32] / 31.0
    img = np.stack([0.3 + 0.4 * x, 0.3 + 0.4 * y, 0.5 + 0.2 * x * y], axis=-1)
    v = np.repeat(img[None], 3, axis=0)
    rng = np.random.default_rng(1)
    noise = rng.standard_normal(v.shape)
    scores = [ssim(v + s * noise, v) for s in (0.0, 0.01, 0.03, 0.1, 0.3)]
    assert scores[0] == 1.0
    assert all(a > b for a, b in zip(scores, scores[1:]))
    assert scores[-1] < 0.5


def test_ssim_small_crop():
    v = _video(h=32, w=32)
    noisy = v + 0.05 * np.random.default_rng(2).standard_normal(v.shape)
    crop_a = crop_box(v, (10, 20, 22, 28))
    crop_b = crop_box(noisy, (10, 20, 22, 28))
    assert crop_a.shape == (4, 8, 12, 3)
    s = ssim(crop_b, crop_a)
    assert 0.0 < s < 1.0
    assert ssim(crop_a, crop_a) == 1.0
    # Even a 1-pixel-high crop works (window shrinks to 1).
    assert np.isfinite(ssim(crop_box(noisy, (0, 0, 5, 1)), crop_box(v, (0, 0, 5, 1))))


def test_crop_box_clamps_and_rejects_empty():
    v = _video(frames=2, h=10, w=20)
    assert crop_box(v, (-5, -5, 100, 100)).shape == (2, 10, 20, 3)
    assert crop_box(v, (15, 8, 30, 30)).shape == (2, 2, 5, 3)
    with pytest.raises(ValueError):
        crop_box(v, (25, 0, 30, 5))


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        psnr(_video(h=32), _video(h=16))


def test_temporal_jitter_flicker_vs_steady():
    target = _video(frames=8)
    signs = np.where(np.arange(8) % 2 == 0, 1.0, -1.0)[:, None, None, None]
    flickering = target + 0.05 * signs
    steady = target + 0.05
    assert temporal_jitter(target, target) == 0.0
    assert temporal_jitter(steady, target) == pytest.approx(0.0, abs=1e-12)
    # Each adjacent difference is off by exactly 0.1.
    assert temporal_jitter(flickering, target) == pytest.approx(0.1)
    assert temporal_jitter(flickering, target) > temporal_jitter(steady, target)


def test_flicker():
    static = np.repeat(_video(frames=1), 5, axis=0)
    assert flicker(static) == 0.0
    blink = static + 0.1 * (np.arange(5) % 2)[:, None, None, None]
    assert flicker(blink) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        flicker(static[:1])


def _face_with_mouth(radii, h=48, w=48, box=(12, 24, 36, 40)):
    """Skin-toned frames with a dark ellipse of growing vertical radius centred in the mouth box."""
    frames = np.empty((len(radii), h, w, 3))
    frames[:] = (0.85, 0.65, 0.55)  # skin, luminance ~0.7
    x0, y0, x1, y1 = box
    cy, cx = (y0 + y1 - 1) / 2, (x0 + x1 - 1) / 2
    yy, xx = np.mgrid[0:h, 0:w]
    for i, ry in enumerate(radii):
        if ry > 0:
            inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / 8.0) ** 2 <= 1.0
            frames[i][inside] = (0.12, 0.05, 0.05)  # mouth interior, luminance ~0.07
    return frames, box


def test_mouth_opening_monotone():
    frames, box = _face_with_mouth([0, 1.5, 3, 4.5, 6, 7.5])
    opening = mouth_opening(frames, box)
    assert opening.shape == (6,)
    assert opening[0] == 0.0
    assert np.all(np.diff(opening) > 0)
    assert opening[-1] <= 1.0
    # uint8 frames give the same answer.
    u8 = (frames * 255).round().astype(np.uint8)
    np.testing.assert_allclose(mouth_opening(u8, box), opening)


def test_mouth_opening_no_dark_pixels():
    frames, box = _face_with_mouth([0, 0, 0])
    np.testing.assert_array_equal(mouth_opening(frames, box), np.zeros(3))
