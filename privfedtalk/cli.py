"""`privfedtalk` command line: synth, prepare, pretrain, train, flower-sim, audit, export, generate, evaluate,
demo."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

from privfedtalk.errors import PrivFedTalkError

log = logging.getLogger("privfedtalk")


def cmd_synth(args) -> None:
    from privfedtalk.data.synthetic import synthesize_corpus

    info = synthesize_corpus(
        args.out,
        identities=args.identities,
        clips=args.clips,
        seconds=args.seconds,
        fps=args.fps,
        size=args.size,
        seed=args.seed,
        public_fraction=args.public_fraction,
        private_clips=args.private_clips,
        private_mouth_lag=args.private_mouth_lag,
        corruption=args.corruption,
        corrupt_fraction=args.corrupt_fraction,
        heldout_clips=args.heldout_clips,
    )
    split = info["split"]
    log.info(
        "wrote %d identities (%d public, %d private) to %s",
        len(info["identities"]),
        len(split["public"]),
        len(split["private"]),
        args.out,
    )
    if info["corruption"]:
        damaged = info["corruption"]["identities"]
        log.info(
            "corrupted the training clips of %d private identities: %s (recorded in split.json)",
            len(damaged),
            ", ".join(f"{ident} ({entry['kind']})" for ident, entry in damaged.items()) or "none",
        )


def cmd_pretrain(args) -> None:
    from privfedtalk.config import load_config
    from privfedtalk.pretrain import pretrain

    pretrain(load_config(args.config, args.overrides))


def cmd_train(args) -> None:
    from privfedtalk.config import load_config
    from privfedtalk.federated.simulation import train

    if args.resume:
        if args.config or args.overrides:
            raise PrivFedTalkError(
                "--resume RUN_DIR continues a run with its saved config; drop CONFIG/overrides"
            )
        run_dir = train(resume=args.resume)
    else:
        run_dir = train(load_config(args.config, args.overrides))
    log.info("run folder: %s (metrics.jsonl, tensorboard/, clients/)", run_dir)


def cmd_flower_sim(args) -> None:
    from privfedtalk.config import load_config
    from privfedtalk.federated.flower import require_flower

    require_flower()
    from privfedtalk.federated.flower.server_app import run_flower_simulation

    run_dir = run_flower_simulation(load_config(args.config, args.overrides), args.clients)
    log.info("run folder: %s (metrics.jsonl, tensorboard/, clients/)", run_dir)


def cmd_audit(args) -> None:
    from privfedtalk.config import load_config
    from privfedtalk.federated.canaries import audit_run

    if args.membership:
        from privfedtalk.privacy.membership_attack import membership_attack

        print(json.dumps(membership_attack(args.membership)))
        return
    if args.canaries < 2:
        raise PrivFedTalkError(f"--canaries {args.canaries}: the audit needs at least 2 (e.g. 200)")
    summary = audit_run(
        load_config(args.config, args.overrides), args.canaries, args.audit_seed, args.bootstrap
    )
    print(json.dumps(summary))


def cmd_export(args) -> None:
    from privfedtalk.export import export_model

    out = export_model(args.run, args.out, client=args.client, merge=args.merge)
    log.info("wrote %s (diffusers folders, peft adapters, model card README.md)", out)


def load_model(args):
    """Generator + identity encoder from a checkpoint, or from a federated run and one client.

    An exported model (--model) has no identity encoder: (generator, None).
    """
    from privfedtalk.model.generator import TalkingHeadGenerator
    from privfedtalk.model.identity import IdentityEncoder

    if getattr(args, "model", None):
        if args.run or args.checkpoint:
            raise PrivFedTalkError("give --model DIR alone (not with --run or --checkpoint)")
        from privfedtalk.export import load_exported_model

        return load_exported_model(args.model), None
    if getattr(args, "run", None):
        from privfedtalk.federated.models import load_personalized_model

        return load_personalized_model(args.run, args.client)
    if not args.checkpoint:
        raise PrivFedTalkError("give --checkpoint DIR (a pretrained checkpoint) or --run RUN_DIR --client ID")
    model = TalkingHeadGenerator.from_pretrained(args.checkpoint)
    return model, IdentityEncoder.load(args.checkpoint)


def read_reference(path: str, size: int):
    """First frame of a video, or an image file, centre-cropped to a square and resized."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    from privfedtalk.data.media import read_video
    from privfedtalk.errors import MediaError

    if not Path(path).is_file():
        raise MediaError(path, "reference not found", "give an image or a video file")
    if Path(path).suffix.lower() in {".mp4", ".mkv", ".mov", ".avi", ".webm"}:
        frame = read_video(path)[0][0]
        image = Image.fromarray(frame)
    else:
        try:
            image = Image.open(path).convert("RGB")
        except (UnidentifiedImageError, OSError):
            raise MediaError(path, "not a readable image", "give a PNG/JPEG image or a video") from None
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.LANCZOS)
    return np.asarray(image, dtype=np.uint8)


