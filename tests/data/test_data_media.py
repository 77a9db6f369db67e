"""Media I/O: h264/AAC round trips, soundfile audio, and one-line MediaErrors for every bad input."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from privfedtalk.data.media import load_media, read_audio, read_video, write_video, x264_options
from privfedtalk.errors import MediaError

SR = 16000


def _samples(num_frames: int, fps: float) -> int:
    return round(num_frames / fps * SR)


def test_roundtrip_frames_and_audio(tmp_path, smooth_frames, tone_with_noise):
    frames = smooth_frames(50, 64, 64)
    audio = tone_with_noise(_samples(50, 25.0))
    path = tmp_path / "rt.mp4"
    write_video(path, frames, 25.0, audio, SR)
    media = load_media(path)
    assert media.frames.shape == frames.shape and media.frames.dtype == np.uint8
    assert media.fps == pytest.approx(25.0)
    err = np.abs(media.frames.astype(np.float32) - frames).mean() / 255.0
    assert err <= 2.0 / 255.0
    # AAC priming and frame padding are removed: same length, sample-aligned (zero lag).
    assert media.audio.shape == audio.shape and media.audio.dtype == np.float32
    assert np.corrcoef(media.audio, audio)[0, 1] > 0.99
    frames2, fps2 = read_video(path)
    assert np.array_equal(frames2, media.frames) and fps2 == pytest.approx(25.0)


@pytest.mark.parametrize(
    ("fps", "height", "width"), [(30.0, 32, 32), (29.97, 63, 65), (30000 / 1001, 128, 128)]
)
def test_roundtrip_rates_and_sizes(tmp_path, fps, height, width, smooth_frames, tone_with_noise):
    frames = smooth_frames(12, height, width)
    audio = tone_with_noise(_samples(12, fps))
    path = tmp_path / "v.mp4"
    write_video(path, frames, fps, audio, SR)
    media = load_media(path)
    assert media.frames.shape == frames.shape  # odd sizes are padded on write and cropped back on read
    assert media.fps == pytest.approx(fps, rel=1e-6)
    assert media.audio.size == _samples(12, fps)
    assert np.abs(media.frames.astype(np.float32) - frames).mean() <= 3.0


def test_audio_longer_than_video_is_trimmed(tmp_path, smooth_frames, tone_with_noise):
    frames = smooth_frames(10, 32, 32)
    audio = tone_with_noise(_samples(10, 25.0) + 8000)
    path = tmp_path / "long.mp4"
    write_video(path, frames, 25.0, audio, SR)
    media = load_media(path)
    assert media.audio.size == _samples(10, 25.0)
    assert np.corrcoef(media.audio, audio[: media.audio.size])[0, 1] > 0.99


def test_wav_roundtrip_exact(tmp_path, tone_with_noise):
    audio = tone_with_noise(SR)
    path = tmp_path / "a.wav"
    sf.write(path, audio, SR, subtype="FLOAT")
    out = read_audio(path, SR)
    assert out.dtype == np.float32 and out.shape == audio.shape
    assert np.abs(out - audio).max() < 1e-4


def test_wav_stereo_44k_resampled_and_mixed(tmp_path):
    t = np.arange(44100) / 44100
    left = 0.5 * np.sin(2 * np.pi * 300 * t)
    path = tmp_path / "st.wav"
    sf.write(path, np.stack([left, left], axis=1), 44100)
    out = read_audio(path, SR)
    assert out.shape == (SR,)
    ref = 0.5 * np.sin(2 * np.pi * 300 * np.arange(SR) / SR)
    assert np.abs(out[200:-200] - ref[200:-200]).max() < 2e-3  # averaged, not summed, channels


# ---------------------------------------------------------------------------------------------- bad input


def _error(fn, path) -> MediaError:
    with pytest.raises(MediaError) as info:
        fn(path)
    text = str(info.value)
    assert "\n" not in text and path.name in text
    return info.value


def test_zero_byte_file(tmp_path):
    path = tmp_path / "zero.mp4"
    path.write_bytes(b"")
    assert "empty" in _error(load_media, path).reason


def test_text_file_named_mp4(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n" * 20)
    err = _error(load_media, path)
    assert "not a video" in err.reason and err.fix
    _error(read_video, path)


def test_truncated_mp4(tmp_path, smooth_frames, tone_with_noise):
    good = tmp_path / "good.mp4"
    write_video(good, smooth_frames(20, 32, 32), 25.0, tone_with_noise(_samples(20, 25.0)), SR)
    data = good.read_bytes()
    path = tmp_path / "half.mp4"
    path.write_bytes(data[: len(data) // 2])
    err = _error(load_media, path)
    assert "truncated" in err.reason


def test_no_audio_and_no_sidecar(tmp_path, smooth_frames):
    path = tmp_path / "mute.mp4"
    write_video(path, smooth_frames(10, 32, 32), 25.0)
    err = _error(load_media, path)
    assert "no audio" in err.reason and "mute.wav" in err.reason


def test_audio_track_shorter_than_video(tmp_path, smooth_frames, tone_with_noise):
    path = tmp_path / "short.mp4"
    write_video(path, smooth_frames(50, 32, 32), 25.0, tone_with_noise(SR), SR)  # 1 s audio, 2 s video
    err = _error(load_media, path)
    assert "too short" in err.reason and "1.00 s shorter" in err.reason


def test_sidecar_wav_shorter_than_video(tmp_path, smooth_frames, tone_with_noise):
    path = tmp_path / "side.mp4"
    write_video(path, smooth_frames(50, 32, 32), 25.0)
    sf.write(tmp_path / "side.wav", tone_with_noise(SR // 2), SR)
    with pytest.raises(MediaError) as info:
        load_media(path)
    assert "side.wav" in str(info.value) and "1.50 s shorter" in info.value.reason


def test_sidecar_wav_44k_stereo_accepted(tmp_path, smooth_frames):
    path = tmp_path / "side.mp4"
    write_video(path, smooth_frames(50, 32, 32), 25.0)
    t = np.arange(2 * 44100) / 44100
    tone = 0.3 * np.sin(2 * np.pi * 300 * t)
    sf.write(tmp_path / "side.wav", np.stack([tone, tone], axis=1), 44100)
    media = load_media(path)
    assert media.sample_rate == SR and media.audio.shape == (2 * SR,) and media.audio.ndim == 1
    assert np.abs(media.audio).max() == pytest.approx(0.3, abs=0.01)


def test_sidecar_shortfall_within_one_frame_is_padded(tmp_path, smooth_frames, tone_with_noise):
    path = tmp_path / "side.mp4"
    write_video(path, smooth_frames(25, 32, 32), 25.0)
    sf.write(tmp_path / "side.wav", tone_with_noise(SR - 300), SR)  # 19 ms short < one 40 ms frame
    media = load_media(path)
    assert media.audio.size == SR and np.all(media.audio[-300:] == 0)


def _encode_with_heap_churn(frames: np.ndarray, options: dict[str, str], churn_seed: int) -> bytes:
    """Encode frames with the given x264 options while other allocations come and go between frames."""
    import random
    from fractions import Fraction

    import av

    from privfedtalk.data.media import _rgb_to_yuv420

    sizes, ballast = random.Random(churn_seed), []
    garbage = [sizes.randbytes(sizes.randint(1024, 100_000)) for _ in range(60)]
    del garbage  # freed heap chunks with random content, where the encoder's next allocations may land
    codec = av.CodecContext.create("libx264", "w")
    codec.width, codec.height, codec.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
    codec.time_base, codec.options = Fraction(1, 25), options
    packets = []
    for i, rgb in enumerate(frames):
        ballast.append(bytearray(sizes.randint(1, 5000)))
        frame = av.VideoFrame.from_ndarray(_rgb_to_yuv420(rgb), format="yuv420p")
        frame.pts, frame.time_base = i, Fraction(1, 25)
        packets += codec.encode(frame)
    packets += codec.encode(None)
    return b"".join(bytes(p) for p in packets)


def test_video_encode_does_not_depend_on_heap_state():
    """A benchmark's corpus must be byte-reproducible. With x264's macroblock tree on, the same frames gave
    different streams depending on what else the process allocated; write_video's options must give one.
    With the macroblock tree switched back on this test failed 4 times of 4 (alone and after the other data
    tests); the weakened setting is not asserted here, since whether it shows depends on the heap state."""
    from privfedtalk.data import synthetic

    face = synthetic._make_face(0, 17, 64)
    frames, _, _ = synthetic._synth_clip(face, 0, 17, 1, 75, 25.0, 64, 0, None, 56)
    streams = {_encode_with_heap_churn(frames, x264_options(12, 1), churn_seed) for churn_seed in range(16)}
    assert len(streams) == 1
