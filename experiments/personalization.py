"""Does the identity adapter help? Per-client held-out scores: global + own identity adapter vs global only.

.venv/bin/python experiments/personalization.py --run RUN_DIR [--out results.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from privfedtalk.evaluate import evaluate_clips, evaluate_personalized, mean_scores
from privfedtalk.federated.clients import register_clients
from privfedtalk.federated.models import load_personalized_model
from privfedtalk.federated.store import ClientStore, RunFolder

KEYS = ("id_sim", "psnr", "ssim", "mouth_psnr", "sync_corr")


def personal_scores(per_clip: list[dict], client_id: str) -> dict:
    """Mean scores of one client's clips in evaluate_personalized's per-clip rows."""
    labels = ("client", "identity", "clip")
    rows = [{k: v for k, v in r.items() if k not in labels} for r in per_clip if r["client"] == client_id]
    return mean_scores(rows)


def personalization_table(run_dir: Path, seed: int = 0) -> dict:
    """Every client with a trained identity adapter, on its identities' held-out clips: its personalized
    model (privfedtalk.evaluate.evaluate_personalized) against the global model alone, same clips."""
    cfg = RunFolder(run_dir).load_config()
    store = ClientStore(run_dir)
    clients = [c for c in register_clients(cfg) if store.has_identity(c.client_id)]
    heldout: dict = {}  # filled by evaluate_personalized, reused for the global model
    personal = evaluate_personalized(
        run_dir, [i for c in clients for i in c.identities], heldout=heldout, seed=seed
    )
    global_model, encoder = load_personalized_model(run_dir, None)
    rows = []
    for client in clients:
        clips = [clip for identity in client.identities for clip in heldout[identity]]
        if not clips:
            continue
        with_identity = personal_scores(personal["per_clip"], client.client_id)
        without = evaluate_clips(global_model, encoder, clips, seed=seed, controls=False)
        row = {"client": client.client_id, "clips": len(clips)}
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
