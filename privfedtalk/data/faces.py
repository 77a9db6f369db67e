"""Face detection, tracking and cropping for real talking-head videos (needs the `faces` extra).

dlib (HOG detector) or OpenCV (Haar cascade) are imported lazily, so the base package runs without them.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import median_filter

from privfedtalk.errors import MediaError, PrivFedTalkError

__all__ = [
    "BACKENDS",
    "FaceDetector",
    "FaceTrack",
    "available_backends",
    "crop_frame",
    "crop_frames",
    "face_track",
    "model_file",
    "smooth_track",
    "track_face",
]

BACKENDS = ("dlib", "opencv")
_INSTALL_HINT = "pip install 'privfedtalk[faces]'"
# Longest side a frame is shrunk to before detection: talking-head faces stay far above the detectors'
# ~80 px (dlib) / ~24 px (Haar) minimum there, and HOG cost grows with the pixel count.
_MAX_DETECT_SIDE = 640
# Haar boxes sit higher and are larger than dlib's (forehead instead of chin); this maps them onto dlib's
# convention so crops look alike whichever backend ran. Measured on the bundled astronaut and Grace Hopper
# photos at two scales (centre offset 0.07-0.10 of the size, scale 0.81-0.97): approximate by design.
_HAAR_SHIFT_Y = 0.085
_HAAR_SCALE = 0.86
# Landmark refinement: HOG/Haar boxes snap to an ~8 px grid (2-3 px frame-to-frame jitter on a still face),
# dlib's 5-point landmarks (eye corners, nose base) are stable to a fraction of a pixel. The box is rebuilt
# from them in dlib's convention: centre 0.7 of the way from the eye midpoint to the nose base, side 2.25
# face scales, where the face scale is the eye distance, or the eye-to-nose distance / 0.73 when larger
# (a turned head shortens the first, a nodding head the second). Fitted on the bundled photos (0.58-0.86,
# 2.1-2.7 box side per eye distance), so the crops match unrefined ones on average.
_LM_ALPHA = 0.7
_LM_SIDE = 2.25
_NOSE_PER_EYES = 0.73


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


@functools.lru_cache(maxsize=1)
def _opencv_has_cascades() -> bool:
    # OpenCV 5 moved CascadeClassifier out of the main wheels, so an import alone is not enough.
    if not _has("cv2"):
        return False
    import cv2

    return hasattr(cv2, "CascadeClassifier") and hasattr(cv2, "data")


def available_backends() -> list[str]:
    """Detector backends usable here, best first: a subset of ("dlib", "opencv")."""
    found = []
    if _has("dlib"):
        found.append("dlib")
    if _opencv_has_cascades():
        found.append("opencv")
    return found


def model_file(name: str):
    """Path of a model file shipped by the face-recognition-models package, or None when not installed.

    Located through the import system rather than by importing the package, whose __init__ needs
    pkg_resources (removed from setuptools 81).
    """
    from pathlib import Path

    try:
        spec = importlib.util.find_spec("face_recognition_models")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "models" / name
        if path.is_file():
            return path
    return None


@functools.lru_cache(maxsize=1)
def _five_point_predictor():
    """dlib's 5-point shape predictor, or None without dlib or the model file."""
    path = model_file("shape_predictor_5_face_landmarks.dat")
    if path is None or not _has("dlib"):
        return None
    import dlib

    return dlib.shape_predictor(str(path))


@functools.lru_cache(maxsize=1)
def _dlib_detector():
    import dlib

    return dlib.get_frontal_face_detector()


@functools.lru_cache(maxsize=1)
def _haar_cascade():
    from pathlib import Path

    import cv2

    path = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
    cascade = cv2.CascadeClassifier(str(path))
    if cascade.empty():
        raise PrivFedTalkError(f"OpenCV's face cascade {path} is missing or unreadable ({_INSTALL_HINT})")
    return cascade


