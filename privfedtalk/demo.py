"""`make demo`: the embedded default end to end (synth, pretrain, federate, evaluate, generate)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from privfedtalk.config import load_config
from privfedtalk.federated.store import ClientStore, RunFolder

log = logging.getLogger("privfedtalk")

# The demo's sizes: 64x64 frames, 56 identities (48 public for the backbone, 8 private clients).
FULL = {
    # 48 public identities (2 clips each) give a backbone that generalizes to unseen faces; the
    # 8 private identities (4 clips each: 3 to train, 1 held out) are the clients.
    "synth": {
        "identities": 56,
        "clips": 2,
        "seconds": 3.0,
        "size": 64,
        "public_fraction": 48 / 56,
        "private_clips": 4,
    },
    "pretrain": ["model.vae.steps=800", "model.vae.batch_size=8", "model.unet.steps=1500"],
    "federated": [
        "federated.rounds=6",
        "federated.clients_per_round=4",
        "federated.local_steps=15",
        "federated.eval_every=0",
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
    from privfedtalk.data.corpus import split_heldout
    from privfedtalk.data.media import write_video
    from privfedtalk.data.synthetic import synthesize_corpus
    from privfedtalk.evaluate import evaluate_clips, load_eval_clips
    from privfedtalk.federated.models import load_personalized_model
    from privfedtalk.federated.simulation import train
    from privfedtalk.model.generator import TalkingHeadGenerator
    from privfedtalk.model.identity import IdentityEncoder
    from privfedtalk.pretrain import pretrain

    preset = QUICK if quick else FULL
    out = out.resolve()  # run folders record absolute paths, so they can be read from anywhere
    out.mkdir(parents=True, exist_ok=True)
    times = {}
    started = time.perf_counter()
    data = out / "data"
    if not (data / "split.json").is_file():
        synthesize_corpus(data, seed=0, **preset["synth"])
    times["synth_s"] = time.perf_counter() - started

    common = [f"data.root={data}", f"data.size={preset['synth']['size']}"]
    checkpoint = out / "pretrain" / "checkpoint"
    t0 = time.perf_counter()
    if not (checkpoint / "generator.json").is_file():
        pretrain(load_config(None, common + preset["pretrain"] + [f"out_dir={out / 'pretrain'}"]))
    times["pretrain_s"] = time.perf_counter() - t0

    # Held-out identities: the private identities, never seen in pretraining.
    t0 = time.perf_counter()
    model = TalkingHeadGenerator.from_pretrained(checkpoint)
    encoder = IdentityEncoder.load(checkpoint)
    by_identity = {}
    for clip in load_eval_clips(data, None, model.spec):
        by_identity.setdefault(clip.identity, []).append(clip)
    # The held-out clips of each private identity (split_heldout: the ones no client trains on).
    heldout = [c for clips in by_identity.values() for c in split_heldout(clips, 1)[1]]
    clips = heldout[: preset["eval_clips"]]
    backbone = evaluate_clips(model, encoder, clips, seed=0)
    backbone.pop("per_clip")
    times["evaluate_s"] = time.perf_counter() - t0

    # The method: PrivFedTalk (ISFA + TDC + secure aggregation + DP) over the private clients.
    t0 = time.perf_counter()
    run_dir = out / "privfedtalk_run"
    fed_cfg = load_config(
        "privfedtalk",  # the method config shipped in the package
        common
        + preset["pretrain"]
        + preset["federated"]
        + [f"federated.checkpoint={checkpoint}", f"out_dir={run_dir}"],
    )
    if (run_dir / "state.json").is_file():
        train(resume=str(run_dir))
    else:
        train(fed_cfg)
    times["federated_s"] = time.perf_counter() - t0
    records = RunFolder(run_dir).records()
    last = records[-1]

    # Sample videos: a held-out identity driven by its own held-out audio, with the audio muxed in;
    # from the backbone, and from the client owning that identity (global shared + identity adapter).
    sample = out / "sample.mp4"
    first = clips[0]
    video = model.generate(first.frames[0], first.features, seed=0)
    write_video(sample, video, first.fps, audio=first.audio, sample_rate=first.sample_rate)
    owner = client_of_identity(run_dir, first.identity)
    if owner is not None:
        personalized, _ = load_personalized_model(run_dir, owner)
        video = personalized.generate(first.frames[0], first.features, seed=0)
        write_video(
            out / "sample_personalized.mp4",
            video,
            first.fps,
            audio=first.audio,
            sample_rate=first.sample_rate,
        )
    times["total_s"] = time.perf_counter() - started

    summary = {
        "heldout_identities_backbone": {
            k: backbone[k]
            for k in (
                "clips",
                "psnr",
                "ssim",
                "sync_corr",
                "control_silence_sync_corr",
                "control_other_audio_sync_corr",
                "id_sim",
                "jitter",
            )
            if k in backbone
        },
        "privfedtalk_run": {
            "rounds": len(records),
            "rounds_skipped": sum("skipped" in r for r in records),
            "epsilon_observer": last.get("epsilon_observer"),
            "epsilon_server_worst": last.get("epsilon_server_worst"),
            "epsilon_server_median": last.get("epsilon_server_median"),
            "delta": fed_cfg.privacy.delta,
            "guarantee": last.get("guarantee"),
            # The last round that aggregated (a skipped round has no loss).
            "final_released_norm": last.get("released_norm"),
        },
        "sample_video": str(sample),
        "seconds": {k: round(v, 1) for k, v in times.items()},
    }
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return summary
