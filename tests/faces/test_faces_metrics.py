"""Real-face metrics (dlib descriptors and 68-point landmarks) on bundled face photos.

Identity test honesty: the only real faces shipped offline are one photo each of Eileen Collins (skimage
astronaut) and Grace Hopper (matplotlib sample data). "Same identity" is therefore the same photograph under
different crops, positions and scales, not two photos of one person; "different identity" is a real other
person.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("dlib")
pytest.importorskip("skimage")

from scipy.ndimage import map_coordinates  # noqa: E402

from privfedtalk.data.corpus import Clip  # noqa: E402
from privfedtalk.data.faces import crop_frames, track_face  # noqa: E402
from privfedtalk.metrics.faces import (  # noqa: E402
    face_descriptor,
    faces_available,
    identity_distance_dlib,
    identity_similarity_dlib,
    mouth_aperture,
    mouth_landmark_distance,
    score_real_clip,
)

pytestmark = pytest.mark.skipif(not faces_available(), reason="needs privfedtalk[faces] model files")


@pytest.fixture(scope="module")
def mouth_video(astronaut):
    """(20,256,256,3) uint8 astronaut whose lower lip is pulled down by `opening` px, and (20,) opening.

    A smooth vertical warp below the lip line (fading out sideways and below the chin) opens the mouth.
    """
    img = astronaut[40:296, 96:352]
    cx, cy, half = 127.5, 107.5, 22.5  # mouth centre and half width in this crop, from its 68 landmarks
    yy, xx = np.mgrid[0:256, 0:256].astype(np.float64)
    weight = np.clip(1.5 - np.abs(xx - cx) / half, 0, 1) * np.clip((yy - cy) / 3.0, 0, 1)
    weight *= np.clip(1 - (yy - cy - 25) / 20, 0, 1)
    opening = 6 * (0.5 + 0.5 * np.sin(np.arange(20) * 0.7))
    frames = []
    for d in opening:
        coords = [yy - d * weight, xx]
        channels = [
            map_coordinates(img[..., c].astype(np.float64), coords, order=1, mode="nearest") for c in range(3)
        ]
        frames.append(np.clip(np.rint(np.stack(channels, axis=-1)), 0, 255).astype(np.uint8))
    return np.stack(frames), opening


def _clip(frames, loudness) -> Clip:
    t = len(frames)
    return Clip(
        identity="astronaut",
        name="warp",
        path="warp.mp4",
        frames=frames,
        fps=25.0,
        audio=np.zeros(t * 640, np.float32),
        sample_rate=16000,
        features=np.zeros((t, 20, 32), np.float32),
        loudness=np.asarray(loudness, np.float32),
    )


def test_identity_similarity_same_face_beats_other_person(pan_frames, astronaut, grace):
    crops = crop_frames(pan_frames, track_face(pan_frames, "dlib"), 128)
    grace_crop = crop_frames(grace[None], track_face(grace[None], "dlib"), 128)[0]
    same_crops = identity_similarity_dlib(crops, crops[0])  # frames 0..19 of the pan vs frame 0
    same_scale = identity_similarity_dlib(crops[-1], astronaut)  # 128 px crop vs the 512 px photo
    other = identity_similarity_dlib(crops, grace_crop)
    # Measured: 0.9997, 0.9994 vs 0.886 (Euclidean 0.03, 0.05 vs 0.68; dlib's same-person threshold is 0.6).
    assert same_crops > 0.99 and same_scale > 0.99
    assert other < 0.95 and other < min(same_crops, same_scale) - 0.05
    assert identity_distance_dlib(crops, crops[0]) < 0.3 < 0.6 < identity_distance_dlib(crops, grace_crop)


def test_no_face_gives_nan_not_a_number(astronaut):
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (2, 128, 128, 3), dtype=np.uint8)
    assert face_descriptor(noise[0]) is None
    assert np.isnan(identity_similarity_dlib(noise, astronaut))
    assert np.isnan(identity_similarity_dlib(astronaut, noise[0]))
    assert np.isnan(mouth_aperture(noise)).all()


def test_mouth_aperture_follows_the_opening(mouth_video):
    frames, opening = mouth_video
    aperture = mouth_aperture(frames)
    assert aperture.shape == (20,) and np.isfinite(aperture).all()
    # Measured correlation 0.996; aperture 0.15 (lips apart in a smile) to 0.28 interocular distances.
    assert np.corrcoef(aperture, opening)[0, 1] > 0.9
    assert aperture[np.argmax(opening)] - aperture[np.argmin(opening)] > 0.08
    # Normalised by face size: the same video at half resolution gives about the same values.
    half = frames[:, ::2, ::2]
    assert np.abs(mouth_aperture(half) - aperture).max() < 0.05


def test_score_real_clip_rewards_sync_and_penalises_lag(mouth_video):
    frames, opening = mouth_video
    clip = _clip(frames, loudness=opening)  # a clip whose loudness drives its mouth
    perfect = score_real_clip(frames, clip)
    assert perfect["face_found"] == 1.0
    assert perfect["sync_corr"] > 0.999 and perfect["sync_lag"] == 0 and perfect["audio_corr"] > 0.9
    assert perfect["lmd"] == 0.0 and perfect["id_sim_dlib"] > 0.99
    late = np.concatenate([frames[:2], frames[:-2]])  # mouth two frames behind the audio
    lagged = score_real_clip(late, clip)
    assert lagged["sync_lag"] == 2 and lagged["audio_lag"] == 2
    assert lagged["sync_corr"] < 0.8 < lagged["sync_corr_best"]
    assert lagged["lmd"] > 0.01 and lagged["lmd"] == pytest.approx(mouth_landmark_distance(late, frames))


def test_score_real_clip_without_faces_leaves_keys_out(mouth_video):
    frames, opening = mouth_video
    noise = np.random.default_rng(1).integers(0, 256, frames.shape, dtype=np.uint8)
    scores = score_real_clip(noise, _clip(frames, opening))
    assert scores == {"face_found": 0.0}