def _shrink(frame: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """Downscale (H,W,3) uint8 so max(H,W) <= max_side: returns the image and the factor applied."""
    h, w = frame.shape[:2]
    factor = min(1.0, max_side / max(h, w))
    if factor == 1.0:
        return np.ascontiguousarray(frame), 1.0
    from PIL import Image

    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    small = np.asarray(
        Image.fromarray(np.ascontiguousarray(frame)).resize(size, Image.BILINEAR, reducing_gap=2.0)
    )
    return small, size[0] / w


class FaceDetector:
    """Frontal face detector over RGB frames.

    backend: "dlib" (HOG + linear SVM, more accurate), "opencv" (Haar cascade, needs OpenCV 4.x) or "auto"
    (dlib if installed, else OpenCV). refine: re-centre each box from dlib's 5-point landmarks when dlib and
    face-recognition-models are installed (any backend). Raises PrivFedTalkError naming the install command
    when no backend is usable.
    """

    def __init__(self, backend: str = "auto", max_side: int = _MAX_DETECT_SIDE, refine: bool = True):
        have = available_backends()
        if backend == "auto":
            if not have:
                raise PrivFedTalkError(
                    "face detection needs dlib or OpenCV 4.x with its Haar cascades; install them with "
                    f"{_INSTALL_HINT}"
                )
            backend = have[0]
        if backend not in BACKENDS:
            raise PrivFedTalkError(f"unknown face detector {backend!r}: use auto, dlib or opencv")
        if backend not in have:
            detail = "OpenCV 4.x (OpenCV 5 has no Haar cascades)" if backend == "opencv" else "dlib"
            raise PrivFedTalkError(f"face detector {backend!r} needs {detail}: {_INSTALL_HINT}")
        self.backend = backend
        self.max_side = int(max_side)
        self.predictor = _five_point_predictor() if refine else None
        self.reset()

    def reset(self) -> None:
        """Forget the detection scale learnt on earlier frames (call between videos for repeatable runs)."""
        self._upsample_order = (0, 1)

    def detect(self, frame: np.ndarray) -> np.ndarray:
        """Faces in one (H,W,3) uint8 RGB frame: (K,5) float64 rows (x0, y0, x1, y1, score), best first.

        Boxes follow dlib's convention (eyebrows to chin, about square) in the frame's pixels; scores are
        backend-specific (dlib SVM margin, Haar level weight) and only rank faces within a frame.
        """
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[-1] != 3:
            raise ValueError(f"expected one (H,W,3) RGB frame, got {frame.shape}")
        if frame.dtype != np.uint8:
            frame = np.clip(np.rint(frame.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
        small, factor = _shrink(frame, self.max_side)
        rows = self._detect_dlib(small) if self.backend == "dlib" else self._detect_haar(small)
        if rows.size:
            rows[:, :4] /= factor
            rows = rows[np.argsort(-rows[:, 4], kind="stable")]
            if self.predictor is not None:
                for row in rows:
                    row[:4] = self._refine(frame, row[:4])
        return rows

    def _refine(self, frame: np.ndarray, box: np.ndarray) -> np.ndarray:
        """Square box (4,) in dlib's convention rebuilt from the 5 landmarks found inside `box`."""
        import dlib

        x0, y0, x1, y1 = (int(round(v)) for v in box)
        shape = self.predictor(frame, dlib.rectangle(x0, y0, x1 - 1, y1 - 1))
        pts = np.array([[p.x, p.y] for p in shape.parts()], np.float64)  # (5,2): 2 eye corners x2, nose
        eyes = pts[:4].mean(axis=0)
        to_nose = pts[4] - eyes
        scale = max(
            np.linalg.norm(pts[0:2].mean(axis=0) - pts[2:4].mean(axis=0)),
            np.linalg.norm(to_nose) / _NOSE_PER_EYES,
        )
        if not np.isfinite(scale) or scale < 2.0:  # degenerate fit: keep the detector's box
            return box
        centre = eyes + _LM_ALPHA * to_nose
        half = _LM_SIDE * scale / 2.0
        return np.array([centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + half])

    def _detect_dlib(self, image: np.ndarray) -> np.ndarray:
        detector = _dlib_detector()
        # Plain resolution first (fast); a 2x upsampled pass when nothing is found catches faces below the
        # HOG window (~80 px), at four times the cost. The scale that worked goes first on the next frame,
        # so a video of small faces does not pay for a failing plain pass on every frame.
        for upsample in self._upsample_order:
            rects, scores, _ = detector.run(image, upsample, 0.0)
            if len(rects):
                self._upsample_order = (upsample, 1 - upsample)
                return np.array(
                    [[r.left(), r.top(), r.right() + 1, r.bottom() + 1, s] for r, s in zip(rects, scores)],
                    np.float64,
                )
        return np.zeros((0, 5), np.float64)

    @staticmethod
    def _detect_haar(image: np.ndarray) -> np.ndarray:
        import cv2

        gray = cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))
        side = max(20, int(0.08 * min(gray.shape)))
        boxes, _, weights = _haar_cascade().detectMultiScale3(
            gray, scaleFactor=1.1, minNeighbors=5, minSize=(side, side), outputRejectLevels=True
        )
        if len(boxes) == 0:
            return np.zeros((0, 5), np.float64)
        rows = []
        for (x, y, w, h), score in zip(np.asarray(boxes, np.float64), np.ravel(weights)):
            cx, cy = x + w / 2.0, y + h / 2.0 + _HAAR_SHIFT_Y * h
            half = _HAAR_SCALE * w / 2.0
            rows.append([cx - half, cy - half, cx + half, cy + half, float(score)])
        return np.asarray(rows, np.float64)


@dataclass
class FaceTrack:
    """A smoothed face track over T frames.

    boxes (T,4) float64 square crop boxes (x0, y0, x1, y1) in frame pixels, the face box enlarged by the
    margin; faces (T,4) the chosen raw face boxes, NaN where not detected; checked (T,) bool frames the
    detector ran on; found (T,) bool frames where it found the tracked face.
    """

    boxes: np.ndarray
    faces: np.ndarray
    checked: np.ndarray
    found: np.ndarray

    @property
    def found_fraction(self) -> float:
        """Share of the checked frames in which the face was found."""
        checked = int(self.checked.sum())
        return float(self.found.sum() / checked) if checked else 0.0


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes a (K,4) with one box b (4,): (K,)."""
    w = np.clip(np.minimum(a[:, 2], b[2]) - np.maximum(a[:, 0], b[0]), 0, None)
    h = np.clip(np.minimum(a[:, 3], b[3]) - np.maximum(a[:, 1], b[1]), 0, None)
    inter = w * h
    area = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / np.maximum(area, 1e-9)


def _choose_faces(detections: list[np.ndarray | None], max_gap: int) -> np.ndarray:
    """Follow one face through per-frame detections: (T,4) boxes, NaN where none was taken.

    Starts from the best-scoring face of the first frame with any; afterwards takes the detection that
    overlaps the last taken box most. A face elsewhere in the frame (a second person, a false positive)
    is ignored unless the tracked one has been missing for more than `max_gap` checked frames (a cut).
    """
    chosen = np.full((len(detections), 4), np.nan)
    last, missed = None, 0
    for t, rows in enumerate(detections):
        if rows is None:
            continue
        if rows.shape[0] == 0:
            missed += 1
            continue
        if last is None:
            pick = 0
        else:
            overlap = _iou(rows[:, :4], last)
            pick = int(np.argmax(overlap))
            if overlap[pick] < 0.2:
                if missed < max_gap:
                    missed += 1
                    continue
                pick = 0
        last = rows[pick, :4]
        chosen[t] = last
        missed = 0
    return chosen


def _fill(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Linear interpolation of a (T,) series over invalid entries; ends hold the nearest valid value."""
    t = np.arange(values.size)
    return np.interp(t, t[valid], values[valid])


def _gauss_smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    """Centred Gaussian smoothing of a (T,) series that keeps linear trends exact, ends included.

    Ends are padded by point reflection (2*x[0] - x[k]) rather than mirroring, so a steady pan is not
    bent back at the first and last frames.
    """
    if sigma <= 0 or x.size < 3:
        return x.copy()
    radius = min(int(np.ceil(3 * sigma)), x.size - 1)
    k = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (k / sigma) ** 2)
    kernel /= kernel.sum()
    head = 2 * x[0] - x[radius:0:-1]
    tail = 2 * x[-1] - x[-2 : -radius - 2 : -1]
    return np.convolve(np.concatenate([head, x, tail]), kernel, mode="valid")


