"""Real-face metrics from dlib: 128-d descriptor identity similarity, 68-point mouth aperture, lip-sync, LMD.

Needs the `faces` extra (dlib + face-recognition-models); imports are lazy, see faces_available().
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from collections import OrderedDict

import numpy as np

from privfedtalk.data.faces import model_file
from privfedtalk.errors import PrivFedTalkError

__all__ = [
    "faces_available",
    "face_landmarks",
    "face_landmarks_video",
    "face_descriptor",
    "identity_distance_dlib",
    "identity_similarity_dlib",
    "mouth_aperture",
    "mouth_landmark_distance",
    "score_real_clip",
]

_SHAPE_68 = "shape_predictor_68_face_landmarks.dat"
_RESNET = "dlib_face_recognition_resnet_model_v1.dat"
# 68-point (iBUG 300-W) indices, 0-based.
_LEFT_EYE, _RIGHT_EYE = slice(36, 42), slice(42, 48)
_MOUTH = slice(48, 68)
_INNER_LIP_PAIRS = ((61, 67), (62, 66), (63, 65))  # upper / lower inner-lip points facing each other
# Landmark series need this share of frames with a face before a correlation over them means anything.
_MIN_FOUND = 0.5
_CACHE_SIZE = 8


def faces_available() -> bool:
    """True when dlib and the face-recognition-models files (68-point predictor, ResNet) are installed."""
    try:
        has_dlib = importlib.util.find_spec("dlib") is not None
    except (ImportError, ValueError):
        has_dlib = False
    return has_dlib and model_file(_SHAPE_68) is not None and model_file(_RESNET) is not None


@functools.lru_cache(maxsize=1)
def _models():
    if not faces_available():
        raise PrivFedTalkError(
            "real-face metrics need dlib and face-recognition-models: pip install 'privfedtalk[faces]'"
        )
    import dlib

    return (
        dlib.get_frontal_face_detector(),
        dlib.shape_predictor(str(model_file(_SHAPE_68))),
        dlib.face_recognition_model_v1(str(model_file(_RESNET))),
    )


def _uint8(frame) -> np.ndarray:
    arr = np.asarray(frame)
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"expected one (H,W,3) RGB frame, got {arr.shape}")
    return np.ascontiguousarray(arr)


def _shape(image: np.ndarray):
    """dlib 68-point full_object_detection of the best-scoring face in (H,W,3) uint8, or None."""
    detector, predictor, _ = _models()
    # HOG needs faces of ~80 px: frames below 256 px (a 128 px crop holds a ~80 px face) are searched at 2x
    # first, larger ones at 1x first; the other scale is tried only when the first finds nothing.
    order = (1, 0) if min(image.shape[:2]) < 256 else (0, 1)
    for upsample in order:
        rects, scores, _ = detector.run(image, upsample, 0.0)
        if len(rects):
            return predictor(image, rects[int(np.argmax(scores))])
    return None


def face_landmarks(frame) -> np.ndarray | None:
    """68 landmarks (68,2) float64 (x, y) in pixels of the main face of one (H,W,3) frame, or None."""
    shape = _shape(_uint8(frame))
    if shape is None:
        return None
    return np.array([[p.x, p.y] for p in shape.parts()], np.float64)


_LANDMARK_CACHE: OrderedDict[str, np.ndarray] = OrderedDict()


def face_landmarks_video(frames) -> np.ndarray:
    """Landmarks of every frame of (T,H,W,3): (T,68,2) float64, NaN rows where no face was found.

    The last few videos are cached by content hash: evaluation scores the same real clip against several
    generated ones (own audio, silence, other audio).
    """
    arr = np.asarray(frames)
    if arr.ndim != 4:
        raise ValueError(f"expected video of shape (frames, height, width, 3), got {arr.shape}")
    key = hashlib.blake2b(np.ascontiguousarray(arr).view(np.uint8), digest_size=16)
    key.update(str((arr.shape, arr.dtype.str)).encode())
    digest = key.hexdigest()
    if digest in _LANDMARK_CACHE:
        _LANDMARK_CACHE.move_to_end(digest)
        return _LANDMARK_CACHE[digest].copy()
    out = np.full((arr.shape[0], 68, 2), np.nan)
    for t in range(arr.shape[0]):
        points = face_landmarks(arr[t])
        if points is not None:
            out[t] = points
    _LANDMARK_CACHE[digest] = out
    while len(_LANDMARK_CACHE) > _CACHE_SIZE:
        _LANDMARK_CACHE.popitem(last=False)
    return out.copy()


def face_descriptor(frame) -> np.ndarray | None:
    """dlib's 128-d face descriptor (128,) float64 of the main face in one (H,W,3) frame, or None.

    dlib_face_recognition_resnet_model_v1 on the 68-point aligned 150x150 chip; dlib calls two faces the same
    person when their descriptors are closer than 0.6 (Euclidean).
    """
    image = _uint8(frame)
    shape = _shape(image)
    if shape is None:
        return None
    _, _, resnet = _models()
    return np.asarray(resnet.compute_face_descriptor(image, shape), np.float64)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


def _descriptors(frames, max_frames: int) -> list[np.ndarray]:
    arr = np.asarray(frames)
    if arr.ndim == 3:
        arr = arr[None]
    picks = np.unique(np.linspace(0, arr.shape[0] - 1, min(max_frames, arr.shape[0])).round().astype(int))
    found = (face_descriptor(arr[t]) for t in picks)
    return [d for d in found if d is not None]


def _identity_scores(frames, reference, max_frames: int) -> tuple[float, float]:
    """(mean cosine similarity, mean Euclidean distance) of dlib descriptors to the reference; NaN if none."""
    ref = face_descriptor(reference)
    found = _descriptors(frames, max_frames) if ref is not None else []
    if not found:
        return float("nan"), float("nan")
    sims = [_cosine(d, ref) for d in found]
    dists = [float(np.linalg.norm(d - ref)) for d in found]
    return float(np.mean(sims)), float(np.mean(dists))


def identity_similarity_dlib(frames, reference, max_frames: int = 8) -> float:
    """dlib 128-d face descriptor similarity, a CSIM substitute, not ArcFace CSIM.

    Mean cosine similarity between the descriptor of `reference` (H,W,3) and those of up to `max_frames`
    evenly spaced frames of `frames` (T,H,W,3) or one (H,W,3) frame; frames without a face are left out.
    NaN when the reference or every frame has no detectable face. dlib descriptors are not zero-mean, so
    cosines are high for everyone (see tests/faces for measured same/different-person values); compare
    values with each other, not with published ArcFace CSIM numbers.
    """
    return _identity_scores(frames, reference, max_frames)[0]


def identity_distance_dlib(frames, reference, max_frames: int = 8) -> float:
    """Mean Euclidean distance of dlib 128-d descriptors (dlib's own metric: < 0.6 = same person), or NaN.

    Same frames and reference as identity_similarity_dlib.
    """
    return _identity_scores(frames, reference, max_frames)[1]


def _eye_frame(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-frame eye midpoint (T,2), eye-line unit vector (T,2) and interocular distance (T,) of (T,68,2)."""
    left = points[:, _LEFT_EYE].mean(axis=1)
    right = points[:, _RIGHT_EYE].mean(axis=1)
    axis = right - left
    iod = np.linalg.norm(axis, axis=1)
    return (left + right) / 2.0, axis / np.maximum(iod, 1e-9)[:, None], iod


def _aperture_from_landmarks(points: np.ndarray) -> np.ndarray:
    """(T,68,2) -> (T,) inner-lip opening in interocular distances (NaN where no face)."""
    gaps = [np.linalg.norm(points[:, a] - points[:, b], axis=1) for a, b in _INNER_LIP_PAIRS]
    _, _, iod = _eye_frame(points)
    return np.mean(gaps, axis=0) / np.maximum(iod, 1e-9)


def mouth_aperture(frames) -> np.ndarray:
    """Mouth opening per frame of (T,H,W,3): (T,) float64, NaN where no face is found.

    Mean distance of the facing inner-lip landmark pairs 61-67, 62-66, 63-65 (68-point scheme), divided by
    the interocular distance (between the eye centres) so it does not change with face size or crop scale.
    Closed lips give about 0; a wide-open mouth about 0.3-0.5.
    """
    return _aperture_from_landmarks(face_landmarks_video(frames))


def _normalised_mouth(points: np.ndarray) -> np.ndarray:
    """(T,68,2) -> (T,20,2) mouth landmarks 48-67 in a face frame: origin at the eye midpoint, x along the
    eye line, unit = interocular distance (removes head position, in-plane roll and face size)."""
    mid, axis, iod = _eye_frame(points)
    rel = points[:, _MOUTH] - mid[:, None]
    x = (rel * axis[:, None]).sum(axis=-1)
    y = rel[..., 1] * axis[:, None, 0] - rel[..., 0] * axis[:, None, 1]
    return np.stack([x, y], axis=-1) / np.maximum(iod, 1e-9)[:, None, None]


def _lmd_from_landmarks(pred: np.ndarray, true: np.ndarray) -> float:
    both = ~np.isnan(pred[:, 0, 0]) & ~np.isnan(true[:, 0, 0])
    if not both.any():
        return float("nan")
    diff = _normalised_mouth(pred[both]) - _normalised_mouth(true[both])
    return float(np.linalg.norm(diff, axis=-1).mean())


def mouth_landmark_distance(pred_frames, true_frames) -> float:
    """LMD: mean L2 distance between the mouth landmarks 48-67 of two videos (T,H,W,3), frame by frame.

    Landmarks are first put in a face-normalised frame (eye midpoint origin, eye line as x axis, interocular
    distance as unit), so the result is in interocular distances and ignores head position and size: about
    0.05 is a close match. Frames where either video has no face are left out; NaN when none is left.
    """
    pred = face_landmarks_video(pred_frames)
    true = face_landmarks_video(true_frames)
    if pred.shape[0] != true.shape[0]:
        raise ValueError(f"videos differ in length: {pred.shape[0]} vs {true.shape[0]} frames")
    return _lmd_from_landmarks(pred, true)


def _filled(series: np.ndarray) -> np.ndarray | None:
    """NaNs replaced by linear interpolation, or None when fewer than half the frames have a value."""
    valid = np.isfinite(series)
    if valid.mean() < _MIN_FOUND or valid.sum() < 2:
        return None
    t = np.arange(series.size)
    return np.interp(t, t[valid], series[valid])


def score_real_clip(generated, clip, max_id_frames: int = 8) -> dict:
    """Real-face metrics of a generated video (T,H,W,3) against a real clip (a corpus.Clip).

    Keys: id_sim_dlib (see identity_similarity_dlib; reference = the clip's first frame), id_dist_dlib,
    face_found (share of generated frames with a detectable face), and when both videos show a face in at
    least half their frames: lmd (mouth_landmark_distance) and the lip_sync_scores keys (sync_corr, ...,
    audio_corr, ...) of the generated mouth aperture against the real one and the clip's loudness. Keys that
    cannot be computed are left out, so averaging over clips skips them.
    """
    from privfedtalk.metrics.sync import lip_sync_scores

    generated = np.asarray(generated)
    true = np.asarray(clip.frames)
    if generated.shape[0] != true.shape[0]:
        raise ValueError(f"generated has {generated.shape[0]} frames, the clip {true.shape[0]}")
    sim, dist = _identity_scores(generated, true[0], max_id_frames)
    scores = {"id_sim_dlib": sim, "id_dist_dlib": dist} if np.isfinite(sim) else {}
    gen_points = face_landmarks_video(generated)
    true_points = face_landmarks_video(true)
    scores["face_found"] = float(np.mean(~np.isnan(gen_points[:, 0, 0])))
    gen_open = _filled(_aperture_from_landmarks(gen_points))
    true_open = _filled(_aperture_from_landmarks(true_points))
    if gen_open is not None and true_open is not None:
        scores.update(lip_sync_scores(gen_open, true_open, np.asarray(clip.loudness, np.float64)))
        scores["lmd"] = _lmd_from_landmarks(gen_points, true_points)
    return scores
