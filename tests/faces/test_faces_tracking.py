"""Face detection, tracking and cropping on a real face photo panned into a short video."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("dlib")
pytest.importorskip("skimage")

from privfedtalk.data import faces  # noqa: E402
from privfedtalk.data.faces import (  # noqa: E402
    FaceDetector,
    crop_frames,
    face_track,
    smooth_track,
    track_face,
)
from privfedtalk.errors import MediaError, PrivFedTalkError  # noqa: E402


def _centres(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, :2] + boxes[:, 2:]) / 2.0


def _compensated_spread(track, offsets) -> float:
    """Largest std (px, over x and y) of the crop centre mapped back to photo coordinates.

    The window moves by `offsets`, so a crop that follows the face perfectly has a constant centre there.
    """
    return float((_centres(track.boxes) + offsets).std(axis=0).max())


def test_dlib_track_finds_face_in_every_frame_and_is_stable(pan_frames, pan_offsets):
    track = face_track(pan_frames, FaceDetector("dlib"))
    assert track.found.all() and track.found_fraction == 1.0
    # Measured 0.14 px (landmark-refined, smoothed). The same face through raw HOG boxes jitters 2.6 px std.
    assert _compensated_spread(track, pan_offsets) < 0.5
    side = track.boxes[:, 2] - track.boxes[:, 0]
    assert np.allclose(track.boxes[:, 3] - track.boxes[:, 1], side)  # square
    assert np.ptp(side) < 3.0 and 120 < side.mean() < 190  # ~1.6 x a ~95 px face, hardly zooming
    assert np.array_equal(track_face(pan_frames, "dlib"), track.boxes)


def test_unrefined_hog_track_is_smoothed(pan_frames, pan_offsets):
    detector = FaceDetector("dlib", refine=False)
    track = face_track(pan_frames, detector)
    raw = _centres(track.faces) + pan_offsets
    # Smoothing must cut the HOG grid jitter (2.67 px std measured) at least in half; measured 1.12 px.
    assert _compensated_spread(track, pan_offsets) < 0.5 * raw.std(axis=0).max()
    assert _compensated_spread(track, pan_offsets) < 1.5


@pytest.mark.skipif(not faces._opencv_has_cascades(), reason="needs OpenCV 4.x with Haar cascades")
def test_opencv_backend_tracks_the_same_face(pan_frames, pan_offsets):
    haar = face_track(pan_frames, FaceDetector("opencv", refine=False))
    assert haar.found.all()
    assert _compensated_spread(haar, pan_offsets) < 1.0  # measured 0.20 px (raw Haar boxes 0.70 px)
    hog = face_track(pan_frames, FaceDetector("dlib", refine=False))
    # The Haar boxes are mapped onto dlib's convention: same face, similar crop.
    assert np.abs(_centres(haar.boxes) - _centres(hog.boxes)).max() < 12
    assert (
        abs((haar.boxes[:, 2] - haar.boxes[:, 0]).mean() / (hog.boxes[:, 2] - hog.boxes[:, 0]).mean() - 1)
        < 0.15
    )


def test_crop_keeps_the_face_still(pan_frames):
    """Re-detect the face in the 128 px crops: its centre must stay put although the photo pans 57 px."""
    crops = crop_frames(pan_frames, track_face(pan_frames, "dlib"), 128)
    assert crops.shape == (len(pan_frames), 128, 128, 3) and crops.dtype == np.uint8
    detector = FaceDetector("dlib")
    centres = np.array([_centres(detector.detect(c)[:1, :4])[0] for c in crops])
    assert np.abs(centres - 64).max() < 6  # face centred in the crop
    assert np.abs(centres - centres.mean(axis=0)).max() < 1.5  # measured 0.43 px max deviation


def test_smooth_track_fills_misses_and_ignores_outliers():
    """Linear motion with misses, frames not checked, one false positive far away and a second face."""
    t_all = np.arange(30)
    detections = []
    for t in t_all:
        x = 100.0 + 2.0 * t
        face = [x, 50.0, x + 40.0, 90.0, 1.0]
        if t % 7 == 3:
            detections.append(np.zeros((0, 5)))  # checked, missed
        elif t % 5 == 1:
            detections.append(None)  # not checked
        elif t == 10:
            detections.append(np.array([[300.0, 300.0, 340.0, 340.0, 2.0], face]))  # better-scored impostor
        else:
            detections.append(np.array([face]))
    track = smooth_track(detections, (480, 640), margin=1.5)
    expected_cx = 120.0 + 2.0 * t_all
    assert np.abs(_centres(track.boxes)[:, 0] - expected_cx).max() < 1e-6
    assert np.abs(_centres(track.boxes)[:, 1] - 70.0).max() < 1e-6
    assert np.allclose(track.boxes[:, 2] - track.boxes[:, 0], 60.0)
    assert track.found.sum() == sum(d is not None and len(d) > 0 for d in detections)


def test_crop_box_is_kept_inside_the_frame_or_padded():
    detections = [np.array([[0.0, 0.0, 40.0, 40.0, 1.0]])] * 3
    track = smooth_track(detections, (100, 100), margin=1.6)
    assert np.allclose(track.boxes[:, :2], 0.0)  # shifted inside instead of padded
    big = smooth_track(detections, (50, 50), margin=2.0)  # 80 px crop of a 50 px frame
    assert (big.boxes[:, 0] < 0).all()
    frames = np.full((3, 50, 50, 3), 200, np.uint8)
    out = crop_frames(frames, big.boxes, 32)
    assert out.shape == (3, 32, 32, 3) and (out == 200).all()  # edge-replicated padding


def test_no_face_raises_media_error(tmp_path):
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (4, 96, 96, 3), dtype=np.uint8)
    with pytest.raises(MediaError, match="no face found in .*clip.mp4") as err:
        track_face(noise, "dlib", path=tmp_path / "clip.mp4")
    assert "visible frontal face" in err.value.fix


def test_missing_backends_name_the_extra(monkeypatch):
    monkeypatch.setattr(faces, "available_backends", lambda: [])
    with pytest.raises(PrivFedTalkError, match=r"pip install 'privfedtalk\[faces\]'"):
        FaceDetector("auto")
    with pytest.raises(PrivFedTalkError, match=r"privfedtalk\[faces\]"):
        FaceDetector("dlib")
    with pytest.raises(PrivFedTalkError, match="unknown face detector"):
        FaceDetector("mtcnn")