def smooth_track(
    detections: list[np.ndarray | None],
    frame_shape: tuple[int, int],
    margin: float = 1.6,
    sigma: float = 2.0,
    max_gap: int = 12,
    path=None,
) -> FaceTrack:
    """Turn per-frame detections into a smooth square crop track.

    detections: one entry per frame, (K,5) from FaceDetector.detect, or None where the detector did not run.
    frame_shape: (H, W). Misses are filled by linear interpolation (nearest at the ends); the centre is
    median-filtered over 5 frames (drops single-frame outliers) then Gaussian-smoothed with `sigma` frames,
    the size with 2*sigma (zoom jitter is the most visible). The crop side is margin * face size, so 1.6
    takes in hair and chin; a crop that fits inside the frame is shifted inside it rather than padded.
    Raises MediaError (naming `path`) when no face is found in any frame.
    """
    faces = _choose_faces(detections, max_gap)
    found = ~np.isnan(faces[:, 0])
    checked = np.array([d is not None for d in detections], bool)
    if not found.any():
        where = path if path is not None else "video"
        raise MediaError(
            where,
            f"no face found in {where} ({int(checked.sum())} frames checked)",
            "the clip needs a visible frontal face; remove it or trim it to where the face is visible",
        )
    cx = _fill((faces[:, 0] + faces[:, 2]) / 2.0, found)
    cy = _fill((faces[:, 1] + faces[:, 3]) / 2.0, found)
    size = _fill(((faces[:, 2] - faces[:, 0]) + (faces[:, 3] - faces[:, 1])) / 2.0, found)
    if cx.size >= 5:
        cx, cy, size = (median_filter(v, size=5, mode="nearest") for v in (cx, cy, size))
    cx, cy = _gauss_smooth(cx, sigma), _gauss_smooth(cy, sigma)
    size = _gauss_smooth(size, 2.0 * sigma)
    side = np.maximum(size * float(margin), 2.0)
    h, w = frame_shape
    x0 = _place(cx - side / 2.0, side, w)
    y0 = _place(cy - side / 2.0, side, h)
    boxes = np.stack([x0, y0, x0 + side, y0 + side], axis=1)
    return FaceTrack(boxes=boxes, faces=faces, checked=checked, found=found)