def cmd_generate(args) -> None:
    from privfedtalk.data.audio import frame_audio_features
    from privfedtalk.data.media import read_audio, write_video
    from privfedtalk.runtime import setup_torch

    setup_torch(args.threads)
    model, _ = load_model(args)
    spec = model.spec
    reference = read_reference(args.reference, spec.size)
    audio = read_audio(args.audio, spec.sample_rate)
    frames = max(1, math.ceil(len(audio) / spec.sample_rate * spec.fps - 1e-6))
    features = frame_audio_features(
        audio,
        spec.sample_rate,
        spec.fps,
        frames,
        n_mels=spec.n_mels,
        hop_ms=spec.hop_ms,
        window_ms=spec.window_ms,
    )
    video = model.generate(reference, features, seed=args.seed, steps=args.steps)
    write_video(args.out, video, spec.fps, audio=audio, sample_rate=spec.sample_rate)
    log.info("wrote %s (%d frames, %.2f s of audio)", args.out, len(video), len(audio) / spec.sample_rate)


def client_heldout_clips(run: str, client: str, spec):
    """The clips a client kept out of its local training (recorded in its slot)."""
    from privfedtalk.data.corpus import load_named_clips
    from privfedtalk.federated.store import ClientStore, RunFolder

    cfg = RunFolder(run).load_config()
    cached = ClientStore(run).load_latents(client)
    if cached is None or not cached[1]["heldout"]:
        raise PrivFedTalkError(f"{run}: client {client!r} has no held-out clips recorded; pass --data DIR")
    return load_named_clips(cfg.data.root, cached[1]["heldout"], spec, size=spec.size)


def cmd_evaluate(args) -> None:
    from tqdm import tqdm

    from privfedtalk.evaluate import evaluate_clips, load_eval_clips
    from privfedtalk.runtime import setup_torch

    setup_torch(args.threads)
    model, encoder = load_model(args)
    if args.data:
        clips = load_eval_clips(args.data, args.identities, model.spec, args.max_clips)
    elif args.run and args.client:
        clips = client_heldout_clips(args.run, args.client, model.spec)
    else:
        raise PrivFedTalkError(
            "give --data DIR (or --run RUN --client ID to score that client's held-out clips)"
        )
    with tqdm(total=len(clips), desc="evaluate", leave=False) as bar:
        options = {"anchor": False} if args.no_anchor else {}
        if args.steps:
            options["steps"] = args.steps
        result = evaluate_clips(
            model,
            encoder,
            clips,
            seed=args.seed,
            controls=not args.no_controls,
            progress=bar.update,
            **options,
        )
    if not args.per_clip:
        result.pop("per_clip")
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:32s} {value}")


def cmd_demo(args) -> None:
    from privfedtalk.demo import run_demo

    run_demo(Path(args.out), quick=args.quick)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="privfedtalk", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_synth(sub)
    _add_training(sub)
    _add_models(sub)

    from privfedtalk.data.prepare import add_prepare_parser

    add_prepare_parser(sub)

    p = sub.add_parser("demo", help="synth -> pretrain -> evaluate on the embedded corpus")
    p.add_argument("--out", default="demo_out")
    p.add_argument("--quick", action="store_true", help="tiny sizes, for smoke tests")
    p.set_defaults(func=cmd_demo)
    return parser


