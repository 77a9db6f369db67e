"""Video/audio file I/O on PyAV and soundfile: decode to RGB frames + mono float audio, encode h264 + AAC.

Every failure a user can cause (empty, corrupt, silent or mismatched files) raises a one-line MediaError.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from privfedtalk.errors import MediaError

__all__ = ["Media", "read_video", "read_audio", "write_video", "load_media", "SOUNDFILE_EXTS"]

# Plain audio files go through libsndfile (exact PCM); everything else through FFmpeg.
SOUNDFILE_EXTS = (".wav", ".flac", ".ogg", ".aif", ".aiff")
# Container comment that records the true frame size when write_video padded an odd size to even.
_SIZE_TAG = "privfedtalk-size="
_FIX_REEXPORT = "re-export it, e.g. ffmpeg -i IN -c:v libx264 -pix_fmt yuv420p -c:a aac OUT.mp4, or remove it"


@dataclass
class Media:
    """A decoded clip: frames (T,H,W,3) uint8 RGB; audio (N,) float32 mono, N = round(T/fps*sample_rate)."""

    frames: np.ndarray
    fps: float
    audio: np.ndarray
    sample_rate: int
    path: str

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps


# ---------------------------------------------------------------------------------------------- helpers


def _check_file(path: Path) -> None:
    if not path.exists():
        raise MediaError(path, "file not found", "check the path")
    if path.is_dir():
        raise MediaError(path, "is a folder, not a media file", "pass a video file")
    if path.stat().st_size == 0:
        raise MediaError(path, "empty file (0 bytes)", "re-copy or re-export it, or remove it")


def open_media(path: Path):
    """av container of a media file, or a one-line MediaError (missing, empty, unreadable)."""
    _check_file(path)
    try:
        return av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as err:
        raise MediaError(
            path,
            f"not a readable media file: corrupt, truncated or not a video ({_short(err)})",
            _FIX_REEXPORT,
        ) from None


def _short(err: Exception) -> str:
    """First line of an FFmpeg/libsndfile message without the repeated file name."""
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    if text.startswith("[Errno"):  # PyAV prefixes the numeric FFmpeg code, meaningless to users
        text = text.split("] ", 1)[-1]
    return text.split(": '")[0].strip()


def yuv_frame_to_rgb(frame: av.VideoFrame, crop: tuple[int, int] | None) -> np.ndarray:
    """Decode a VideoFrame to (H,W,3) uint8 RGB.

    FFmpeg's own yuv420p->rgb24 path rounds coarsely (~2/255 mean error on smooth content), so the common
    even-sized 8-bit 4:2:0 case is converted here with bilinear chroma upsampling; others go through FFmpeg.
    """
    name = frame.format.name
    w, h = frame.width, frame.height
    if name in ("yuv420p", "yuvj420p") and w % 2 == 0 and h % 2 == 0:
        buf = frame.to_ndarray()  # (H*3/2, W): Y plane then U, V planes
        y = buf[:h].astype(np.float32)
        rest = buf[h:].reshape(-1)
        u = rest[: h * w // 4].reshape(h // 2, w // 2).astype(np.float32)
        v = rest[h * w // 4 :].reshape(h // 2, w // 2).astype(np.float32)
        full = name == "yuvj420p" or int(getattr(frame, "color_range", 0) or 0) == 2
        if full:
            y, u, v = y / 255.0, (u - 128.0) / 255.0, (v - 128.0) / 255.0
        else:
            y, u, v = (y - 16.0) / 219.0, (u - 128.0) / 224.0, (v - 128.0) / 224.0
        u, v = _upsample2(u), _upsample2(v)
        kr, kb = (0.2126, 0.0722) if int(getattr(frame, "colorspace", 2) or 2) == 1 else (0.299, 0.114)
        r = y + 2.0 * (1.0 - kr) * v
        b = y + 2.0 * (1.0 - kb) * u
        g = (y - kr * r - kb * b) / (1.0 - kr - kb)
        rgb = np.clip(np.rint(np.stack([r, g, b], axis=-1) * 255.0), 0, 255).astype(np.uint8)
    else:
        rgb = frame.to_ndarray(format="rgb24")
    if crop is not None:
        rgb = rgb[: crop[1], : crop[0]]
    return np.ascontiguousarray(rgb)


def _upsample2(c: np.ndarray) -> np.ndarray:
    """(h,w) -> (2h,2w) bilinear with centred (MPEG-2 style) sample positions, edge-clamped."""
    p = np.pad(c, 1, mode="edge")
    # Each output sample lies 1/4 and 3/4 of the way between two chroma samples.
    rows = np.empty((2 * c.shape[0], p.shape[1]), np.float32)
    rows[0::2] = 0.25 * p[:-2] + 0.75 * p[1:-1]
    rows[1::2] = 0.75 * p[1:-1] + 0.25 * p[2:]
    out = np.empty((rows.shape[0], 2 * c.shape[1]), np.float32)
    out[:, 0::2] = 0.25 * rows[:, :-2] + 0.75 * rows[:, 1:-1]
    out[:, 1::2] = 0.75 * rows[:, 1:-1] + 0.25 * rows[:, 2:]
    return out


def _rgb_to_yuv420(rgb: np.ndarray) -> np.ndarray:
    """(H,W,3) uint8 RGB with even H,W -> (H*3/2, W) uint8 yuv420p planes, BT.601 limited range."""
    h, w = rgb.shape[:2]
    x = rgb.astype(np.float32) / 255.0
    y = 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]
    u = (x[..., 2] - y) / 1.772
    v = (x[..., 0] - y) / 1.402
    u = u.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
    v = v.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))

    def q(a):
        return np.clip(np.rint(a), 0, 255).astype(np.uint8).reshape(-1)

    planes = np.concatenate([q(16.0 + 219.0 * y), q(128.0 + 224.0 * u), q(128.0 + 224.0 * v)])
    return planes.reshape(h * 3 // 2, w)


def _size_tag(container) -> tuple[int, int] | None:
    comment = container.metadata.get("comment", "") if container.metadata else ""
    if comment.startswith(_SIZE_TAG):
        try:
            w, h = comment[len(_SIZE_TAG) :].split("x")
            return int(w), int(h)
        except ValueError:
            return None
    return None


def _stream_fps(stream, frame_times: list[float]) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return float(rate)
    if len(frame_times) > 1:
        return (len(frame_times) - 1) / (frame_times[-1] - frame_times[0])
    return 25.0


def _resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    if rate_in == rate_out:
        return x.astype(np.float32)
    g = math.gcd(int(rate_in), int(rate_out))
    return resample_poly(x, rate_out // g, rate_in // g).astype(np.float32)


class _AudioCollector:
    """Resamples decoded AudioFrames to one rate and places them on the video's timeline."""

    def __init__(self, stream, sample_rate: int):
        self.sample_rate = sample_rate
        self.resampler = av.AudioResampler(format="fltp", rate=sample_rate)
        self.chunks: list[np.ndarray] = []
        self.start: float | None = None  # time (s) of the first decoded sample
        self.stream = stream

    def add(self, frame) -> None:
        if self.start is None:
            self.start = float(frame.time) if frame.time is not None else 0.0
        # The resampler keeps the source layout and channels are averaged in finish(): FFmpeg's own
        # stereo->mono downmix sums at -3 dB per channel, a different level than the soundfile path.
        for out in self.resampler.resample(frame):
            self.chunks.append(out.to_ndarray())

    def finish(self, origin: float) -> np.ndarray:
        for out in self.resampler.resample(None):
            self.chunks.append(out.to_ndarray())
        if not self.chunks:
            return np.zeros(0, np.float32)
        audio = np.concatenate([_to_mono_planar(c) for c in self.chunks])
        # AAC/Opus decoders may pad the last frame: cut to the duration the container declares.
        if self.stream.duration and self.stream.time_base:
            declared = round(float(self.stream.duration * self.stream.time_base) * self.sample_rate)
            if 0 < declared < audio.size:
                audio = audio[:declared]
        # Align to the video clock: a stream that starts late gets leading silence, an early one is cut.
        shift = round(((self.start or 0.0) - origin) * self.sample_rate)
        if shift > 0:
            audio = np.concatenate([np.zeros(shift, np.float32), audio])
        elif shift < 0:
            audio = audio[-shift:]
        return np.clip(audio, -1.0, 1.0).astype(np.float32)


