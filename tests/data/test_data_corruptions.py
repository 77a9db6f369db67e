"""Corruption scenarios of the synthetic corpus: recorded ground truth, clean clips untouched, and each
corruption visible to a detector-free check (audio/mouth lag, similarity to the reference, frame differences).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from privfedtalk.cli import main
from privfedtalk.data.audio import frame_loudness
from privfedtalk.data.media import load_media
from privfedtalk.data.synthetic import Corruption, synthesize_corpus
from privfedtalk.errors import ConfigError
from privfedtalk.metrics.sync import lag_correlation
from privfedtalk.metrics.video import mouth_opening

LAG = 2  # the private mouth lag both corpora share, so corruptions are tested on top of it
# 6 identities (1 public, 5 private) x 2 clips x 2 s at 32x32; clip01 is each identity's held-out clip.
CORPUS = dict(
    identities=6, clips=2, seconds=2.0, size=32, seed=3, public_fraction=1 / 6, private_mouth_lag=LAG
)
CHANGED_LEVELS = 40  # a pixel differs from the reference if a channel moved by more than this (of 255)
CHANGED_SHARE = 0.18  # ... and a frame is unlike the reference if more than this share of pixels did


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """(clean, corrupted) manifests: same seed; 4 of the 5 private identities corrupted, one kind each."""
    root = tmp_path_factory.mktemp("corruptions")
    clean = synthesize_corpus(root / "clean", **CORPUS)
    corrupted = synthesize_corpus(
        root / "corrupted", **CORPUS, corruption=[k.value for k in Corruption], corrupt_fraction=0.8
    )
    return clean, corrupted


def _clip(root, ident: str, clip: str):
    stem = Path(root) / ident / clip
    return load_media(stem.with_suffix(".mp4")), json.loads(stem.with_suffix(".json").read_text())


def _damaged(manifest, kind: Corruption) -> str:
    """The one identity corrupted with `kind`."""
    (ident,) = [i for i, e in manifest["corruption"]["identities"].items() if e["kind"] == kind.value]
    return ident


def _unlike_reference(frames: np.ndarray) -> np.ndarray:
    """Indices of frames whose pixels differ from frame 0 (the clip's reference) over a large area."""
    diff = np.abs(frames.astype(np.int16) - frames[:1].astype(np.int16)).max(axis=-1)
    return np.flatnonzero((diff > CHANGED_LEVELS).mean(axis=(1, 2)) > CHANGED_SHARE)


def _frame_difference_energy(frames: np.ndarray) -> float:
    """Mean absolute change between consecutive frames, in levels of 255."""
    return float(np.abs(np.diff(frames.astype(np.float32), axis=0)).mean())


def test_ground_truth_records_corruption(corpora):
    clean, corrupted = corpora
    root = Path(corrupted["root"])
    split = json.loads((root / "split.json").read_text())
    assert "corruption" not in json.loads((Path(clean["root"]) / "split.json").read_text())
    record = split["corruption"]
    assert record == corrupted["corruption"]
    assert record["kinds"] == ["audio_shift", "identity", "occlusion", "temporal"]
    assert record["fraction"] == 0.8 and record["heldout_clips"] == 1
    assert set(record["parameters"]) == set(record["kinds"])
    assert record["parameters"]["audio_shift"] == {"min_frames": 3, "max_frames": 6}
    damaged = record["identities"]
    assert len(damaged) == 4 and set(damaged) < set(split["private"])  # 5 private, round(0.8 * 5) = 4
    assert sorted(e["kind"] for e in damaged.values()) == sorted(record["kinds"])  # each kind once
    assert all(e["clips"] == ["clip00"] for e in damaged.values())  # clip01 is held out
    for ident, entry in damaged.items():
        truth = _clip(root, ident, "clip00")[1]["corruption"]
        assert truth["kind"] == entry["kind"]
        assert "corruption" not in _clip(root, ident, "clip01")[1]
    shift = _clip(root, _damaged(corrupted, Corruption.AUDIO_SHIFT), "clip00")[1]["corruption"]
    assert 3 <= abs(shift["audio_offset_frames"]) <= 6
    assert shift["audio_offset_samples"] == shift["audio_offset_frames"] * 640  # 16 kHz / 25 fps
    temporal = _clip(root, _damaged(corrupted, Corruption.TEMPORAL), "clip00")[1]
    jitter = np.asarray(temporal["corruption"]["head_jitter"])
    gain = np.asarray(temporal["corruption"]["brightness_gain"])
    assert jitter.shape == (50, 2) and gain.shape == (50,)
    assert np.abs(jitter).max() <= 1.0 and np.all((gain >= 0.8) & (gain <= 1.2))  # +-1 px at 32x32
    assert np.std(jitter) > 0.3 and np.std(gain) > 0.05  # independent per frame, not a constant shift


def test_only_chosen_training_clips_change(corpora):
    clean, corrupted = corpora
    damaged = corrupted["corruption"]["identities"]
    assert corrupted["clips"] == clean["clips"]
    for ident, paths in clean["clips"].items():
        for path in paths:
            clip = Path(path).stem
            for suffix in (".mp4", ".json"):
                a = (Path(clean["root"]) / path).with_suffix(suffix).read_bytes()
                b = (Path(corrupted["root"]) / path).with_suffix(suffix).read_bytes()
                assert (a != b) == (clip in damaged.get(ident, {}).get("clips", [])), (path, suffix)
    split = json.loads((Path(corrupted["root"]) / "split.json").read_text())
    assert {k: split[k] for k in ("public", "private")} == clean["split"] == corrupted["split"]


def test_choice_is_reproducible_nested_and_private_only(tmp_path):
    common = dict(
        identities=5, clips=1, seconds=0.4, size=32, seed=5, public_fraction=0.4, corruption="temporal"
    )
    half = synthesize_corpus(tmp_path / "half", **common, corrupt_fraction=0.5)
    again = synthesize_corpus(tmp_path / "again", **common, corrupt_fraction=0.5)
    full = synthesize_corpus(tmp_path / "full", **common, corrupt_fraction=1.0)
    chosen = set(half["corruption"]["identities"])
    assert chosen == set(again["corruption"]["identities"])
    assert len(chosen) == 2 and chosen < set(full["corruption"]["identities"])  # round(0.5 * 3) = 2
    assert set(full["corruption"]["identities"]) == set(full["split"]["private"])  # public never
    # A single clip is a training clip (nothing to hold out), so it is the one corrupted.
    assert all(e["clips"] == ["clip00"] for e in full["corruption"]["identities"].values())
    tiny = synthesize_corpus(tmp_path / "tiny", **common, corrupt_fraction=0.01)
    assert len(tiny["corruption"]["identities"]) == 1  # a positive fraction corrupts at least one


def test_audio_shift_moves_the_audio_mouth_lag(corpora):
    clean, corrupted = corpora
    ident = _damaged(corrupted, Corruption.AUDIO_SHIFT)
    media, truth = _clip(corrupted["root"], ident, "clip00")
    offset = truth["corruption"]["audio_offset_frames"]

    def best_lags(media, truth):
        loud = frame_loudness(media.audio, media.sample_rate, media.fps, media.num_frames)
        measured = mouth_opening(media.frames, truth["mouth_box"])
        return [
            lag_correlation(mouth, loud, max_lag=10)["best_lag"] for mouth in (truth["mouth_open"], measured)
        ]

    # Positive lag = the mouth moves after the sound; audio delayed by `offset` takes that much lag away.
    assert best_lags(media, truth) == [LAG - offset] * 2
    assert best_lags(*_clip(clean["root"], ident, "clip00")) == [LAG] * 2
    assert best_lags(*_clip(corrupted["root"], ident, "clip01")) == [LAG] * 2  # held out: clean
    assert truth["mouth_open"] == _clip(clean["root"], ident, "clip00")[1]["mouth_open"]  # video unchanged


@pytest.mark.parametrize("kind", [Corruption.IDENTITY, Corruption.OCCLUSION])
def test_identity_and_occlusion_break_similarity_to_the_reference(corpora, kind):
    clean, corrupted = corpora
    ident = _damaged(corrupted, kind)
    media, truth = _clip(corrupted["root"], ident, "clip00")
    replaced = truth["corruption"]["frames"]
    assert len(replaced) == 25 and 0 not in replaced  # half of 50 frames, one block, reference kept
    assert replaced == list(range(replaced[0], replaced[0] + 25))
    np.testing.assert_array_equal(_unlike_reference(media.frames), replaced)
    assert _unlike_reference(_clip(clean["root"], ident, "clip00")[0].frames).size == 0
    assert _unlike_reference(_clip(corrupted["root"], ident, "clip01")[0].frames).size == 0
    if kind is Corruption.IDENTITY:
        source = truth["corruption"]["source_identity"]
        assert source != ident and source in corrupted["identities"]


def test_temporal_raises_frame_difference_energy(corpora):
    clean, corrupted = corpora
    ident = _damaged(corrupted, Corruption.TEMPORAL)
    noisy = _frame_difference_energy(_clip(corrupted["root"], ident, "clip00")[0].frames)
    smooth = _frame_difference_energy(_clip(clean["root"], ident, "clip00")[0].frames)
    held_out = _frame_difference_energy(_clip(corrupted["root"], ident, "clip01")[0].frames)
    assert smooth < 3.0 and held_out < 3.0 and noisy > 4 * max(smooth, held_out)


def test_cli_passes_corruption_options(tmp_path, monkeypatch):
    import privfedtalk.data.synthetic as synthetic

    seen = {}

    def fake(out_dir, **kwargs):
        seen.update(kwargs)
        return {"identities": [], "split": {"public": [], "private": []}, "corruption": None}

    monkeypatch.setattr(synthetic, "synthesize_corpus", fake)
    argv = ["synth", "--out", str(tmp_path), "--corruption", "identity", "temporal"]
    assert main(argv + ["--corrupt-fraction", "0.5", "--heldout-clips", "2"]) == 0
    assert seen["corruption"] == ["identity", "temporal"]
    assert seen["corrupt_fraction"] == 0.5 and seen["heldout_clips"] == 2
    assert main(["synth", "--out", str(tmp_path)]) == 0
    assert seen["corruption"] is None and seen["corrupt_fraction"] == 0.0 and seen["heldout_clips"] == 1


def test_cli_help_names_every_corruption(capsys):
    with pytest.raises(SystemExit):
        main(["synth", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(kind.value in text for kind in Corruption)


def test_cli_writes_a_corrupted_corpus(tmp_path):
    out = tmp_path / "data"
    argv = ["synth", "--out", str(out), "--identities", "3", "--clips", "2", "--seconds", "0.4"]
    assert main(argv + ["--size", "32", "--corruption", "audio_shift", "--corrupt-fraction", "1"]) == 0
    split = json.loads((out / "split.json").read_text())
    assert split["private"] == ["id002"]  # 3 identities: 2 public, 1 private
    assert split["corruption"]["kinds"] == ["audio_shift"]
    assert split["corruption"]["identities"] == {"id002": {"kind": "audio_shift", "clips": ["clip00"]}}


@pytest.mark.parametrize(
    "options, message",
    [
        (["--corruption", "blur", "--corrupt-fraction", "0.5"], "unknown corruption 'blur' (choose from"),
        (["--corruption", "temporal", "--corrupt-fraction", "1.5"], "must be in [0, 1], got 1.5"),
        (["--corruption", "temporal", "--corrupt-fraction", "-0.1"], "must be in [0, 1], got -0.1"),
        (["--corruption", "temporal", "--corrupt-fraction", "nan"], "must be in [0, 1], got nan"),
        (["--corrupt-fraction", "0.5"], "needs a corruption kind"),
        (["--corruption", "temporal", "--heldout-clips", "-1"], "heldout_clips must be >= 0"),
    ],
)
def test_cli_bad_corruption_is_one_line_error(tmp_path, capsys, options, message):
    out = tmp_path / "data"
    assert main(["synth", "--out", str(out)] + options) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("privfedtalk: error: ") and message in err
    assert not out.exists()  # checked before anything is written


def test_library_rejects_bad_corruption(tmp_path):
    with pytest.raises(ConfigError, match="unknown corruption 'blur'"):
        synthesize_corpus(tmp_path, corruption=["temporal", "blur"], corrupt_fraction=0.5)
    with pytest.raises(ConfigError, match=r"in \[0, 1\]"):
        synthesize_corpus(tmp_path, corruption=Corruption.IDENTITY, corrupt_fraction=2.0)
