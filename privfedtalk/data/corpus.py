"""Corpus loading: identity folders of talking-head clips -> Clip objects with aligned audio features.

Bad files are skipped with a one-line reason collected in a LoadReport; only an unusable identity raises.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from privfedtalk.data.audio import frame_audio_features, frame_loudness
from privfedtalk.data.media import load_media
from privfedtalk.errors import MediaError

__all__ = [
    "VIDEO_EXTS",
    "Clip",
    "LoadReport",
    "list_identities",
    "read_split",
    "find_clips",
    "load_clip",
    "load_identity",
    "window_starts",
]

VIDEO_EXTS = (".mp4", ".mkv", ".mov", ".avi", ".webm")
_LOG = logging.getLogger("privfedtalk.data")

# Skip reasons are grouped for LoadReport.summary() by the first matching phrase (order matters).
_CATEGORIES = (
    ("no usable clips", "unusable identity"),
    ("empty file", "empty file"),
    ("no audio", "no audio"),
    ("audio too short", "audio too short"),
    ("no video stream", "not a video"),
    ("not a readable media file", "unreadable"),
    ("corrupt", "corrupt"),
    ("no frames", "corrupt"),
    ("sidecar", "bad ground truth"),
    ("unreadable audio", "bad sidecar audio"),
)


@dataclass
class Clip:
    """One decoded clip.

    frames (T,H,W,3) uint8 RGB; audio (N,) float32 mono at sample_rate, N = round(T/fps*sample_rate);
    features (T, tokens, n_mels) float32 log-mel windows centred on each frame (token tokens//2 = centre);
    loudness (T,) float32 RMS per frame span; truth: sidecar ground truth with lists as arrays, or None.
    """

    identity: str
    name: str
    path: str
    frames: np.ndarray
    fps: float
    audio: np.ndarray
    sample_rate: int
    features: np.ndarray
    loudness: np.ndarray
    truth: dict | None = None

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def size(self) -> int:
        return int(self.frames.shape[1])


@dataclass
class LoadReport:
    """What a load kept and skipped. Each skip is reported once through `warn` (default: logging)."""

    kept: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    warn: Callable[[str], None] | None = None

    def add_kept(self, count: int = 1) -> None:
        self.kept += count

    def add_skip(self, path, reason: str) -> None:
        reason = " ".join(str(reason).split())  # one line, whatever the source message looked like
        self.skipped.append((str(path), reason))
        message = f"skipping {path}: {reason}"
        if self.warn is not None:
            self.warn(message)
        else:
            _LOG.warning(message)

    @staticmethod
    def category(reason: str, extra: tuple = ()) -> str:
        """Summary bucket of a skip reason; `extra` (phrase, name) pairs are tried first."""
        low = reason.lower()
        for phrase, name in (*extra, *_CATEGORIES):
            if phrase in low:
                return name
        return "other"

    def counts(self) -> dict[str, int]:
        return dict(Counter(self.category(r) for _, r in self.skipped))

    def summary(self) -> str:
        """One line, e.g. 'kept 10 clips, skipped 3: 2 no audio, 1 corrupt'."""
        text = f"kept {self.kept} clip{'s' if self.kept != 1 else ''}, skipped {len(self.skipped)}"
        if self.skipped:
            parts = sorted(self.counts().items(), key=lambda kv: (-kv[1], kv[0]))
            text += ": " + ", ".join(f"{n} {name}" for name, n in parts)
        return text


def find_clips(folder) -> list[Path]:
    """Video files under folder (recursive), sorted by relative path."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTS]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def list_identities(root) -> list[str]:
    """Names of the sub-folders of root (sorted) that contain at least one video file."""
    root = Path(root)
    if not root.is_dir():
        raise MediaError(root, "data folder not found", "create it or generate the synthetic corpus")
    return sorted(
        p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and find_clips(p)
    )


def read_split(root) -> dict[str, list[str]] | None:
    """root/split.json as {"public": [...], "private": [...]}, or None when there is no split file."""
    path = Path(root) / "split.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise MediaError(path, f"unreadable split file ({err})", "fix the JSON or delete the file") from None
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k, []), list) for k in ("public", "private")
    ):
        raise MediaError(path, 'split file must be {"public": [...], "private": [...]}', "fix or delete it")
    split = {
        "public": [str(x) for x in data.get("public", [])],
        "private": [str(x) for x in data.get("private", [])],
    }
    overlap = sorted(set(split["public"]) & set(split["private"]))
    if overlap:
        raise MediaError(path, f"identities in both public and private: {overlap}", "list each identity once")
    return split


def _read_truth(path: Path) -> dict | None:
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        return None
    try:
        raw = json.loads(sidecar.read_text())
    except (OSError, ValueError) as err:
        raise MediaError(
            sidecar, f"unreadable ground-truth sidecar ({err})", "fix or delete the .json"
        ) from None
    if not isinstance(raw, dict):
        raise MediaError(sidecar, "ground-truth sidecar is not a JSON object", "fix or delete the .json")
    truth = {}
    for key, value in raw.items():
        if key == "mouth_box":
            truth[key] = np.asarray(value, np.int64)
        elif isinstance(value, list):
            truth[key] = np.asarray(value, np.float32)
        else:
            truth[key] = value
    return truth