def _to_mono_planar(x: np.ndarray) -> np.ndarray:
    return x.mean(axis=0).astype(np.float32) if x.ndim == 2 else x.astype(np.float32)


# ---------------------------------------------------------------------------------------------- reading


def _decode(path: Path, sample_rate: int, want_video: bool, want_audio: bool):
    """One demux pass: returns (frames list, fps, audio or None, has_audio_stream)."""
    container = open_media(path)
    try:
        vstream = container.streams.video[0] if container.streams.video else None
        astream = container.streams.audio[0] if container.streams.audio else None
        if want_video and vstream is None:
            raise MediaError(path, "no video stream (not a video, or a truncated file)", _FIX_REEXPORT)
        streams = [s for s, w in ((vstream, want_video), (astream, want_audio)) if s is not None and w]
        crop = _size_tag(container)
        frames: list[np.ndarray] = []
        times: list[float] = []
        collector = _AudioCollector(astream, sample_rate) if astream is not None and want_audio else None
        try:
            for packet in container.demux(*streams):
                for frame in packet.decode():
                    if isinstance(frame, av.VideoFrame):
                        frames.append(yuv_frame_to_rgb(frame, crop))
                        # Frames without timestamps are assumed evenly spaced at the nominal rate.
                        nominal = float(vstream.average_rate or vstream.guessed_rate or 25)
                        times.append(float(frame.time) if frame.time is not None else len(times) / nominal)
                    elif collector is not None:
                        collector.add(frame)
        except (av.FFmpegError, ValueError, RuntimeError) as err:
            raise MediaError(
                path, f"corrupt or truncated media: decoding failed ({_short(err)})", _FIX_REEXPORT
            ) from None
        fps = _stream_fps(vstream, times) if vstream is not None else 0.0
        origin = times[0] if times else 0.0
        if collector is not None:
            try:
                audio = collector.finish(origin if want_video else (collector.start or 0.0))
            except (av.FFmpegError, ValueError, RuntimeError) as err:
                raise MediaError(path, f"corrupt audio track ({_short(err)})", _FIX_REEXPORT) from None
        else:
            audio = None
        return frames, fps, audio, astream is not None
    finally:
        container.close()


