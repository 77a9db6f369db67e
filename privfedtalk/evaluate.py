"""Held-out evaluation: generate each clip from its first frame and its own audio, then score it."""

from __future__ import annotations

import math

import numpy as np

from privfedtalk.data.audio import frame_audio_features
from privfedtalk.metrics import (
    crop_box,
    frechet_distance,
    lip_sync_scores,
    mouth_opening,
    psnr,
    ssim,
    temporal_jitter,
)
from privfedtalk.metrics.faces import faces_available, score_real_clip
from privfedtalk.model.identity import identity_features, identity_similarity


def clip_features(clip, audio, spec) -> np.ndarray:
    """Audio features for `audio` aligned to `clip`'s frames, with the generator's audio settings."""
    return frame_audio_features(
        audio,
        spec.sample_rate,
        clip.fps,
        len(clip.frames),
        n_mels=spec.n_mels,
        hop_ms=spec.hop_ms,
        window_ms=spec.window_ms,
    )


def score_clip(generated: np.ndarray, clip, encoder) -> dict:
    """Metrics of one generated clip (frames, H, W, 3) uint8 against its ground truth."""
    scores = {
        "psnr": psnr(generated, clip.frames),
        "ssim": ssim(generated, clip.frames),
        "jitter": temporal_jitter(generated, clip.frames),
        "id_sim": identity_similarity(encoder, generated, clip.frames[0]),
    }
    if clip.truth is not None and "mouth_box" in clip.truth:
        box = np.asarray(clip.truth["mouth_box"]).reshape(-1)[:4]
        opening = mouth_opening(generated, box)
        sync = lip_sync_scores(opening, np.asarray(clip.truth["mouth_open"]), clip.loudness)
        scores.update(sync)
        scores["mouth_psnr"] = psnr(crop_box(generated, box), crop_box(clip.frames, box))
        scores["mouth_ssim"] = ssim(crop_box(generated, box), crop_box(clip.frames, box))
    elif faces_available():
        # Real recordings have no drawn mouth box: landmark-based lip sync, LMD and dlib identity.
        scores.update(score_real_clip(generated, clip))
    return scores


def metric_family(clips) -> str:
    """Which mouth/identity measurements were used, so reports can say so."""
    if all(c.truth is not None and "mouth_box" in c.truth for c in clips):
        return "synthetic ground truth (dark-pixel mouth area in the drawn mouth box)"
    if faces_available():
        return "real-face metrics (dlib 68-point landmarks, 128-d descriptor similarity)"
    return "no mouth metrics: clips have no ground truth and the [faces] extra is not installed"


def mean_scores(rows: list[dict]) -> dict:
    keys = sorted({k for row in rows for k in row})
    out = {}
    for key in keys:
        values = [row[key] for row in rows if key in row and row[key] is not None]
        finite = [v for v in values if math.isfinite(v)]
        out[key] = float(np.mean(finite)) if finite else (math.inf if values else None)
    return out


def evaluate_clips(
    model, encoder, clips, seed: int = 0, controls: bool = True, progress=None, **generate_kwargs
) -> dict:
    """Generate every clip from its first frame and own audio; optionally the two audio controls.

    generate_kwargs go to model.generate (e.g. steps=10, anchor=False).
    Controls prove the audio drives the mouth: the same clips driven by silence, and by another
    clip's audio (the next clip in the list, tiled or cut to length).
    """
    rows, silent_rows, swapped_rows = [], [], []
    real_features, fake_features = [], []
    for index, clip in enumerate(clips):
        generated = model.generate(clip.frames[0], clip.features, seed=seed, **generate_kwargs)
        rows.append(score_clip(generated, clip, encoder))
        real_features.append(identity_features(encoder, clip.frames))
        fake_features.append(identity_features(encoder, generated))
        if controls and clip.truth is not None:
            silence = np.zeros_like(clip.audio)
            gen_silent = model.generate(
                clip.frames[0], clip_features(clip, silence, model.spec), seed=seed, **generate_kwargs
            )
            silent_rows.append(score_clip(gen_silent, clip, encoder))
            if len(clips) > 1:
                other = clips[(index + 1) % len(clips)].audio
                other = np.resize(other, clip.audio.shape)  # tile or cut to this clip's length
                gen_swapped = model.generate(
                    clip.frames[0], clip_features(clip, other, model.spec), seed=seed
                )
                swapped_rows.append(score_clip(gen_swapped, clip, encoder))
        if progress is not None:
            progress()
    result = mean_scores(rows)
    result["clips"] = len(rows)
    result["metric_family"] = metric_family(clips)
    result["fd_identity_features"] = frechet_distance(
        np.concatenate(real_features), np.concatenate(fake_features)
    )
    if silent_rows:
        result["control_silence_sync_corr"] = mean_scores(silent_rows).get("sync_corr")
    if swapped_rows:
        result["control_other_audio_sync_corr"] = mean_scores(swapped_rows).get("sync_corr")
    result["per_clip"] = [{"identity": c.identity, "clip": c.name, **r} for c, r in zip(clips, rows)]
    return result
