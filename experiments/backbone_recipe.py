"""Is a backbone-pretraining recipe's held-out lip-sync reliable? Pretrain the demo's backbone (its
step counts, plus config overrides) at several seeds, optionally on a public set of another shape, and
score each backbone on the demo's 8 held-out clips clip by clip. A clip whose generated mouth never
opens scores lip-sync 0 and pulls the 8-clip mean down by 0.12, so the per-clip list says whether a
low mean is one failed face or a weak model.

    .venv/bin/python experiments/backbone_recipe.py --out runs/recipe --seeds 0 1 2 \\
        [--public 48 --public-clips 2] [model.unet.ema_decay=0.995 ...]

The corpus is the demo's synthetic one: the defaults (`--public 96 --public-clips 1 --private-start
48`) are exactly the demo's, 96 public faces around its 8 clients id048-id055. Identity k is the same
face in every corpus, so two public-set shapes are scored on the same held-out faces by giving both
the same `--private-start K` (the first of the 8 private identities): `--public 48 --public-clips 2`
is the demo's corpus before 2026-12-03 (the same public frames on 48 faces). A K beyond --public
renders the identities in between but leaves them out of split.json. Each seed writes OUT/seedS/ (the
checkpoint, timings.json) and prints one JSON line; a finished seed is reused.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def corpus(out: Path, public: int, public_clips: int, private_start: int) -> Path:
    """The demo's synthetic corpus with identities private_start..private_start+7 private and the first
    `public` other identities public (public_clips each); identities rendered beyond them are unused."""
    from privfedtalk.data.synthetic import synthesize_corpus
    from privfedtalk.demo import FULL

    data = out / f"data_public{public}x{public_clips}_private{private_start}"
    if not (data / "split.json").is_file():
        total = max(public, private_start) + 8
        shape = dict(
            FULL["synth"],
            identities=total,
            clips=public_clips,
            public_fraction=(total - 8) / total,
            private_start=private_start,
        )
        split = synthesize_corpus(data, seed=0, **shape)["split"]
        split["public"] = split["public"][:public]
        (data / "split.json").write_text(json.dumps(split, indent=1))
    return data


def pretrained(out: Path, data: Path, seed: int, overrides: list[str]) -> Path:
    from privfedtalk.demo import FULL, pretrain_config
    from privfedtalk.pretrain import pretrain

    run = out / f"seed{seed}"
    checkpoint = run / "checkpoint"
    if not (checkpoint / "generator.json").is_file():
        pretrain(pretrain_config(data, FULL, run, [*overrides, f"seed={seed}"]))
    return checkpoint


def heldout_scores(checkpoint: Path, data: Path) -> dict:
    from privfedtalk.demo import heldout_eval_clips
    from privfedtalk.evaluate import evaluate_clips
    from privfedtalk.model.generator import TalkingHeadGenerator
    from privfedtalk.model.identity import IdentityEncoder

    model = TalkingHeadGenerator.from_pretrained(checkpoint)
    result = evaluate_clips(model, IdentityEncoder.load(checkpoint), heldout_eval_clips(data, model.spec), 0)
    keys = ("psnr", "sync_corr", "control_silence_sync_corr", "control_other_audio_sync_corr")
    scores = {key: round(float(result[key]), 4) for key in keys}
    scores["per_clip_sync"] = {
        row["identity"]: round(float(row["sync_corr"]), 3) for row in result["per_clip"]
    }
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="pretraining config overrides (key=value)")
    parser.add_argument("--out", required=True, help="folder for the corpus and one backbone per seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--public", type=int, default=96, help="public identities (the demo: 96)")
    parser.add_argument("--public-clips", type=int, default=1, help="clips per public identity (the demo: 1)")
    parser.add_argument("--private-start", type=int, default=48, help="first private identity (the demo: 48)")
    args = parser.parse_args()
    if args.private_start < 0:
        parser.error("--private-start must be >= 0")
    out = Path(args.out)
    data = corpus(out, args.public, args.public_clips, args.private_start)
    for seed in args.seeds:
        checkpoint = pretrained(out, data, seed, args.overrides)
        timings = json.loads((checkpoint.parent / "timings.json").read_text())
        row = {"seed": seed, "overrides": args.overrides, **heldout_scores(checkpoint, data)}
        print(json.dumps(dict(row, pretrain_s=timings.get("total_s"))), flush=True)


if __name__ == "__main__":
    main()
