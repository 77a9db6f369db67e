"""`make demo`: the embedded default end to end (synth, pretrain, federate, evaluate, generate)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from privfedtalk.config import load_config
from privfedtalk.federated.store import ClientStore, RunFolder

log = logging.getLogger("privfedtalk")

# The demo's sizes: 64x64 frames, 104 identities (96 public for the backbone, 8 private clients).
FULL = {
    # 96 public identities (1 clip each) give a backbone that generalizes to unseen faces; the
    # 8 private identities id048-id055 (4 clips each: 3 to train, 1 held out) are the clients. The
    # same public frames as 48 faces x 2 clips, but with 48 faces the generated mouth of one or two
    # unseen faces never opened at some seeds (lip-sync 0 on those clips; docs/results.md,
    # experiments/backbone_recipe.py): with 96, no face failed at three seeds.
    "synth": {
        "identities": 104,
        "clips": 1,
        "seconds": 3.0,
        "size": 64,
        "public_fraction": 96 / 104,
        "private_clips": 4,
        "private_start": 48,
    },
    # Half the pretraining compute of the recipe before 2026-12-03 (VAE 800 x 8 frames, U-Net 1500 x 4
    # windows of 4 frames; docs/results.md): the VAE sees 4 frames a step, and the U-Net 900 steps of 16
    # single-frame windows. The U-Net denoises each frame on its own and pretraining has no TDC term, so
    # 16 one-frame windows are the same frames with 16 timesteps a step instead of 4. Sampling with
    # 5 DDIM steps: on this backbone 10 / 6 / 5 steps gave lip-sync 0.954 / 0.957 / 0.958.
    "pretrain": [
        "model.vae.steps=800",
        "model.vae.batch_size=4",
        "model.unet.steps=900",
        "model.unet.window=1",
        "model.unet.batch_windows=16",
        "model.diffusion.sample_steps=5",
    ],
    "federated": [
        "federated.rounds=6",
        "federated.clients_per_round=4",
        "federated.local_steps=15",
        "federated.eval_every=0",
        "federated.client_batch=8",  # a round's clients in one grouped pass (federated/batched.py)
    ],
    "eval_clips": 8,
}
# Smoke-test sizes (tests and `privfedtalk demo --quick`): seconds, not minutes; numbers meaningless.
QUICK = {
    "synth": {"identities": 4, "clips": 2, "seconds": 1.0, "size": 32},
    "pretrain": [
        "model.vae.steps=3",
        "model.vae.batch_size=4",
        "model.vae.block_out_channels=[16,32]",
        "model.unet.steps=3",
        "model.unet.block_out_channels=[32,64]",
        "model.unet.batch_windows=2",
        "model.identity_steps=3",
        "model.diffusion.sample_steps=2",
        "data.size=32",
    ],
    "federated": [
        "federated.rounds=2",
        "federated.clients_per_round=2",
        "federated.local_steps=2",
        "federated.eval_every=0",
        "federated.batch_windows=2",
        "federated.signal_windows=1",
    ],
    "eval_clips": 2,
}


def client_of_identity(run_dir: Path, identity: str) -> str | None:
    """The client whose slot holds an identity adapter trained on `identity`, if any."""

    store = ClientStore(run_dir)
    for slot in sorted(store.root.glob("client*")):
        cached = store.load_latents(slot.name)
        if (
            cached
            and store.has_identity(slot.name)
            and any(c["identity"] == identity for c in cached[1]["train"])
        ):
            return slot.name
    return None


def run_demo(out: Path, quick: bool = False) -> dict:
    """Corpus -> backbone -> backbone on held-out identities -> PrivFedTalk run -> sample videos.

    Every phase reuses what an earlier (interrupted) demo in `out` already finished.
    """
    preset = QUICK if quick else FULL
    out = out.resolve()  # run folders record absolute paths, so they can be read from anywhere
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    started = time.perf_counter()
    data = _timed(times, "synth_s", _corpus, out, preset)
    checkpoint = _timed(times, "pretrain_s", _backbone, out, data, preset)
    model, encoder, clips, backbone = _timed(
        times, "evaluate_s", _evaluate_backbone, data, checkpoint, preset
    )
    fed_cfg = _timed(times, "federated_s", _federate, out, data, checkpoint, preset)
    sample = _timed(times, "samples_s", _samples, out, model, clips[0], fed_cfg.out_dir)
    times["total_s"] = time.perf_counter() - started
    summary = _summary(backbone, RunFolder(fed_cfg.out_dir).records(), fed_cfg, sample, times)
    phases = checkpoint.parent / "timings.json"  # written by pretrain: VAE, identity, latents, U-Net
    if phases.is_file():
        summary["pretrain_seconds"] = json.loads(phases.read_text())
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return summary


def _timed(times: dict, key: str, phase, *args):
    t0 = time.perf_counter()
    result = phase(*args)
    times[key] = time.perf_counter() - t0
    return result


def _common(data: Path, preset: dict) -> list[str]:
    return [f"data.root={data}", f"data.size={preset['synth']['size']}"]


def _corpus(out: Path, preset: dict) -> Path:
    from privfedtalk.data.synthetic import synthesize_corpus

    data = out / "data"
    if not (data / "split.json").is_file():
        synthesize_corpus(data, seed=0, **preset["synth"])
    return data


def _backbone(out: Path, data: Path, preset: dict) -> Path:
    from privfedtalk.pretrain import pretrain

    checkpoint = out / "pretrain" / "checkpoint"
    if not (checkpoint / "generator.json").is_file():
        pretrain(pretrain_config(data, preset, out / "pretrain"))
    return checkpoint


def pretrain_config(data: Path, preset: dict, out_dir: Path, extra: list[str] = ()):
    """The demo's backbone-pretraining config for `data`, written to out_dir; `extra` overrides last."""
    return load_config(None, _common(data, preset) + preset["pretrain"] + [f"out_dir={out_dir}", *extra])