def _add_synth(sub) -> None:
    p = sub.add_parser("synth", help="write the embedded synthetic talking-head corpus")
    p.add_argument("--out", required=True)
    p.add_argument("--identities", type=int, default=12)
    p.add_argument("--clips", type=int, default=4)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--fps", type=float, default=25.0)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--public-fraction", type=float, default=0.5)
    p.add_argument(
        "--private-clips", type=int, default=None, help="clips per private identity (default: --clips)"
    )
    p.add_argument(
        "--private-mouth-lag",
        type=int,
        default=0,
        help="frames by which private identities' mouths trail their audio (a domain shift; default 0)",
    )
    p.add_argument(
        "--corruption",
        nargs="+",
        metavar="KIND",
        default=None,
        help="damage the training clips of some private identities: audio_shift (audio moved 3-6 frames), "
        "identity (half the frames show another identity), occlusion (a box over the face on half the "
        "frames), temporal (per-frame head jitter and brightness flicker); several kinds are dealt out "
        "in turn",
    )
    p.add_argument(
        "--corrupt-fraction",
        type=float,
        default=0.0,
        help="share of private identities to corrupt, in [0, 1] (at least one when > 0; default 0)",
    )
    p.add_argument(
        "--heldout-clips",
        type=int,
        default=1,
        help="last clips of each identity kept clean for evaluation; match data.heldout_clips (default 1)",
    )
    p.set_defaults(func=cmd_synth)


def _add_training(sub) -> None:
    """pretrain, train, audit."""
    p = sub.add_parser("pretrain", help="train VAE + U-Net on the public identities")
    p.add_argument("config", nargs="?", help="YAML config, or a shipped one: pretrain")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("train", help="federated training of the adapters on the private identities")
    p.add_argument(
        "config", nargs="?", help="YAML config, or a shipped one: fedavg, fedprox, privfedtalk, low_vram"
    )
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    p.add_argument("--resume", help="continue RUN_DIR from its last completed round")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "flower-sim",
        help="federated training with each client a Flower ClientApp in Flower's simulation engine "
        '(needs pip install -e ".[flower]")',
    )
    p.add_argument("config", nargs="?", help="YAML config, or a shipped one (as for train)")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    p.add_argument(
        "--clients", type=int, default=None, help="SuperNodes: the first N registered clients (default: all)"
    )
    p.set_defaults(func=cmd_flower_sim)

    p = sub.add_parser(
        "audit", help="train with canary clients and estimate ε empirically next to the accountant's"
    )
    p.add_argument("config", nargs="?", help="YAML config, or a shipped one (e.g. privfedtalk)")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    p.add_argument("--canaries", type=int, default=200, help="canary clients inserted (as many held out)")
    p.add_argument("--audit-seed", type=int, default=0, help="seed of the canary directions")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the interval")
    p.add_argument(
        "--membership",
        metavar="RUN",
        help="instead: loss-based membership inference on a trained run (global vs personalized models)",
    )
    p.set_defaults(func=cmd_audit)


def _add_models(sub) -> None:
    """generate, evaluate, export."""
    for name, helptext in (("generate", "write a talking-head mp4"), ("evaluate", "score held-out clips")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--checkpoint", help="pretrained checkpoint folder")
        p.add_argument("--run", help="federated run folder (with --client)")
        p.add_argument("--client", help="client id whose identity adapter to use (with --run)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--threads", type=int, default=2)
        if name == "generate":
            p.add_argument("--model", help="a folder written by `privfedtalk export`")
            p.add_argument("--reference", required=True, help="image or video of the identity")
            p.add_argument("--audio", required=True, help="wav or mp4 with the driving audio")
            p.add_argument("--out", required=True)
            p.add_argument("--steps", type=int, default=None, help="DDIM steps (default: checkpoint's)")
            p.set_defaults(func=cmd_generate)
        else:
            p.add_argument(
                "--data", help="corpus root (default with --run/--client: that client's held-out clips)"
            )
            p.add_argument("--identities", nargs="*", help="default: split.json 'private', else all")
            p.add_argument("--max-clips", type=int, default=None)
            p.add_argument("--no-controls", action="store_true", help="skip silence / other-audio controls")
            p.add_argument(
                "--no-anchor", action="store_true", help="plain VAE decoding (no reference anchoring)"
            )
            p.add_argument("--steps", type=int, default=None, help="DDIM steps (default: checkpoint's)")
            p.add_argument("--per-clip", action="store_true")
            p.add_argument("--json", action="store_true")
            p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("export", help="write a run's model as diffusers + peft folders with a model card")
    p.add_argument("--run", required=True, help="federated run folder")
    p.add_argument("--client", help="also export this client's identity adapter")
    p.add_argument("--out", required=True, help="new (or empty) folder to write")
    p.add_argument(
        "--merge", action="store_true", help="merge the shared adapter into unet/ instead of a peft folder"
    )
    p.set_defaults(func=cmd_export)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    try:
        args.func(args)
    except PrivFedTalkError as err:
        print(f"privfedtalk: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("privfedtalk: interrupted (finished rounds are kept; resume with --resume)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
