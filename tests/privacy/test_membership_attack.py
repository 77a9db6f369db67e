"""The loss-based membership attack on a trained (tiny) run."""

from __future__ import annotations

import torch

from privfedtalk.federated import simulation
from privfedtalk.federated.models import load_personalized_model
from privfedtalk.federated.store import ClientStore
from privfedtalk.privacy.membership_attack import membership_attack, window_losses


def test_attack_scores_members_against_heldout_clips_for_both_models(tiny_federated_config, tmp_path):
    run = simulation.train(tiny_federated_config("data.heldout_clips=1", f"out_dir={tmp_path / 'run'}"))
    result = membership_attack(run, draws=2)
    store = ClientStore(run)
    trained = [p.name for p in store.root.glob("client*") if store.has_identity(p.name)]
    assert result["clients"] == len(trained) > 0
    assert result["member_clips"] > 0 and result["non_member_clips"] > 0
    for model in ("global", "personalized"):
        scores = result[model]
        assert 0.0 <= scores["auc"] <= 1.0 and 0.0 <= scores["tpr_at_1pct_fpr"] <= 1.0
        assert scores["member_windows"] > 0 and scores["non_member_windows"] > 0
    # The two models are really different: the identity adapter is on for one and off for the other.
    model, _ = load_personalized_model(run, trained[0])
    latents, _ = store.load_latents(trained[0])
    clip = (latents["0.latents"], latents["0.features"])
    personal = window_losses(model, *clip, window=2, draws=2, seed=0)
    assert personal == window_losses(model, *clip, window=2, draws=2, seed=0)  # fixed draws
    from privfedtalk.federated.models import identity_adapter_off

    with identity_adapter_off(model):
        shared_only = window_losses(model, *clip, window=2, draws=2, seed=0)
    assert not torch.allclose(torch.tensor(personal), torch.tensor(shared_only))
