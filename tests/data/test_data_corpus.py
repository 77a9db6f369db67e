"""Corpus loading: clips with features, resizing, folder discovery and the skip/LoadReport contract."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from privfedtalk.config import AudioConfig
from privfedtalk.data.corpus import (
    LoadReport,
    list_identities,
    load_clip,
    load_identity,
    read_split,
    window_starts,
)
from privfedtalk.data.media import write_video
from privfedtalk.errors import MediaError


def test_load_identity_synthetic(tiny_corpus):
    report = LoadReport()
    clips = load_identity(tiny_corpus["root"], "id001", AudioConfig(), report=report)
    assert len(clips) == 1 and report.summary() == "kept 1 clip, skipped 0"
    clip = clips[0]
    assert clip.identity == "id001" and clip.name == "clip00"
    assert clip.frames.shape == (50, 64, 64, 3) and clip.audio.shape == (32000,)
    assert clip.features.shape == (50, 20, 32) and clip.features.dtype == np.float32
    assert clip.loudness.shape == (50,)
    assert clip.truth["mouth_open"].shape == (50,) and clip.truth["head_offset"].shape == (50, 2)
    assert clip.truth["mouth_box"].dtype == np.int64


def test_load_clip_resizes_frames_and_truth(tiny_corpus):
    path = Path(tiny_corpus["root"]) / "id000" / "clip00.mp4"
    full = load_clip(path, AudioConfig())
    half = load_clip(path, AudioConfig(), size=32)
    assert half.frames.shape == (50, 32, 32, 3) and half.truth["size"] == 32
    box = full.truth["mouth_box"]
    assert np.all(np.abs(half.truth["mouth_box"] - box / 2) <= 1)
    assert np.abs(half.truth["head_offset"] - full.truth["head_offset"] / 2).max() < 1e-6
    small = full.frames.reshape(50, 32, 2, 32, 2, 3).mean(axis=(2, 4))
    assert np.abs(half.frames - small).max() <= 1.0  # area resize


def test_list_identities_and_split(tiny_corpus, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(tiny_corpus["root"], root)
    (root / "empty").mkdir()
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("no media here")
    assert list_identities(root) == ["id000", "id001"]
    assert read_split(root) == {"public": ["id000"], "private": ["id001"]}
    assert read_split(tmp_path) is None


def test_bad_clips_are_skipped_and_counted(tmp_path, smooth_frames, tone_with_noise):
    ident = tmp_path / "person"
    ident.mkdir()
    frames = smooth_frames(25, 32, 32)
    write_video(ident / "good.mp4", frames, 25.0, tone_with_noise(16000), 16000)
    (ident / "zero.mp4").write_bytes(b"")
    (ident / "text.mp4").write_text("not a video\n" * 10)
    data = (ident / "good.mp4").read_bytes()
    (ident / "half.mp4").write_bytes(data[: len(data) // 2])
    write_video(ident / "mute.mp4", frames, 25.0)
    write_video(ident / "short.mp4", frames, 25.0, tone_with_noise(4000), 16000)
    write_video(ident / "stereo.mp4", frames, 25.0)
    t = np.arange(44100) / 44100
    sf.write(ident / "stereo.wav", np.stack([np.sin(t * 1800), np.sin(t * 1800)], axis=1) * 0.3, 44100)
    messages: list[str] = []
    report = LoadReport(warn=messages.append)
    clips = load_identity(tmp_path, "person", AudioConfig(), report=report)
    assert sorted(c.name for c in clips) == ["good", "stereo"]
    assert report.kept == 2 and len(report.skipped) == 5
    counts = report.counts()
    assert counts["no audio"] == 1 and counts["audio too short"] == 1 and counts["empty file"] == 1
    summary = report.summary()
    assert summary.startswith("kept 2 clips, skipped 5: ") and "1 no audio" in summary and "\n" not in summary
    assert len(messages) == 5 and all("\n" not in m and m.startswith("skipping ") for m in messages)


def test_empty_identity_raises(tmp_path):
    (tmp_path / "ghost").mkdir()
    with pytest.raises(MediaError) as info:
        load_identity(tmp_path, "ghost", AudioConfig())
    assert "no usable clips" in str(info.value) and "ghost" in str(info.value)


def test_identity_with_only_bad_clips_raises_and_reports(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "zero.mp4").write_bytes(b"")
    report = LoadReport(warn=lambda _: None)
    with pytest.raises(MediaError, match="no usable clips"):
        load_identity(tmp_path, "bad", AudioConfig(), report=report)
    assert report.summary() == "kept 0 clips, skipped 1: 1 empty file"
    with pytest.raises(MediaError) as info:
        load_identity(tmp_path, "bad", AudioConfig(), report=LoadReport(warn=lambda _: None))
    report.add_skip(info.value.path, info.value.reason)  # how callers record a whole unusable identity
    assert report.summary() == "kept 0 clips, skipped 2: 1 empty file, 1 unusable identity"


def test_window_starts():
    assert window_starts(10, 4).tolist() == list(range(7))
    assert window_starts(10, 4, stride=3).tolist() == [0, 3, 6]
    assert window_starts(3, 4).size == 0
    with pytest.raises(ValueError):
        window_starts(10, 0)