def _place(start: np.ndarray, side: np.ndarray, limit: int) -> np.ndarray:
    """Shift crop starts so [start, start+side) lies inside [0, limit) where the crop fits; else centre it."""
    fits = side <= limit
    inside = np.clip(start, 0.0, np.maximum(limit - side, 0.0))
    return np.where(fits, inside, start)


def face_track(
    frames: np.ndarray,
    detector: FaceDetector | str | None = None,
    every: int = 1,
    margin: float = 1.6,
    sigma: float = 2.0,
    path=None,
) -> FaceTrack:
    """Detect on every `every`-th frame (and the last) of (T,H,W,3) uint8 frames and smooth the track."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[0] == 0:
        raise ValueError(f"frames must be (T,H,W,3) with T>0, got {frames.shape}")
    if not isinstance(detector, FaceDetector):
        detector = FaceDetector(detector or "auto")
    detector.reset()
    every = max(1, int(every))
    total = frames.shape[0]
    detections: list[np.ndarray | None] = [
        detector.detect(frames[t]) if (t % every == 0 or t == total - 1) else None for t in range(total)
    ]
    return smooth_track(detections, frames.shape[1:3], margin=margin, sigma=sigma, path=path)


def track_face(
    frames: np.ndarray,
    detector: FaceDetector | str | None = None,
    every: int = 1,
    margin: float = 1.6,
    sigma: float = 2.0,
    path=None,
) -> np.ndarray:
    """Smoothed square crop boxes (T,4) float64 (x0, y0, x1, y1) following the main face of (T,H,W,3) frames.

    See smooth_track for the smoothing; raises MediaError when no frame shows a face.
    """
    return face_track(frames, detector, every=every, margin=margin, sigma=sigma, path=path).boxes


def crop_frame(frame: np.ndarray, box, size: int) -> np.ndarray:
    """Crop (H,W,3) uint8 to box (x0, y0, x1, y1), sub-pixel, and resize to (size,size,3) uint8.

    Lanczos resampling (anti-aliased when shrinking); parts of the box outside the frame repeat the edge
    pixels, which moves less than a black border as the box moves.
    """
    from PIL import Image

    frame = np.ascontiguousarray(np.asarray(frame, np.uint8))
    h, w = frame.shape[:2]
    x0, y0, x1, y1 = (float(v) for v in box)
    pad = int(np.ceil(max(0.0, -x0, -y0, x1 - w, y1 - h)))
    if pad:
        frame = np.pad(frame, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
        x0, y0, x1, y1 = x0 + pad, y0 + pad, x1 + pad, y1 + pad
    image = Image.fromarray(frame)
    out = image.resize((int(size), int(size)), Image.LANCZOS, box=(x0, y0, x1, y1))
    return np.asarray(out, np.uint8)


def crop_frames(frames: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Crop each frame of (T,H,W,3) uint8 to its box of (T,4) and resize: (T,size,size,3) uint8."""
    frames = np.asarray(frames)
    boxes = np.asarray(boxes, np.float64)
    if boxes.shape != (frames.shape[0], 4):
        raise ValueError(f"boxes must be ({frames.shape[0]}, 4), got {boxes.shape}")
    out = np.empty((frames.shape[0], int(size), int(size), 3), np.uint8)
    for t in range(frames.shape[0]):
        out[t] = crop_frame(frames[t], boxes[t], size)
    return out
