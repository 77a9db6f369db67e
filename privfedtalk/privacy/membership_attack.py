"""Loss-based membership inference against a trained run (metrics/membership.py scores it).

The attacker holds a model and a clip of a client's identity and asks: was this clip in the client's
training data? It calls "member" when the model's diffusion loss on the clip is low. Members are each
client's training clips, non-members its held-out clips of the same identities (never trained on).
Two models are attacked: the global model (shared adapter only: what DP protects) and the client's
personalized model (global + its identity adapter, trained on its data without DP: expected to leak).

A score is the diffusion loss of one window of consecutive frames, averaged over a fixed set of
(timestep, noise) draws that is the same for every window, so member and non-member windows are
scored alike. Windows of one clip are correlated; the counts of clips and windows are reported.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from privfedtalk.data.corpus import load_named_clips
from privfedtalk.federated.models import identity_adapter_off, load_personalized_model
from privfedtalk.federated.store import ClientStore, RunFolder
from privfedtalk.metrics.membership import roc_auc, tpr_at_fpr
from privfedtalk.model import adapters


@torch.no_grad()
def window_losses(model, latents: torch.Tensor, features: torch.Tensor, window: int, draws: int, seed: int):
    """Loss of each non-overlapping window of one clip (latents (frames, C, h, w), features (frames,
    tokens, n_mels)), reference = the clip's first frame, averaged over `draws` seeded draws."""
    device = model.device
    losses = []
    for start in range(0, latents.shape[0] - window + 1, window):
        lat = latents[start : start + window].unsqueeze(0).to(device)
        ref = latents[0].unsqueeze(0).to(device)
        audio = features[start : start + window].unsqueeze(0).to(device)
        generator = torch.Generator().manual_seed(seed)
        values = [float(model.loss(lat, ref, audio, generator)["diffusion"]) for _ in range(draws)]
        losses.append(float(np.mean(values)))
    return losses


def _client_clips(model, cfg, tensors: dict, index: dict):
    """(member clips, non-member clips) of a client's slot (latents, index) as (latents, features) pairs."""
    members = [(tensors[f"{i}.latents"], tensors[f"{i}.features"]) for i in range(len(index["train"]))]
    heldout = load_named_clips(cfg.data.root, index["heldout"], cfg.data.audio, size=cfg.data.size)
    non_members = [
        (model.encode_frames(c.frames), torch.as_tensor(c.features, dtype=torch.float32)) for c in heldout
    ]
    return members, non_members


def _scores(members: list, non_members: list) -> dict:
    return {
        "auc": roc_auc(members, non_members),
        "tpr_at_1pct_fpr": tpr_at_fpr(members, non_members, 0.01),
        "member_windows": len(members),
        "non_member_windows": len(non_members),
    }


def membership_attack(run_dir: str | Path, draws: int = 4, seed: int = 0) -> dict:
    """AUC and TPR at 1 % FPR of the loss attack on the global and on the personalized models, pooled
    over every client that has an identity adapter and held-out clips."""
    folder = RunFolder(run_dir)
    cfg = folder.load_config()
    store = ClientStore(run_dir)
    with_identity = sorted(p.name for p in store.root.glob("client*") if store.has_identity(p.name))
    slots = {c: store.load_latents(c) for c in with_identity}  # read each slot once
    clients = [c for c in with_identity if slots[c] and slots[c][1]["heldout"]]
    if not clients:
        raise ValueError(f"{run_dir}: no client with an identity adapter and held-out clips to attack")
    model, _ = load_personalized_model(run_dir, clients[0])
    window = cfg.data.window
    pooled = {"global": ([], []), "personalized": ([], [])}
    clip_counts = [0, 0]
    for client_id in clients:
        adapters.load_adapter_state(model.unet, adapters.IDENTITY, store.load_identity(client_id))
        members, non_members = _client_clips(model, cfg, *slots[client_id])
        clip_counts[0] += len(members)
        clip_counts[1] += len(non_members)
        for side, clips in enumerate((members, non_members)):
            for latents, features in clips:
                pooled["personalized"][side].extend(
                    window_losses(model, latents, features, window, draws, seed)
                )
                with identity_adapter_off(model):
                    pooled["global"][side].extend(
                        window_losses(model, latents, features, window, draws, seed)
                    )
    result = {name: _scores(*losses) for name, losses in pooled.items()}
    result.update(
        clients=len(clients), member_clips=clip_counts[0], non_member_clips=clip_counts[1], draws=draws
    )
    return result
