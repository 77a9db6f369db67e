"""How well does a backbone's VAE alone reproduce held-out clips? Encode and decode each held-out clip
of the private identities (the demo's evaluation clips) and compare with the recorded frames: PSNR of
the whole frame, and the mouth-opening curve (correlation with the truth, peak relative to the
truth's). Separates what the VAE loses from what the denoiser trained on its latents gets wrong.

    .venv/bin/python experiments/vae_reconstruction.py --data demo_out/data CHECKPOINT [CHECKPOINT ...]
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def reconstruction_scores(checkpoint: str, data: str, count: int) -> dict:
    from privfedtalk.config import load_config
    from privfedtalk.federated.clients import heldout_clips, register_clients
    from privfedtalk.metrics import mouth_opening, psnr
    from privfedtalk.model.generator import TalkingHeadGenerator

    model = TalkingHeadGenerator.from_pretrained(checkpoint)
    cfg = load_config(None, [f"data.root={data}", f"data.size={model.spec.size}"])
    correlations, psnrs, peaks = [], [], []
    for clip in heldout_clips(cfg, register_clients(cfg))[:count]:
        reconstructed = model.decode_latents(model.encode_frames(clip.frames))
        psnrs.append(psnr(reconstructed, clip.frames))
        if clip.truth is None or "mouth_box" not in clip.truth:
            continue
        box = np.asarray(clip.truth["mouth_box"]).reshape(-1)[:4]
        ours, truth = mouth_opening(reconstructed, box), mouth_opening(clip.frames, box)
        correlations.append(float(np.corrcoef(ours, truth)[0, 1]) if ours.std() > 0 else 0.0)
        peaks.append(float(ours.max() / max(truth.max(), 1e-9)))
    return {
        "checkpoint": checkpoint,
        "clips": len(psnrs),
        "psnr": float(np.mean(psnrs)),
        "mouth_opening_corr": float(np.mean(correlations)) if correlations else None,
        "peak_opening_ratio": float(np.mean(peaks)) if peaks else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", help="backbone checkpoint folders (pretrain/checkpoint)")
    parser.add_argument("--data", required=True, help="the corpus the backbones were pretrained beside")
    parser.add_argument("--clips", type=int, default=8, help="held-out clips (the demo evaluates 8)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    from privfedtalk.runtime import setup_torch

    setup_torch(args.threads)
    for checkpoint in args.checkpoints:
        print(json.dumps(reconstruction_scores(checkpoint, args.data, args.clips)))


if __name__ == "__main__":
    main()
