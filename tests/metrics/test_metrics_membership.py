"""Loss-based membership inference: ROC AUC and TPR at a fixed FPR, with ties."""

import numpy as np
import pytest

from privfedtalk.metrics.membership import roc_auc, roc_curve, tpr_at_fpr


def test_perfect_separation():
    members, non_members = [0.1, 0.2, 0.3], [0.5, 0.6, 0.7, 0.8]
    assert roc_auc(members, non_members) == 1.0
    assert tpr_at_fpr(members, non_members, fpr=0.0) == 1.0
    # Reversed (members have the higher loss): the attack is always wrong.
    assert roc_auc(non_members, members) == 0.0
    assert tpr_at_fpr(non_members, members, fpr=0.0) == 0.0


def test_identical_distributions_are_chance():
    rng = np.random.default_rng(0)
    members, non_members = rng.normal(size=20_000), rng.normal(size=20_000)
    # Standard error of the AUC under the null is sqrt((n1 + n0 + 1) / (12 n1 n0)) = 0.0029.
    assert roc_auc(members, non_members) == pytest.approx(0.5, abs=0.012)
    assert tpr_at_fpr(members, non_members, fpr=0.01) == pytest.approx(0.01, abs=0.005)
    # A shift of the member losses downwards is detected.
    assert roc_auc(members - 0.5, non_members) > 0.6


def test_auc_matches_pairwise_count_and_trapezoid():
    rng = np.random.default_rng(1)
    members = rng.integers(0, 6, size=40).astype(float)  # many ties, within and across groups
    non_members = rng.integers(2, 9, size=30).astype(float)
    less = (members[:, None] < non_members[None, :]).mean()
    equal = (members[:, None] == non_members[None, :]).mean()
    auc = roc_auc(members, non_members)
    assert auc == pytest.approx(less + 0.5 * equal, rel=1e-12)
    fpr, tpr, _ = roc_curve(members, non_members)
    assert auc == pytest.approx(np.trapezoid(tpr, fpr), rel=1e-12)


def test_all_tied_scores_give_one_half_and_no_free_true_positives():
    assert roc_auc([1.0, 1.0], [1.0, 1.0, 1.0]) == 0.5
    # The only threshold that catches a member also flags every non-member.
    assert tpr_at_fpr([1.0, 1.0], [1.0, 1.0, 1.0], fpr=0.5) == 0.0
    assert tpr_at_fpr([1.0, 1.0], [1.0, 1.0, 1.0], fpr=1.0) == 1.0


def test_tpr_at_fpr_by_hand():
    members = [0.1, 0.2, 0.4, 0.4, 0.9]
    non_members = [0.3, 0.4, 0.6, 0.7, 0.8, 1.0, 1.1, 1.2, 1.3, 1.4]
    # Thresholds: t = 0.2 catches 2 members, no non-member; t = 0.3 adds the first non-member
    # (FPR 0.1); t = 0.4 takes the tie of two members with one non-member (TPR 0.8, FPR 0.2).
    assert tpr_at_fpr(members, non_members, fpr=0.0) == 0.4
    assert tpr_at_fpr(members, non_members, fpr=0.1) == 0.4
    assert tpr_at_fpr(members, non_members, fpr=0.15) == 0.4
    assert tpr_at_fpr(members, non_members, fpr=0.2) == 0.8
    assert tpr_at_fpr(members, non_members, fpr=0.5) == 1.0
    fpr, tpr, thresholds = roc_curve(members, non_members)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert thresholds[4] == 0.4 and (fpr[4], tpr[4]) == (0.2, 0.8)


def test_fpr_budget_counts_false_positives_exactly():
    # 100 non-members: FPR 1 % allows exactly one false positive, 0.99 % none.
    non_members = np.arange(100, dtype=float)
    members = np.array([-1.0, 0.5, 200.0])
    assert tpr_at_fpr(members, non_members, fpr=0.01) == pytest.approx(2 / 3)
    assert tpr_at_fpr(members, non_members, fpr=0.0099) == pytest.approx(1 / 3)
    # 0.29 * 100 is 28.999999999999996 in floating point; 29 false positives are still allowed.
    members = np.array([-1.0, 28.5, 200.0])
    assert tpr_at_fpr(members, non_members, fpr=0.29) == pytest.approx(2 / 3)


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        roc_auc([0.1, np.nan], [0.2])
    with pytest.raises(ValueError, match="at least one"):
        roc_auc([], [0.2])
    with pytest.raises(ValueError, match="fpr"):
        tpr_at_fpr([0.1], [0.2], fpr=1.5)
