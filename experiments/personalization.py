"""Does the identity adapter help? Per-client held-out scores: global + own identity adapter vs global only.

.venv/bin/python experiments/personalization.py --run RUN_DIR [--out results.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from privfedtalk.config import Config, load_config
from privfedtalk.data.corpus import load_named_clips
from privfedtalk.evaluate import evaluate_clips
from privfedtalk.federated.simulation import load_personalized_model
from privfedtalk.federated.store import ClientStore

KEYS = ("id_sim", "psnr", "ssim", "mouth_psnr", "sync_corr")


def personalization_table(run_dir: Path, seed: int = 0) -> dict:
    cfg = load_config(run_dir / "config.yaml", schema=Config)
    store = ClientStore(run_dir)
    clients = sorted(p.name for p in store.root.glob("client*") if store.has_identity(p.name))
    rows = []
    base_model, encoder = load_personalized_model(run_dir, None)
    for client_id in clients:
        _, index = store.load_latents(client_id)
        if not index["heldout"]:
            continue
        clips = load_named_clips(cfg.data.root, index["heldout"], cfg.data.audio, size=cfg.data.size)
        personal, _ = load_personalized_model(run_dir, client_id)
        with_identity = evaluate_clips(personal, encoder, clips, seed=seed, controls=False)
        without = evaluate_clips(base_model, encoder, clips, seed=seed, controls=False)
        row = {"client": client_id, "clips": len(clips)}
        for key in KEYS:
            row[f"{key}_global"] = without.get(key)
            row[f"{key}_personal"] = with_identity.get(key)
        rows.append(row)
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k not in ("client", "clips")}
    return {"run": str(run_dir), "clients": rows, "mean": mean}


def markdown(table: dict) -> str:
    head = "| client | clips | " + " | ".join(f"{k} global | {k} +identity" for k in KEYS) + " |"
    sep = "|" + "---|" * (2 + 2 * len(KEYS))
    lines = [head, sep]
    for row in table["clients"] + [{"client": "**mean**", "clips": "", **table["mean"]}]:
        cells = [str(row["client"]), str(row["clips"])]
        for key in KEYS:
            cells += [f"{row[f'{key}_global']:.3f}", f"{row[f'{key}_personal']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    table = personalization_table(args.run, args.seed)
    print(markdown(table))
    if args.out:
        args.out.write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