def read_video(path) -> tuple[np.ndarray, float]:
    """Decode all frames: returns frames (T,H,W,3) uint8 RGB and fps. Raises MediaError if unusable."""
    path = Path(path)
    frames, fps, _, _ = _decode(path, 16000, want_video=True, want_audio=False)
    if not frames:
        raise MediaError(path, "corrupt or truncated video: no frames could be decoded", _FIX_REEXPORT)
    return np.stack(frames), fps


def _read_soundfile(path: Path, sample_rate: int) -> np.ndarray:
    _check_file(path)
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)  # (N, channels)
    except (sf.LibsndfileError, RuntimeError, ValueError, OSError) as err:
        raise MediaError(
            path, f"unreadable audio file ({_short(err)})", "re-export it as 16-bit PCM .wav"
        ) from None
    mono = data.mean(axis=1)
    return np.clip(_resample(mono, int(rate), sample_rate), -1.0, 1.0).astype(np.float32)


def read_audio(path, sample_rate: int = 16000) -> np.ndarray:
    """Read audio as (N,) float32 mono in [-1,1] at `sample_rate`, channels averaged.

    .wav/.flac/.ogg/.aiff go through soundfile; containers (mp4, mkv, ...) through FFmpeg, with encoder
    priming removed and trailing frame padding cut to the stream's declared duration.
    """
    path = Path(path)
    if path.suffix.lower() in SOUNDFILE_EXTS:
        return _read_soundfile(path, sample_rate)
    _, _, audio, has_audio = _decode(path, sample_rate, want_video=False, want_audio=True)
    if not has_audio:
        raise MediaError(path, "no audio: the file has no audio track", "add an audio track")
    return audio


def load_media(path, sample_rate: int = 16000) -> Media:
    """Decode a talking-head clip with audio aligned to its frames.

    Audio comes from the file's audio track, else from a sidecar `<stem>.wav`. It is resampled and mixed to
    mono, trimmed to the video length when longer, zero-padded when short by at most one frame, and rejected
    (MediaError) when shorter than that.
    """
    path = Path(path)
    frames, fps, audio, has_audio = _decode(path, sample_rate, want_video=True, want_audio=True)
    if not frames:
        raise MediaError(path, "corrupt or truncated video: no frames could be decoded", _FIX_REEXPORT)
    source = path
    if not has_audio:
        sidecar = sidecar_wav(path)
        audio = _read_soundfile(sidecar, sample_rate)
        source = sidecar
    audio = fit_audio(audio, source, len(frames), fps, sample_rate)
    return Media(np.stack(frames), float(fps), audio, int(sample_rate), str(path))


def sidecar_wav(path: Path) -> Path:
    """The `<stem>.wav` next to a video without an audio track, or a one-line MediaError."""
    sidecar = path.with_suffix(".wav")
    if not sidecar.exists():
        raise MediaError(
            path,
            f"no audio: no audio track and no sidecar {sidecar.name}",
            f"mux an audio track into it or put {sidecar.name} next to it",
        )
    return sidecar