def _resize(frames: np.ndarray, size: int) -> tuple[np.ndarray, float, int, int]:
    """Centre-crop to a square, resize to (size,size): returns frames, scale, crop x offset, crop y offset."""
    t, h, w, _ = frames.shape
    side = min(h, w)
    y0, x0 = (h - side) // 2, (w - side) // 2
    frames = frames[:, y0 : y0 + side, x0 : x0 + side]
    if side == size:
        return np.ascontiguousarray(frames), 1.0, x0, y0
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    # Area averaging when shrinking avoids aliasing; bilinear when enlarging.
    if size < side:
        y = torch.nn.functional.interpolate(x, size=(size, size), mode="area")
    else:
        y = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    out = y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    return out, size / side, x0, y0


def _scale_truth(truth: dict, scale: float, x0: int, y0: int, size: int) -> dict:
    truth = dict(truth)
    if "mouth_box" in truth:
        b = truth["mouth_box"].astype(np.float64)
        box = [math.floor((b[0] - x0) * scale), math.floor((b[1] - y0) * scale)]
        box += [math.ceil((b[2] - x0) * scale), math.ceil((b[3] - y0) * scale)]
        truth["mouth_box"] = np.clip(np.asarray(box, np.int64), 0, size)
    if "head_offset" in truth:
        truth["head_offset"] = (truth["head_offset"] * scale).astype(np.float32)
    truth["size"] = size
    return truth


def load_clip(path, audio_cfg, size: int | None = None, identity: str | None = None) -> Clip:
    """Load one clip with features. audio_cfg: any object with sample_rate, n_mels, hop_ms, window_ms.

    With `size`, frames are centre-cropped to a square and resized to (size,size); truth boxes/offsets follow.
    Raises MediaError for unusable media or sidecars.
    """
    path = Path(path)
    sr = int(audio_cfg.sample_rate)
    media = load_media(path, sample_rate=sr)
    truth = _read_truth(path)
    frames = media.frames
    if size is not None and (frames.shape[1] != size or frames.shape[2] != size):
        frames, scale, x0, y0 = _resize(frames, int(size))
        if truth is not None:
            truth = _scale_truth(truth, scale, x0, y0, int(size))
    num = frames.shape[0]
    features = frame_audio_features(
        media.audio,
        sr,
        media.fps,
        num,
        n_mels=int(audio_cfg.n_mels),
        hop_ms=float(audio_cfg.hop_ms),
        window_ms=float(audio_cfg.window_ms),
    )
    loudness = frame_loudness(media.audio, sr, media.fps, num)
    return Clip(
        identity=identity if identity is not None else path.parent.name,
        name=path.stem,
        path=str(path),
        frames=frames,
        fps=media.fps,
        audio=media.audio,
        sample_rate=sr,
        features=features,
        loudness=loudness,
        truth=truth,
    )


def load_identity(root, identity: str, audio_cfg, size: int | None = None, report: LoadReport | None = None):
    """All usable clips of root/identity (recursive; .mp4/.mkv/.mov/.avi/.webm) as a list of Clip.

    A bad clip is skipped and recorded in `report`; an identity with no usable clip raises MediaError.
    """
    folder = Path(root) / identity
    report = report if report is not None else LoadReport()
    if not folder.is_dir():
        raise MediaError(folder, "identity folder not found", "check the data root and identity name")
    clips: list[Clip] = []
    skipped_before = len(report.skipped)
    for path in find_clips(folder):
        try:
            clips.append(load_clip(path, audio_cfg, size=size, identity=identity))
        except MediaError as err:
            # Name the file at fault when it is a sidecar, and keep the fix on the same line.
            where = "" if Path(err.path) == path else f"{Path(err.path).name}: "
            report.add_skip(path, f"{where}{err.reason}" + (f" ({err.fix})" if err.fix else ""))
        except (OSError, ValueError, RuntimeError) as err:  # anything else a single odd file can trigger
            report.add_skip(path, f"unexpected error while loading: {type(err).__name__}: {err}")
        else:
            report.add_kept()
    if not clips:
        skipped = len(report.skipped) - skipped_before
        detail = f" ({skipped} skipped)" if skipped else " (no video files)"
        raise MediaError(
            folder, f"no usable clips in {folder}{detail}", "add .mp4 files with audio, or remove the folder"
        )
    return clips


def window_starts(num_frames: int, window: int, stride: int = 1) -> np.ndarray:
    """Start indices (K,) int64 of every window of `window` consecutive frames, every `stride` frames."""
    if window < 1 or stride < 1:
        raise ValueError("window and stride must be >= 1")
    if num_frames < window:
        return np.zeros(0, np.int64)
    return np.arange(0, num_frames - window + 1, stride, dtype=np.int64)


def load_named_clips(root, names: list[str], audio_cfg, size: int | None = None) -> list[Clip]:
    """Clips named "identity/clip-stem" (as a client's held-out list records them) under root."""
    clips = []
    for name in names:
        identity, stem = name.split("/", 1)
        matches = [p for p in find_clips(Path(root) / identity) if p.stem == stem]
        if not matches:
            raise MediaError(
                Path(root) / identity / stem, "held-out clip not found", "check the run's data.root"
            )
        clips.append(load_clip(matches[0], audio_cfg, size=size, identity=identity))
    return clips


def split_heldout(clips: list, heldout_clips: int) -> tuple[list, list]:
    """(training clips, held-out clips) of one identity: the last `heldout_clips` clips are held out.

    An identity keeps at least one training clip; a single clip is used for training and nothing is
    held out. The one rule for every caller (client loading, evaluation, the demo, the benchmark).
    """
    if len(clips) <= 1:
        return list(clips), []
    cut = max(1, len(clips) - heldout_clips)
    return list(clips[:cut]), list(clips[cut:])
