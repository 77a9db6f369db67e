"""`privfedtalk prepare`: turn real talking-head videos into face-cropped, fixed-rate training clips.

Input SRC/<identity>/**/*.mp4 (audio in the file or a sidecar .wav); output OUT/<identity>/<clip>.mp4.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

from privfedtalk.data.corpus import VIDEO_EXTS, LoadReport, read_split
from privfedtalk.data.faces import FaceDetector, crop_frame, smooth_track
from privfedtalk.data.media import (
    fit_audio,
    open_media,
    read_audio,
    sidecar_wav,
    write_video,
    yuv_frame_to_rgb,
)
from privfedtalk.errors import MediaError, PrivFedTalkError

__all__ = [
    "PrepareSummary",
    "prepare_corpus",
    "prepare_clip",
    "clip_name",
    "add_prepare_parser",
    "cmd_prepare",
]

_LOG = logging.getLogger("privfedtalk.data")
SUMMARY_NAME = "prepare_summary.json"
# Unfinished outputs live here until renamed into place; list_identities skips dot-folders, so a killed run
# never leaves a half-written clip where the corpus loader would read it.
_PARTIAL_DIR = ".partial"
_FIX_REEXPORT = "re-export it, e.g. ffmpeg -i IN -c:v libx264 -pix_fmt yuv420p -c:a aac OUT.mp4, or remove it"
# Reasons specific to preparing, checked before the corpus loader's categories.
_CATEGORIES = (
    ("no face found", "no face"),
    ("face found in only", "face rarely visible"),
    ("not inside an identity folder", "outside identity folders"),
    ("too short", "too short"),
)
_SPLIT_HOWTO = (
    'no split.json in SRC: pretrain and train need one, so write OUT/split.json as {"public": [identities '
    'that pretrain the shared backbone], "private": [identities kept by federated clients]}'
)


@dataclass
class PrepareSummary:
    """What prepare_corpus did: clips written, clips already there, clips skipped with one-line reasons."""

    src: str
    out: str
    settings: dict
    written: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    identities: dict[str, int] = field(default_factory=dict)
    split: str = ""
    seconds: float = 0.0

    @property
    def kept(self) -> int:
        """Usable clips in OUT after this run: written now plus prepared by an earlier run."""
        return len(self.written) + len(self.existing)

    @staticmethod
    def category(reason: str) -> str:
        return LoadReport.category(reason, extra=_CATEGORIES)

    def counts(self) -> dict[str, int]:
        """Skipped clips by reason category, e.g. {"no audio": 2, "no face": 1}."""
        return dict(sorted(Counter(self.category(r) for _, r in self.skipped).items()))

    def text(self) -> str:
        """A few lines for the terminal."""
        people = sum(1 for n in self.identities.values() if n)
        lines = [
            f"prepared {self.kept} clip{'s' if self.kept != 1 else ''} of "
            f"{people} identit{'ies' if people != 1 else 'y'} "
            f"in {self.out} ({len(self.written)} new, {len(self.existing)} already there), "
            f"skipped {len(self.skipped)}"
            + (
                ": " + ", ".join(f"{n} {k}" for k, n in sorted(self.counts().items(), key=lambda kv: -kv[1]))
                if self.skipped
                else ""
            ),
        ]
        empty = sorted(name for name, n in self.identities.items() if n == 0)
        if empty:
            lines.append(f"identities with no usable clip (left out): {', '.join(empty)}")
        lines.append(f"split: {self.split}")
        lines.append(f"details: {Path(self.out) / SUMMARY_NAME}")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {
            "src": self.src,
            "out": self.out,
            "settings": self.settings,
            "kept": self.kept,
            "written": len(self.written),
            "already_prepared": len(self.existing),
            "skipped": len(self.skipped),
            "skipped_by_reason": self.counts(),
            "skipped_clips": [
                {"path": p, "reason": r, "category": self.category(r)} for p, r in self.skipped
            ],
            "clips_per_identity": self.identities,
            "split": self.split,
            "seconds": round(self.seconds, 1),
        }


# ---------------------------------------------------------------------------------------------- naming


def clip_name(relative: Path) -> str:
    """Flat, filesystem-safe clip name from a path relative to its identity folder.

    'day1/take 2.mp4' -> 'day1__take_2': folders joined with '__', characters outside [A-Za-z0-9._-] -> '_'.
    """
    parts = list(relative.with_suffix("").parts)
    name = "__".join(re.sub(r"[^A-Za-z0-9._-]", "_", p) for p in parts)
    return name.lstrip(".") or "clip"


def _sources(src: Path) -> tuple[list[tuple[str, Path, Path]], list[Path], list[str]]:
    """Walk SRC: ([(identity, file, relative path)], stray video files at the top level, identity names).

    Hidden files and folders (.DS_Store, macOS '._x.mp4' forks, our own .partial) are not media: ignored.
    """
    found, identities = [], []
    strays = sorted(p for p in src.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTS)
    for folder in sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith(".")):
        identities.append(folder.name)
        files = [
            p
            for p in folder.rglob("*")
            if p.is_file()
            and p.suffix.lower() in VIDEO_EXTS
            and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        ]
        for path in sorted(files, key=lambda p: p.relative_to(folder).as_posix()):
            found.append((folder.name, path, path.relative_to(folder)))
    return found, strays, identities


# ---------------------------------------------------------------------------------------------- decoding


def _open(path: Path):
    container = open_media(path)
    if not container.streams.video:
        container.close()
        raise MediaError(path, "no video stream (not a video, or a truncated file)", _FIX_REEXPORT)
    return container


def _short(err: Exception) -> str:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    if text.startswith("[Errno"):
        text = text.split("] ", 1)[-1]
    return text.split(": '")[0].strip()


def _to_rgb(frame) -> np.ndarray:
    """(H,W,3) uint8 RGB of a decoded frame, turned upright when the file says so (phone videos)."""
    rgb = yuv_frame_to_rgb(frame, None)
    try:
        # Degrees counter-clockwise that the display matrix asks for; np.rot90 turns counter-clockwise.
        turns = int(round((getattr(frame, "rotation", 0) or 0) / 90.0)) % 4
    except (TypeError, ValueError):
        turns = 0
    return np.ascontiguousarray(np.rot90(rgb, k=turns)) if turns else rgb


def _resampled(path: Path, fps: float):
    """Yield (index, (H,W,3) uint8) at a constant `fps` from a constant- or variable-rate video.

    Output frame i shows the source frame on screen at time t0 + (i+0.5)/fps (the last one whose timestamp
    is not later), t0 being the first frame's time; so a file already at `fps` passes unchanged and a
    variable-rate one is resampled by its real timestamps, not by its average rate. The clip lasts until
    the last frame's end (its timestamp plus the median frame interval).
    """
    container = _open(path)
    index = 0
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame threading: decoding is the cheap part, keep it so
        nominal = float(stream.average_rate or stream.guessed_rate or 25)
        t0 = None
        prev, prev_rgb, times = None, None, []
        try:
            for frame in container.decode(stream):
                t = float(frame.time) if frame.time is not None else len(times) / nominal
                if t0 is None:
                    t0 = t
                if times and t <= times[-1]:  # duplicate/out-of-order timestamp: the later frame wins
                    prev, prev_rgb = frame, None
                    continue
                times.append(t)
                if prev is not None:
                    while t0 + (index + 0.5) / fps < t:
                        prev_rgb = _to_rgb(prev) if prev_rgb is None else prev_rgb
                        yield index, prev_rgb
                        index += 1
                prev, prev_rgb = frame, None
        except (av.FFmpegError, ValueError, RuntimeError) as err:
            raise MediaError(
                path, f"corrupt or truncated media: decoding failed ({_short(err)})", _FIX_REEXPORT
            ) from None
        if prev is None:
            raise MediaError(path, "corrupt or truncated video: no frames could be decoded", _FIX_REEXPORT)
        step = float(np.median(np.diff(times))) if len(times) > 1 else 1.0 / nominal
        total = max(1, round((times[-1] + step - t0) * fps))
        last = _to_rgb(prev) if prev_rgb is None else prev_rgb
        while index < total:
            yield index, last
            index += 1
    finally:
        container.close()


def _first_time(path: Path, kind: str) -> float | None:
    """Time (s) of the first decoded frame of the first `kind` ("video"/"audio") stream; None without one."""
    with av.open(str(path)) as container:  # a fresh open per stream: seeking back fails on some containers
        streams = getattr(container.streams, kind)
        if not streams:
            return None
        for frame in container.decode(streams[0]):
            return float(frame.time) if frame.time is not None else 0.0
    return 0.0


def _audio_start(path: Path) -> tuple[float, float] | None:
    """(first video frame time, first audio frame time) in seconds, or None when there is no audio track."""
    audio = _first_time(path, "audio")
    if audio is None:
        return None
    return _first_time(path, "video") or 0.0, audio


def _clip_audio(path: Path, sample_rate: int) -> tuple[np.ndarray, Path]:
    """(N,) float32 mono audio on the video's clock and the file it came from.

    From the file's audio track, else a sidecar <stem>.wav (any rate, any channels); raises MediaError when
    there is neither. Checked before the costly face pass, so a clip without audio fails fast.
    """
    try:
        starts = _audio_start(path)
    except (av.FFmpegError, ValueError, RuntimeError) as err:
        raise MediaError(path, f"corrupt audio track ({_short(err)})", _FIX_REEXPORT) from None
    if starts is None:
        sidecar = sidecar_wav(path)
        return read_audio(sidecar, sample_rate), sidecar
    audio = read_audio(path, sample_rate)
    # Same alignment as load_media: a track that starts late gets leading silence, an early one is cut.
    shift = round((starts[1] - starts[0]) * sample_rate)
    audio = np.concatenate([np.zeros(shift, np.float32), audio]) if shift > 0 else audio[-shift:]
    return audio, path


# ---------------------------------------------------------------------------------------------- one clip


def prepare_clip(
    path,
    out_path,
    detector: FaceDetector,
    size: int = 128,
    fps: float = 25.0,
    sample_rate: int = 16000,
    detect_every: int = 1,
    margin: float = 1.6,
    min_face: float = 0.5,
) -> dict:
    """Face-crop one video to (T,size,size,3) at `fps` with its audio and write it to out_path.

    Two decoding passes keep memory at one frame of the source (plus the small output): the first detects,
    the second crops with the smoothed track. Raises MediaError for an unusable clip (no audio, no face,
    face visible in fewer than `min_face` of the checked frames, corrupt file). Returns {"frames", "found"}.
    """
    path, out_path = Path(path), Path(out_path)
    detect_every = max(1, int(detect_every))
    _open(path).close()  # unreadable files fail with their own reason before the audio check
    audio, source = _clip_audio(path, sample_rate)
    detector.reset()  # a clip's boxes must not depend on which clip came before (resumed runs)
    detections: list[np.ndarray | None] = []
    rgb = None
    for index, rgb in _resampled(path, fps):
        detections.append(detector.detect(rgb) if index % detect_every == 0 else None)
    if detections[-1] is None:  # anchor the end of the track too
        detections[-1] = detector.detect(rgb)
    total = len(detections)
    if total < 2:
        raise MediaError(path, f"too short: {total} frame at {fps:g} fps", "use clips of at least 0.1 s")
    audio = fit_audio(audio, source, total, fps, sample_rate)
    track = smooth_track(detections, rgb.shape[:2], margin=margin, path=path)
    if track.found_fraction < min_face:
        raise MediaError(
            path,
            f"face found in only {100 * track.found_fraction:.0f}% of the checked frames "
            f"(at least {100 * min_face:.0f}% needed)",
            "trim the clip to where the face is visible and frontal, or lower --min-face",
        )
    crops = np.empty((total, size, size, 3), np.uint8)
    for index, rgb in _resampled(path, fps):
        if index < total:
            crops[index] = crop_frame(rgb, track.boxes[index], size)
    write_video(out_path, crops, fps, audio=audio, sample_rate=sample_rate)
    return {"frames": total, "found": track.found_fraction}


# ---------------------------------------------------------------------------------------------- corpus


def prepare_corpus(
    src,
    out,
    size: int = 128,
    fps: float = 25.0,
    sample_rate: int = 16000,
    detector: str = "auto",
    progress: bool = True,
    detect_every: int = 1,
    margin: float = 1.6,
    min_face: float = 0.5,
) -> PrepareSummary:
    """Prepare every SRC/<identity>/**/*.{mp4,mkv,mov,avi,webm} into OUT/<identity>/<clip>.mp4.

    Each output is (T,size,size,3) face crops at `fps` with mono AAC audio at `sample_rate`. Resumable:
    outputs that exist are kept, not redone. A bad clip is skipped with a one-line reason and never stops the
    run; the summary (also OUT/prepare_summary.json) counts kept clips and skipped ones by reason.
    SRC/split.json, when present and valid, is copied to OUT. Raises only for unusable arguments (missing
    SRC, OUT inside SRC, no face detector installed).
    """
    start = time.monotonic()
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise MediaError(src, "source folder not found", "give the folder with one sub-folder per identity")
    if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents:
        raise PrivFedTalkError(f"--out {out} must not be inside --src {src}: outputs would be read as inputs")
    face_detector = FaceDetector(detector)  # fails here, once, when no backend is installed
    settings = {
        "size": int(size),
        "fps": float(fps),
        "sample_rate": int(sample_rate),
        "detector": face_detector.backend,
        "landmark_refined": face_detector.predictor is not None,
        "detect_every": int(detect_every),
        "margin": float(margin),
        "min_face": float(min_face),
    }
    summary = PrepareSummary(src=str(src), out=str(out), settings=settings)
    out.mkdir(parents=True, exist_ok=True)
    partial = out / _PARTIAL_DIR
    shutil.rmtree(partial, ignore_errors=True)  # leftovers of a killed run
    clips, strays, identities = _sources(src)
    summary.identities = {name: 0 for name in identities}

    from tqdm import tqdm

    bar = tqdm(total=len(clips), desc="prepare", unit="clip", disable=not progress, file=sys.stderr)

    def skip(path, reason: str) -> None:
        reason = " ".join(str(reason).split())
        summary.skipped.append((str(path), reason))
        message = f"skipping {path}: {reason}"
        if progress:
            bar.write(message, file=sys.stderr)
        else:
            _LOG.warning(message)

    for path in strays:
        skip(path, f"not inside an identity folder (move it to {src}/<identity>/)")
    used: dict[str, set[str]] = {}
    try:
        for identity, path, relative in clips:
            name = clip_name(relative)
            taken = used.setdefault(identity, set())
            if name in taken:  # 'a/b.mp4' vs 'a__b.mp4', or 'x.mp4' vs 'x.mov': keep both, stably named
                name = f"{name}-{_stable_tag(relative.as_posix())}"
            taken.add(name)
            target = out / identity / f"{name}.mp4"
            bar.set_postfix_str(f"{identity}/{name}"[-40:], refresh=False)
            if target.is_file() and target.stat().st_size > 0:
                summary.existing.append(str(target))
                summary.identities[identity] += 1
                bar.update()
                continue
            temp = partial / identity / f"{name}.mp4"
            try:
                prepare_clip(
                    path,
                    temp,
                    face_detector,
                    size=size,
                    fps=fps,
                    sample_rate=sample_rate,
                    detect_every=detect_every,
                    margin=margin,
                    min_face=min_face,
                )
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(temp, target)
            except MediaError as err:
                where = "" if Path(err.path) == path else f"{Path(err.path).name}: "
                skip(path, f"{where}{err.reason}" + (f" ({err.fix})" if err.fix else ""))
            except (OSError, ValueError, RuntimeError, av.FFmpegError, MemoryError) as err:
                # Anything else one odd file can trigger must not end a run over a whole corpus.
                skip(path, f"unexpected error: {type(err).__name__}: {_short(err)}")
            else:
                summary.written.append(str(target))
                summary.identities[identity] += 1
            finally:
                if temp.exists():
                    temp.unlink()
            bar.update()
    finally:
        bar.close()
        shutil.rmtree(partial, ignore_errors=True)
    summary.split = _copy_split(src, out, summary.identities)
    summary.seconds = time.monotonic() - start
    (out / SUMMARY_NAME).write_text(json.dumps(summary.to_json(), indent=2) + "\n")
    return summary


def _stable_tag(text: str) -> str:
    """6 hex digits that do not change between runs (Python's hash() is salted per process)."""
    import hashlib

    return hashlib.sha1(text.encode()).hexdigest()[:6]


def _copy_split(src: Path, out: Path, identities: dict[str, int]) -> str:
    """Copy SRC/split.json to OUT when valid; returns the line the summary shows about the split."""
    if not (src / "split.json").is_file():
        if (out / "split.json").is_file():
            return f"{out / 'split.json'} already present (kept)"
        return _SPLIT_HOWTO
    try:
        split = read_split(src)
    except MediaError as err:
        return f"split.json not copied: {err}"
    shutil.copyfile(src / "split.json", out / "split.json")
    listed = split["public"] + split["private"]
    missing = sorted(name for name in listed if identities.get(name, 0) == 0)
    text = f"copied split.json ({len(split['public'])} public, {len(split['private'])} private identities)"
    if missing:
        text += f"; listed but without prepared clips: {', '.join(missing)}"
    unlisted = sorted(name for name, n in identities.items() if n and name not in listed)
    if unlisted:
        text += f"; prepared but not listed: {', '.join(unlisted)}"
    return text


# ---------------------------------------------------------------------------------------------- command line


def add_prepare_parser(sub) -> None:
    """Add `privfedtalk prepare` to an argparse subparsers object."""
    p = sub.add_parser(
        "prepare",
        help="face-crop your own videos (SRC/<identity>/*.mp4) into a training cache",
        description="Detect, track and crop the face in every SRC/<identity>/**/*.mp4 (also .mkv .mov .avi "
        ".webm; audio in the file or a sidecar .wav), resample to --fps and write OUT/<identity>/<clip>.mp4. "
        "Re-running skips clips already prepared.",
    )
    p.add_argument("--src", required=True, help="folder with one sub-folder of videos per identity")
    p.add_argument("--out", required=True, help="cache folder to write (give it as --data / data.root later)")
    p.add_argument("--size", type=int, default=128, help="crop side in pixels (default 128)")
    p.add_argument("--fps", type=float, default=25.0, help="output frame rate (default 25)")
    p.add_argument("--sample-rate", type=int, default=16000, help="output audio rate (default 16000)")
    p.add_argument("--detector", choices=("auto", "dlib", "opencv"), default="auto")
    p.add_argument("--detect-every", type=int, default=1, help="run the detector on every k-th frame")
    p.add_argument("--margin", type=float, default=1.6, help="crop side / face box side (default 1.6)")
    p.add_argument(
        "--min-face",
        type=float,
        default=0.5,
        help="skip clips whose face is found in fewer than this share of frames (default 0.5)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_prepare)


def cmd_prepare(args) -> None:
    """Run prepare_corpus from parsed arguments; raises PrivFedTalkError when no clip is usable."""
    summary = prepare_corpus(
        args.src,
        args.out,
        size=args.size,
        fps=args.fps,
        sample_rate=args.sample_rate,
        detector=args.detector,
        progress=not args.no_progress,
        detect_every=args.detect_every,
        margin=args.margin,
        min_face=args.min_face,
    )
    print(summary.text())
    if summary.kept == 0:
        raise PrivFedTalkError(f"{args.src}: no usable clips (see {Path(args.out) / SUMMARY_NAME})")