def fit_audio(audio: np.ndarray, source, num_frames: int, fps: float, sample_rate: int) -> np.ndarray:
    """Cut or pad audio to round(num_frames / fps * sample_rate) samples.

    Longer audio is cut, audio short by at most one frame is zero-padded, shorter audio raises MediaError.
    """
    need = round(num_frames / fps * sample_rate)
    short = need - audio.size
    if short > sample_rate / fps:
        raise MediaError(
            source,
            f"audio too short: {short / sample_rate:.2f} s shorter than the video "
            f"({audio.size / sample_rate:.2f} s audio vs {need / sample_rate:.2f} s video)",
            "re-export with the full-length audio or trim the video to the audio",
        )
    if short > 0:
        audio = np.concatenate([audio, np.zeros(short, np.float32)])
    return audio[:need].astype(np.float32)


# ---------------------------------------------------------------------------------------------- writing


def _fps_fraction(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1001)


def x264_options(crf: int, threads: int) -> dict[str, str]:
    """write_video's encoder settings.

    x264's macroblock-tree rate control is off: with it, the same frames encoded twice in one process
    gave two different streams once other allocations came between (it reads heap-dependent memory),
    so two fresh benchmark runs synthesized different corpora.
    """
    return {"crf": str(crf), "preset": "medium", "threads": str(threads), "x264-params": "mbtree=0"}


def write_video(
    path,
    frames: np.ndarray,
    fps: float,
    audio: np.ndarray | None = None,
    sample_rate: int = 16000,
    *,
    crf: int = 12,
    threads: int = 1,
) -> None:
    """Write frames (T,H,W,3) uint8 RGB (or float in [0,1]) as h264 yuv420p, plus audio (N,) as AAC mono.

    Odd sizes are edge-padded to even (4:2:0 needs it) and the true size is stored in the container comment
    so read_video crops back. crf=12 keeps a 64x64 frame within ~1/255 mean error; threads=1 makes the
    encode bit-exact across machines with different core counts; x264_options says why the macroblock
    tree is off (a synthesized corpus must be the same bytes in every run).
    """
    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"frames must be (T,H,W,3) with T>0, got {frames.shape}")
    if frames.dtype != np.uint8:
        frames = np.clip(np.rint(np.asarray(frames, np.float32) * 255.0), 0, 255).astype(np.uint8)
    t, h, w, _ = frames.shape
    ph, pw = h + h % 2, w + w % 2
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = _fps_fraction(fps)
    if audio is not None:
        audio = np.asarray(audio, np.float32)
        if audio.ndim == 2:  # (N, channels), the soundfile convention
            audio = audio.mean(axis=1)
        audio = np.clip(audio, -1.0, 1.0)
    with av.open(str(path), "w") as container:
        if (ph, pw) != (h, w):
            container.metadata["comment"] = f"{_SIZE_TAG}{w}x{h}"
        vs = container.add_stream("libx264", rate=rate)
        vs.width, vs.height, vs.pix_fmt = pw, ph, "yuv420p"
        vs.codec_context.time_base = 1 / rate
        vs.options = x264_options(crf, threads)
        astream = None
        if audio is not None:
            astream = container.add_stream("aac", rate=int(sample_rate))
            astream.layout = "mono"
            astream.bit_rate = 96000
        sent = 0  # audio samples handed to the encoder so far; interleaved with video for streaming players

        def push_audio(upto: int) -> None:
            nonlocal sent
            upto = min(upto, audio.size)
            if upto <= sent:
                return
            chunk = av.AudioFrame.from_ndarray(audio[None, sent:upto], format="fltp", layout="mono")
            chunk.sample_rate = int(sample_rate)
            chunk.pts = sent
            chunk.time_base = Fraction(1, int(sample_rate))
            for packet in astream.encode(chunk):
                container.mux(packet)
            sent = upto

        for i in range(t):
            img = frames[i]
            if (ph, pw) != (h, w):
                img = np.pad(img, ((0, ph - h), (0, pw - w), (0, 0)), mode="edge")
            frame = av.VideoFrame.from_ndarray(_rgb_to_yuv420(img), format="yuv420p")
            frame.pts = i
            frame.time_base = 1 / rate
            for packet in vs.encode(frame):
                container.mux(packet)
            if astream is not None:
                push_audio(round((i + 1) / float(rate) * sample_rate))
        for packet in vs.encode():
            container.mux(packet)
        if astream is not None:
            push_audio(audio.size)
            for packet in astream.encode():
                container.mux(packet)
