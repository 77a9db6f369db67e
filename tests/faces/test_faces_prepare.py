"""`prepare_corpus` on a small messy corpus: good clips, odd audio, variable frame rate and broken files."""

from __future__ import annotations

import argparse
import json
from fractions import Fraction

import av
import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("dlib")
pytest.importorskip("skimage")

from privfedtalk.data.corpus import list_identities, load_identity, read_split  # noqa: E402
from privfedtalk.data.media import load_media, read_video, write_video  # noqa: E402
from privfedtalk.data.prepare import (  # noqa: E402
    SUMMARY_NAME,
    _resampled,
    add_prepare_parser,
    clip_name,
    prepare_corpus,
)
from privfedtalk.errors import PrivFedTalkError  # noqa: E402

FPS, RATE, SIZE = 25.0, 16000, 64
# Gaps between the frames of the variable-rate clip (ms): 20 frames, 0.79 s in all.
VFR_STEPS_MS = (20, 60, 33, 45)


def _write_vfr(path, frames, steps_ms=VFR_STEPS_MS) -> list[float]:
    """Write frames (T,H,W,3) as h264 with irregular timestamps (no audio); returns the frame times (s)."""
    times, t = [], 0
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        stream.options = {"crf": "12", "threads": "1"}
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            times.append(t / 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
            t += steps_ms[i % len(steps_ms)]
        for packet in stream.encode():
            container.mux(packet)
    return times


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, pan_frames, grace, sine):
    """SRC with identities alice and bob; returns (src, out, first summary, second summary, vfr times)."""
    src = tmp_path_factory.mktemp("src")
    alice, bob = src / "alice", src / "bob"
    seconds = len(pan_frames) / FPS
    write_video(alice / "good.mp4", pan_frames, FPS, audio=sine(seconds), sample_rate=RATE)
    # Video-only mp4 + 44.1 kHz stereo sidecar wav, inside a sub-folder whose name has a space.
    write_video(alice / "day 2" / "take1.mp4", pan_frames, FPS)
    sf.write(alice / "day 2" / "take1.wav", sine(seconds, 44100, channels=2), 44100)
    vfr_times = _write_vfr(alice / "vfr.mp4", pan_frames)
    sf.write(alice / "vfr.wav", sine(0.8), RATE)
    write_video(alice / "noaudio.mp4", pan_frames[:5], FPS)
    data = (alice / "good.mp4").read_bytes()
    (alice / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (alice / ".hidden.mp4").write_bytes(b"")  # hidden files are ignored, like ._x.mp4 forks
    still = np.repeat(grace[None], 12, axis=0)
    write_video(bob / "grace.mp4", still, FPS, audio=sine(12 / FPS), sample_rate=RATE)
    noise = np.random.default_rng(0).integers(0, 256, (8, 96, 96, 3), dtype=np.uint8)
    write_video(bob / "noise.mp4", noise, FPS, audio=sine(8 / FPS), sample_rate=RATE)
    (bob / "empty.mp4").write_bytes(b"")
    (bob / "notes.mp4").write_text("this is not a video\n")
    (src / "carol").mkdir()  # an identity folder without videos
    write_video(src / "stray.mp4", pan_frames[:3], FPS, audio=sine(3 / FPS), sample_rate=RATE)
    (src / "split.json").write_text(json.dumps({"public": ["bob"], "private": ["alice"]}))
    out = tmp_path_factory.mktemp("cache") / "prepared"
    first = prepare_corpus(src, out, size=SIZE, fps=FPS, sample_rate=RATE, detector="dlib", progress=False)
    second = prepare_corpus(src, out, size=SIZE, fps=FPS, sample_rate=RATE, detector="dlib", progress=False)
    return src, out, first, second, vfr_times


def _reason(summary, name: str) -> str:
    return next(r for p, r in summary.skipped if p.endswith(name))


def test_kept_clips_and_layout(corpus):
    _, out, first, _, _ = corpus
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.mp4"))
    assert names == ["alice/day_2__take1.mp4", "alice/good.mp4", "alice/vfr.mp4", "bob/grace.mp4"]
    assert len(first.written) == 4 and first.kept == 4 and first.existing == []
    assert first.identities == {"alice": 3, "bob": 1, "carol": 0}
    assert not (out / ".partial").exists()
    assert list_identities(out) == ["alice", "bob"]


def test_outputs_are_face_crops_at_the_target_rate(corpus):
    _, out, _, _, _ = corpus
    media = load_media(out / "alice" / "good.mp4", RATE)
    assert media.frames.shape == (20, SIZE, SIZE, 3) and media.fps == FPS
    assert media.audio.shape == (round(20 / FPS * RATE),) and np.abs(media.audio).max() > 0.1
    from privfedtalk.data.faces import FaceDetector

    box = FaceDetector("dlib").detect(media.frames[10])[0]
    assert abs((box[0] + box[2]) / 2 - SIZE / 2) < 4 and abs((box[1] + box[3]) / 2 - SIZE / 2) < 4


def test_stereo_44k_sidecar_is_resampled(corpus):
    _, out, _, _, _ = corpus
    media = load_media(out / "alice" / "day_2__take1.mp4", RATE)
    assert media.frames.shape[0] == 20 and media.sample_rate == RATE
    # The sidecar's sine (220 Hz) survives resampling to 16 kHz mono; AAC keeps it within a few percent.
    spectrum = np.abs(np.fft.rfft(media.audio))
    assert abs(np.argmax(spectrum) * RATE / media.audio.size - 220) < 3


def test_variable_frame_rate_is_resampled_by_timestamps(corpus):
    _, out, _, _, times = corpus
    frames, fps = read_video(out / "alice" / "vfr.mp4")
    duration = times[-1] + float(np.median(np.diff(times)))
    assert fps == FPS and len(frames) == round(duration * FPS) == 19  # 0.778 s at 25 fps


def test_resampling_picks_the_frame_on_screen(tmp_path):
    """Grey level 10*i marks source frame i; output frame k must show the frame on screen at (k+0.5)/25 s."""
    levels = np.arange(20) * 10
    frames = np.repeat(levels[:, None, None, None], 64, axis=1).repeat(64, axis=2).repeat(3, axis=3)
    times = np.array(_write_vfr(tmp_path / "vfr.mp4", frames.astype(np.uint8)))
    got = [(i, int(round(img.mean() / 10))) for i, img in _resampled(tmp_path / "vfr.mp4", FPS)]
    expected = [int(np.searchsorted(times, (k + 0.5) / FPS, side="right") - 1) for k in range(len(got))]
    assert [i for i, _ in got] == list(range(len(got)))
    assert [src for _, src in got] == expected
    # A constant-rate file at the target rate passes frame for frame.
    write_video(tmp_path / "cfr.mp4", frames[:6].astype(np.uint8), FPS)
    assert [int(round(img.mean() / 10)) for _, img in _resampled(tmp_path / "cfr.mp4", FPS)] == list(range(6))


def test_bad_clips_are_skipped_with_reasons(corpus):
    _, out, first, _, _ = corpus
    assert "no audio" in _reason(first, "noaudio.mp4") and "noaudio.wav" in _reason(first, "noaudio.mp4")
    assert "not a readable media file" in _reason(first, "truncated.mp4")
    assert "no face found" in _reason(first, "noise.mp4")
    assert "empty file (0 bytes)" in _reason(first, "empty.mp4")
    assert "not a readable media file" in _reason(first, "notes.mp4")
    assert "not inside an identity folder" in _reason(first, "stray.mp4")
    assert not any(".hidden" in p for p, _ in first.skipped)
    expected = {"empty file": 1, "no audio": 1, "no face": 1, "outside identity folders": 1, "unreadable": 2}
    assert first.counts() == expected
    saved = json.loads((out / SUMMARY_NAME).read_text())
    assert saved["skipped_by_reason"] == expected and saved["kept"] == 4
    assert {c["path"].rsplit("/", 1)[-1] for c in saved["skipped_clips"]} >= {"noise.mp4", "empty.mp4"}
    text = first.text()
    assert text.startswith("prepared 4 clips of 2 identities") and "2 unreadable" in text
    assert "carol" in text  # the identity that ended up with no clip is named


def test_second_run_resumes(corpus):
    _, out, first, second, _ = corpus
    assert second.written == [] and sorted(second.existing) == sorted(first.written)
    assert second.kept == 4 and second.counts() == first.counts()  # bad files are retried, fail the same way


def test_split_is_copied(corpus):
    _, out, first, _, _ = corpus
    assert read_split(out) == {"public": ["bob"], "private": ["alice"]}
    assert first.split.startswith("copied split.json (1 public, 1 private")


def test_prepared_cache_loads_as_a_corpus(corpus):
    _, out, _, _, _ = corpus
    spec = argparse.Namespace(sample_rate=RATE, n_mels=32, hop_ms=10.0, window_ms=200.0)
    clips = load_identity(out, "alice", spec)
    assert [c.name for c in clips] == ["day_2__take1", "good", "vfr"]
    assert all(c.frames.shape[1:] == (SIZE, SIZE, 3) and c.truth is None for c in clips)


def test_without_split_the_summary_says_how_to_write_one(tmp_path, pan_frames, sine):
    src = tmp_path / "src"
    write_video(src / "alice" / "a.mp4", pan_frames[:8], FPS, audio=sine(8 / FPS), sample_rate=RATE)
    summary = prepare_corpus(src, tmp_path / "out", size=SIZE, detector="dlib", progress=False)
    assert summary.kept == 1 and not (tmp_path / "out" / "split.json").exists()
    assert '{"public":' in summary.split and "private" in summary.split
    with pytest.raises(PrivFedTalkError, match="must not be inside"):
        prepare_corpus(src, src / "cache", detector="dlib", progress=False)


def test_clip_names_and_command_line():
    from pathlib import Path

    assert clip_name(Path("day 1/take (2).mp4")) == "day_1__take__2_"
    assert clip_name(Path("a/b/c.MOV")) == "a__b__c"
    parser = argparse.ArgumentParser()
    add_prepare_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["prepare", "--src", "in", "--out", "cache", "--detector", "opencv"])
    assert (args.size, args.fps, args.sample_rate, args.detector, args.detect_every) == (
        128,
        25.0,
        16000,
        "opencv",
        1,
    )
    assert args.func.__name__ == "cmd_prepare"