def _evaluate_backbone(data: Path, checkpoint: Path, preset: dict):
    """The backbone on the held-out clips of the private identities (never seen in pretraining, and
    the clips no client trains on: split_heldout with the config's data.heldout_clips)."""
    from privfedtalk.evaluate import evaluate_clips
    from privfedtalk.model.generator import TalkingHeadGenerator
    from privfedtalk.model.identity import IdentityEncoder

    model = TalkingHeadGenerator.from_pretrained(checkpoint)
    encoder = IdentityEncoder.load(checkpoint)
    clips = heldout_eval_clips(data, model.spec, preset)
    backbone = evaluate_clips(model, encoder, clips, seed=0)
    backbone.pop("per_clip")
    return model, encoder, clips, backbone


def heldout_eval_clips(data: Path, spec, preset: dict = FULL) -> list:
    """The demo's evaluation clips: each private identity's held-out clips, the first
    preset["eval_clips"] of them."""
    from privfedtalk.data.corpus import split_heldout
    from privfedtalk.evaluate import load_eval_clips

    heldout_count = load_config(None, _common(data, preset)).data.heldout_clips
    by_identity: dict[str, list] = {}
    for clip in load_eval_clips(data, None, spec):
        by_identity.setdefault(clip.identity, []).append(clip)
    heldout = [c for clips in by_identity.values() for c in split_heldout(clips, heldout_count)[1]]
    return heldout[: preset["eval_clips"]]


def _federate(out: Path, data: Path, checkpoint: Path, preset: dict):
    """The method: PrivFedTalk (ISFA + TDC + secure aggregation + DP) over the private clients."""
    from privfedtalk.federated.simulation import train

    run_dir = out / "privfedtalk_run"
    fed_cfg = load_config(
        "privfedtalk",  # the method config shipped in the package
        _common(data, preset)
        + preset["pretrain"]
        + preset["federated"]
        + [f"federated.checkpoint={checkpoint}", f"out_dir={run_dir}"],
    )
    if (run_dir / "state.json").is_file():
        train(resume=str(run_dir))
    else:
        train(fed_cfg)
    return fed_cfg


def _samples(out: Path, model, clip, run_dir) -> Path:
    """A held-out identity driven by its own held-out audio (muxed in): from the backbone, and from the
    client owning that identity (global shared + its identity adapter); and the picture of both."""
    from privfedtalk.data.media import write_video
    from privfedtalk.evaluate import clip_features
    from privfedtalk.federated.models import load_personalized_model
    from privfedtalk.figures import write_side_by_side

    sample = out / "sample.mp4"
    silence = clip_features(clip, np.zeros_like(clip.audio), model.spec)
    video, silent = model.generate_many(clip.frames[0], [clip.features, silence], seed=0)
    write_video(sample, video, clip.fps, audio=clip.audio, sample_rate=clip.sample_rate)
    videos = {"backbone": video}
    owner = client_of_identity(Path(run_dir), clip.identity)
    if owner is not None:
        personalized, _ = load_personalized_model(run_dir, owner)
        videos["personalized"] = personalized.generate(clip.frames[0], clip.features, seed=0)
        write_video(
            out / "sample_personalized.mp4",
            videos["personalized"],
            clip.fps,
            audio=clip.audio,
            sample_rate=clip.sample_rate,
        )
    videos["backbone, silent audio"] = silent
    write_side_by_side(out / "side_by_side.png", clip, videos)
    return sample


BACKBONE_KEYS = (
    "clips",
    "psnr",
    "ssim",
    "sync_corr",
    "control_silence_sync_corr",
    "control_other_audio_sync_corr",
    "id_sim",
    "jitter",
)


def _summary(backbone: dict, records: list, fed_cfg, sample: Path, times: dict) -> dict:
    last = records[-1]
    return {
        "heldout_identities_backbone": {k: backbone[k] for k in BACKBONE_KEYS if k in backbone},
        "privfedtalk_run": {
            "rounds": len(records),
            "rounds_skipped": sum("skipped" in r for r in records),
            "epsilon_observer": last.get("epsilon_observer"),
            "epsilon_server_worst": last.get("epsilon_server_worst"),
            "epsilon_server_median": last.get("epsilon_server_median"),
            "delta": fed_cfg.privacy.delta,
            "guarantee": last.get("guarantee"),
            "final_released_norm": last.get("released_norm"),
        },
        "sample_video": str(sample),
        "side_by_side": str(sample.parent / "side_by_side.png"),
        "seconds": {k: round(v, 1) for k, v in times.items()},
    }
