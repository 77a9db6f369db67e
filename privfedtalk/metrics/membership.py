"""Loss-based membership inference metrics: ROC curve, ROC AUC and TPR at a fixed FPR.

The attack calls a sample a member when its loss is at most a threshold (lower loss = more likely a
member). Samples with equal losses always get the same call, so ties are never split in the
attacker's favour.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import rankdata


def _as_losses(values, name: str) -> np.ndarray:
    losses = np.asarray(values, dtype=np.float64).ravel()
    if losses.size == 0:
        raise ValueError(f"{name}: need at least one loss")
    if not np.all(np.isfinite(losses)):
        raise ValueError(f"{name}: losses contain NaN or infinite values")
    return losses


def roc_curve(member_losses, non_member_losses) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positive rates, true positive rates, thresholds) of the rule "member iff loss <= t".

    One point per distinct loss value, in increasing order of t, preceded by the point (0, 0) for
    t = -inf (nobody called a member); the last point is (1, 1).
    """
    members = np.sort(_as_losses(member_losses, "member losses"))
    non_members = np.sort(_as_losses(non_member_losses, "non-member losses"))
    thresholds = np.unique(np.concatenate([members, non_members]))
    true_positives = np.searchsorted(members, thresholds, side="right")
    false_positives = np.searchsorted(non_members, thresholds, side="right")
    fpr = np.concatenate([[0.0], false_positives / non_members.size])
    tpr = np.concatenate([[0.0], true_positives / members.size])
    return fpr, tpr, np.concatenate([[-np.inf], thresholds])


def roc_auc(member_losses, non_member_losses) -> float:
    """Area under the ROC curve: P(member loss < non-member loss) + P(equal) / 2.

    Computed from mid-ranks (the Mann-Whitney U statistic), so ties count one half, and equals the
    trapezoidal area under `roc_curve`. 1 means every member has a lower loss than every non-member,
    0.5 is chance.
    """
    members = _as_losses(member_losses, "member losses")
    non_members = _as_losses(non_member_losses, "non-member losses")
    # Rank by negated loss so that a higher rank means "more member-like"; ties share their mid-rank.
    ranks = rankdata(-np.concatenate([members, non_members]), method="average")
    member_rank_sum = float(ranks[: members.size].sum())
    wins = member_rank_sum - members.size * (members.size + 1) / 2.0
    return wins / (members.size * non_members.size)


def tpr_at_fpr(member_losses, non_member_losses, fpr: float = 0.01) -> float:
    """Largest true positive rate over thresholds whose false positive rate is at most `fpr`.

    Only thresholds at observed losses are used, with no interpolation and no randomised tie-breaking,
    so the value is one an attacker attains with a fixed threshold (0 if no threshold is that strict).
    """
    if not 0 <= fpr <= 1:
        raise ValueError(f"fpr must lie in [0, 1], got {fpr}")
    false_positive_rates, true_positive_rates, _ = roc_curve(member_losses, non_member_losses)
    non_member_count = np.asarray(non_member_losses).size
    # Compare counts, not rates, so that e.g. fpr = 0.01 with 100 non-members allows exactly one.
    allowed = math.floor(fpr * non_member_count + 1e-9)
    admissible = np.rint(false_positive_rates * non_member_count) <= allowed
    return float(true_positive_rates[admissible].max())