def _write_delayed_audio(path, num_frames: int, audio: np.ndarray, delay: float) -> None:
    """h264 64x64 black video at 25 fps plus an AAC track whose first sample plays `delay` s in."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 64, 64, "yuv420p"
        sound = container.add_stream("aac", rate=RATE)
        sound.layout = "mono"
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 25)
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        chunk = av.AudioFrame.from_ndarray(audio[None], format="fltp", layout="mono")
        chunk.sample_rate, chunk.pts, chunk.time_base = RATE, round(delay * RATE), Fraction(1, RATE)
        for packet in [*sound.encode(chunk), *sound.encode()]:
            container.mux(packet)


def test_audio_is_put_on_the_video_clock_like_load_media(tmp_path, sine):
    from privfedtalk.data.media import fit_audio
    from privfedtalk.data.prepare import _clip_audio

    audio = sine(1.0)
    audio[:800] = 0.0  # 50 ms of silence, then the tone
    _write_delayed_audio(tmp_path / "late.mp4", 25, audio, delay=0.2)
    expected = load_media(tmp_path / "late.mp4", RATE).audio
    got, source = _clip_audio(tmp_path / "late.mp4", RATE)
    got = fit_audio(got, source, 25, FPS, RATE)
    assert np.array_equal(got, expected)
    assert abs(int(np.argmax(np.abs(got) > 0.05)) - round(0.25 * RATE)) < 40  # tone starts 0.2 + 0.05 s in


def test_command_fails_only_when_nothing_is_usable(tmp_path):
    from privfedtalk.data.prepare import cmd_prepare

    (tmp_path / "src" / "alice").mkdir(parents=True)
    (tmp_path / "src" / "alice" / "a.mp4").write_bytes(b"")
    parser = argparse.ArgumentParser()
    add_prepare_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["prepare", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--no-progress"]
    )
    with pytest.raises(PrivFedTalkError, match="no usable clips"):
        cmd_prepare(args)
    saved = json.loads((tmp_path / "out" / SUMMARY_NAME).read_text())
    assert saved["skipped_by_reason"] == {"empty file": 1} and saved["kept"] == 0
