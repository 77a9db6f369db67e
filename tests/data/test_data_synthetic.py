"""Synthetic corpus: determinism, identity stability, split, and mouth/audio ground truth quality."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from privfedtalk.data.audio import frame_loudness
from privfedtalk.data.media import load_media
from privfedtalk.data.synthetic import synthesize_corpus


def _luminance(frames: np.ndarray) -> np.ndarray:
    f = frames.astype(np.float32) / 255.0
    return 0.299 * f[..., 0] + 0.587 * f[..., 1] + 0.114 * f[..., 2]


def _clip(root, ident="id000", clip="clip00"):
    stem = Path(root) / ident / clip
    return load_media(stem.with_suffix(".mp4")), json.loads(stem.with_suffix(".json").read_text())


def test_layout_and_sidecar(tiny_corpus):
    root = Path(tiny_corpus["root"])
    media, truth = _clip(root)
    assert media.frames.shape == (50, 64, 64, 3) and media.fps == 25.0 and media.audio.size == 32000
    assert truth["identity"] == "id000" and truth["fps"] == 25.0 and truth["size"] == 64
    assert len(truth["mouth_open"]) == len(truth["blink"]) == len(truth["head_offset"]) == 50
    assert all(0.0 <= m <= 1.0 for m in truth["mouth_open"]) and max(truth["mouth_open"]) == 1.0
    x0, y0, x1, y1 = truth["mouth_box"]
    assert all(isinstance(v, int) for v in truth["mouth_box"]) and 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
    assert np.abs(np.asarray(truth["head_offset"])).max() <= 1.0


def test_deterministic_and_seed_dependent(tmp_path):
    kwargs = dict(identities=1, clips=1, seconds=1.0, size=32)
    synthesize_corpus(tmp_path / "a", seed=3, **kwargs)
    synthesize_corpus(tmp_path / "b", seed=3, **kwargs)
    synthesize_corpus(tmp_path / "c", seed=4, **kwargs)
    ja, jb, jc = ((tmp_path / d / "id000" / "clip00.json").read_bytes() for d in "abc")
    assert ja == jb and ja != jc
    ma, _ = _clip(tmp_path / "a")
    mb, _ = _clip(tmp_path / "b")
    mc, _ = _clip(tmp_path / "c")
    assert np.array_equal(ma.frames, mb.frames) and np.array_equal(ma.audio, mb.audio)
    assert not np.array_equal(ma.frames, mc.frames)


def test_identity_independent_of_count(tmp_path):
    kwargs = dict(clips=1, seconds=0.6, size=32, seed=1)
    synthesize_corpus(tmp_path / "two", identities=2, **kwargs)
    synthesize_corpus(tmp_path / "three", identities=3, **kwargs)
    for ident in ("id000", "id001"):
        a = (tmp_path / "two" / ident / "clip00.json").read_bytes()
        b = (tmp_path / "three" / ident / "clip00.json").read_bytes()
        assert a == b
        assert np.array_equal(
            _clip(tmp_path / "two", ident)[0].frames, _clip(tmp_path / "three", ident)[0].frames
        )
    split = json.loads((tmp_path / "three" / "split.json").read_text())
    assert split == {"public": ["id000", "id001"], "private": ["id002"]}


def test_split_disjoint_and_identities_differ(tiny_corpus):
    root = Path(tiny_corpus["root"])
    split = json.loads((root / "split.json").read_text())
    assert split == tiny_corpus["split"] == {"public": ["id000"], "private": ["id001"]}
    assert not set(split["public"]) & set(split["private"])
    a, _ = _clip(root, "id000")
    b, _ = _clip(root, "id001")
    assert np.abs(a.frames[0].astype(np.float32) - b.frames[0]).mean() > 20.0  # clearly different people


def test_mouth_metric_tracks_mouth_open(tiny_corpus):
    for ident in tiny_corpus["identities"]:
        media, truth = _clip(tiny_corpus["root"], ident)
        x0, y0, x1, y1 = truth["mouth_box"]
        lum = _luminance(media.frames[:, y0:y1, x0:x1])
        dark = (lum < 0.25).mean(axis=(1, 2))
        mouth = np.asarray(truth["mouth_open"])
        assert np.corrcoef(dark, mouth)[0, 1] > 0.9
        assert dark[mouth < 0.02].max() == 0.0  # closed mouth: no dark pixels at all
        assert np.percentile(lum[mouth < 0.02], 1) > 0.3  # skin and lips stay bright


def test_open_mouth_size_and_blink(tiny_corpus):
    media, truth = _clip(tiny_corpus["root"])
    x0, y0, x1, y1 = truth["mouth_box"]
    t = int(np.argmax(truth["mouth_open"]))
    dark = _luminance(media.frames[t, y0:y1, x0:x1]) < 0.25
    rows, cols = np.nonzero(dark)
    assert 10 <= cols.max() - cols.min() + 1 <= 18 and 5 <= rows.max() - rows.min() + 1 <= 10
    blink = np.asarray(truth["blink"])
    assert blink.max() == 1.0 and (blink > 0).sum() <= 6  # a 2 s clip holds one ~3-frame blink


def test_audio_is_speech_like_and_drives_mouth(tiny_corpus):
    media, truth = _clip(tiny_corpus["root"])
    mouth = np.asarray(truth["mouth_open"])
    assert 0.4 <= np.abs(media.audio).max() <= 0.6
    assert 0.1 <= (mouth == 0).mean() <= 0.5  # pauses between words
    loud = frame_loudness(media.audio, media.sample_rate, media.fps, media.num_frames)
    assert np.corrcoef(loud, mouth)[0, 1] > 0.9
    assert loud[mouth == 0].max() < 0.05


def test_private_mouth_lag_shifts_only_private_mouths(tmp_path):
    common = dict(identities=2, clips=1, seconds=2.0, size=32, seed=3, public_fraction=0.5)
    plain = synthesize_corpus(tmp_path / "plain", **common)
    lagged = synthesize_corpus(tmp_path / "lag", **common, private_mouth_lag=2)
    public, private = plain["split"]["public"][0], plain["split"]["private"][0]
    assert json.loads((tmp_path / "plain" / public / "clip00.json").read_text()) == json.loads(
        (tmp_path / "lag" / public / "clip00.json").read_text()
    )
    before = np.asarray(_clip(plain["root"], private)[1]["mouth_open"])
    media, truth = _clip(lagged["root"], private)
    after = np.asarray(truth["mouth_open"])
    np.testing.assert_array_equal(after[2:], before[:-2])  # frame t shows audio frame t - 2
    loud = frame_loudness(media.audio, media.sample_rate, media.fps, media.num_frames)
    lags = range(-4, 5)
    best = max(lags, key=lambda k: np.corrcoef(np.roll(loud, k)[4:-4], after[4:-4])[0, 1])
    assert best == 2  # the mouth trails the audio by two frames


def test_private_start_puts_the_clients_among_the_public_faces(tmp_path):
    import pytest

    from privfedtalk.errors import ConfigError

    common = dict(identities=5, clips=1, seconds=0.6, size=32, seed=1, public_fraction=0.6, private_clips=2)
    after = synthesize_corpus(tmp_path / "after", **common)
    among = synthesize_corpus(tmp_path / "among", **common, private_start=1, private_mouth_lag=1)
    assert after["split"] == {"public": ["id000", "id001", "id002"], "private": ["id003", "id004"]}
    assert among["split"] == {"public": ["id000", "id003", "id004"], "private": ["id001", "id002"]}
    assert json.loads((tmp_path / "among" / "split.json").read_text()) == among["split"]
    assert len(among["clips"]["id001"]) == 2 and len(among["clips"]["id003"]) == 1
    # A face is the same face wherever it sits; only the private ones' mouths lag their audio.
    for ident in ("id000", "id003"):
        same = (tmp_path / name / ident / "clip00.json" for name in ("after", "among"))
        public = [json.loads(path.read_text()) for path in same]
        assert public[0]["mouth_open"] == public[1]["mouth_open"]
    lagged = json.loads((tmp_path / "among" / "id001" / "clip00.json").read_text())["mouth_open"]
    plain = json.loads((tmp_path / "after" / "id001" / "clip00.json").read_text())["mouth_open"]
    assert lagged[1:] == plain[:-1] and lagged != plain
    with pytest.raises(ConfigError, match="private_start"):
        synthesize_corpus(tmp_path / "bad", **common, private_start=4)
