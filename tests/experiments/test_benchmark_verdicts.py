"""The benchmark's verdict rule (privfedtalk.benchmark.stats and report.compare/reading) on constructed
per-seed values: Welch's t-test, Holm–Bonferroni over the family, not-judged rows and the bound flags."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats

from privfedtalk.benchmark import report, stats

QUALITY_KEYS = [key for key, *_ in report.QUALITY]


def row(name: str, values: dict, table: str = "main", target: float | None = None) -> dict:
    """A summarize()-shaped row from per-seed values {metric: [seed 0, seed 1, ...]}; other metrics None."""
    seeds = len(next(iter(values.values())))
    per_seed = {
        str(i): {key: values[key][i] if key in values else None for key in QUALITY_KEYS} for i in range(seeds)
    }
    mean = {key: float(np.mean(values[key])) if key in values else None for key in QUALITY_KEYS}
    std = {
        key: float(np.std(values[key], ddof=1)) if key in values and seeds > 1 else None
        for key in QUALITY_KEYS
    }
    out = {"row": name, "label": name, "table": table, "n_seeds": seeds, "mean": mean, "std": std}
    out["per_seed"] = per_seed
    if table == "privacy":
        out["target_epsilon"] = target
    return out


def table_of(*rows: dict) -> dict:
    return {"main": list(rows), "ablation": [], "privacy": []}


def verdict_of(table: dict, name: str, reference: str, metric: str) -> dict:
    table["comparison"] = report.compare(table)
    (entry,) = [
        c for c in table["comparison"] if (c["row"], c["baseline"], c["metric"]) == (name, reference, metric)
    ]
    return entry


WIN = [0.50, 0.52, 0.51]
LOSS = [0.30, 0.31, 0.29]


def test_clear_win_is_better_and_keeps_the_numbers_a_reader_can_check():
    table = table_of(row("privfedtalk", {"sync_corr": WIN}), row("fedavg", {"sync_corr": LOSS}))
    entry = verdict_of(table, "privfedtalk", "fedavg", "sync_corr")
    assert entry["verdict"] == "better"
    expected = scipy_stats.ttest_ind(WIN, LOSS, equal_var=False)
    assert entry["t"] == pytest.approx(expected.statistic) and entry["p"] == pytest.approx(expected.pvalue)
    assert entry["p_holm"] == pytest.approx(entry["p"])  # a family of one: nothing to correct
    assert (entry["n_row"], entry["n_baseline"]) == (3, 3)
    assert entry["mean_row"] == pytest.approx(0.51) and entry["std_baseline"] == pytest.approx(0.01)
    assert "better than fedavg" in entry["text"] and "Holm p" in entry["text"]


def test_clear_loss_is_worse():
    table = table_of(row("privfedtalk", {"sync_corr": LOSS}), row("fedavg", {"sync_corr": WIN}))
    assert verdict_of(table, "privfedtalk", "fedavg", "sync_corr")["verdict"] == "worse"


def test_lower_is_better_metrics_keep_their_direction():
    """jitter: lower is better, so the row with the smaller values wins."""
    table = table_of(row("privfedtalk", {"jitter": [0.010, 0.011, 0.012]}), row("fedavg", {"jitter": WIN}))
    entry = verdict_of(table, "privfedtalk", "fedavg", "jitter")
    assert entry["verdict"] == "better" and entry["better_when"] == "lower" and entry["t"] < 0


def test_overlapping_samples_show_no_difference():
    table = table_of(
        row("privfedtalk", {"sync_corr": [0.50, 0.40, 0.60]}),
        row("fedavg", {"sync_corr": [0.45, 0.55, 0.52]}),
    )
    entry = verdict_of(table, "privfedtalk", "fedavg", "sync_corr")
    assert entry["verdict"] == "no difference shown" and entry["p"] > 0.05


def test_single_seed_row_is_not_judged_however_large_the_gap():
    table = table_of(row("privfedtalk", {"sync_corr": [0.90]}), row("fedavg", {"sync_corr": LOSS}))
    entry = verdict_of(table, "privfedtalk", "fedavg", "sync_corr")
    assert entry["verdict"] == "not judged"
    assert entry["t"] is None and entry["p"] is None and entry["p_holm"] is None
    assert "not judged, fewer than 2 seeds" in entry["text"]


def test_zero_spread_ties_and_gaps_are_decided_without_scipy_nan():
    assert stats.welch_test([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]) == (0.0, 1.0)
    t, p = stats.welch_test([0.6, 0.6], [0.5, 0.5])
    assert t == float("inf") and p == 0.0
    table = table_of(row("privfedtalk", {"sync_corr": [0.5, 0.5]}), row("fedavg", {"sync_corr": [0.5, 0.5]}))
    assert verdict_of(table, "privfedtalk", "fedavg", "sync_corr")["verdict"] == "no difference shown"


def test_holm_rejects_fewer_than_uncorrected_testing():
    """p = 0.01, 0.03, 0.04 at α = 0.05: uncorrected, all three are rejected; Holm multiplies them by 3, 2, 1
    -> 0.03, 0.06, then max(0.06, 0.04) = 0.06, so only the first is. The input order does not matter."""
    raw = [0.04, 0.01, 0.03]
    adjusted = stats.holm_adjust(raw)
    assert adjusted == pytest.approx([0.06, 0.03, 0.06])
    assert [p <= stats.ALPHA for p in raw] == [True, True, True]
    assert [stats.decide(1.0, p) for p in adjusted] == [
        "no difference shown",
        "better",
        "no difference shown",
    ]
    assert [stats.decide(-1.0, p) for p in adjusted] == [
        "no difference shown",
        "worse",
        "no difference shown",
    ]
    assert stats.holm_adjust([0.01, 0.02, 0.04]) == pytest.approx([0.03, 0.04, 0.04])  # all three rejected
    assert stats.holm_adjust([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1


def test_the_family_decides_a_borderline_difference():
    """Raw p ≈ 0.015: better when it is the reading's only test, no difference shown among five."""
    borderline, reference = [0.50, 0.53, 0.56], [0.40, 0.43, 0.46]
    alone = table_of(row("privfedtalk", {"sync_corr": borderline}), row("fedavg", {"sync_corr": reference}))
    entry = verdict_of(alone, "privfedtalk", "fedavg", "sync_corr")
    assert entry["p"] < stats.ALPHA and entry["verdict"] == "better"
    family = table_of(
        row("privfedtalk", {"sync_corr": borderline}),
        row("fedavg", {"sync_corr": reference}),
        row("fedprox", {"sync_corr": reference}),
        row("local-only", {"sync_corr": reference}),
    )
    entry = verdict_of(family, "privfedtalk", "fedavg", "sync_corr")
    # privfedtalk vs 3 baselines + fedavg vs local-only + fedprox vs fedavg: five tests.
    assert len(family["comparison"]) == 5
    assert entry["p"] < stats.ALPHA < entry["p_holm"] and entry["verdict"] == "no difference shown"


def test_reading_states_the_test_the_count_and_the_correction():
    table = table_of(
        row("privfedtalk", {"sync_corr": WIN, "psnr": [20.0, 20.1, 20.2]}),
        row("fedavg", {"sync_corr": LOSS, "psnr": [20.0, 20.2, 20.1]}),
        row("centralized", {"sync_corr": [0.9], "psnr": [21.0]}),
    )
    table["comparison"] = report.compare(table)
    statement = report.reading(table)[-1]
    # privfedtalk vs fedavg on 2 metrics (tested) + centralized vs fedavg on 2 key metrics (not judged).
    assert "this reading states 4 (row pair, metric) comparisons, 2 tested and 2 not judged" in statement
    assert "Welch's two-sided t-test" in statement and "α = 0.05" in statement
    assert "Holm–Bonferroni correction over those 2 tests" in statement
    assert "± is the sample std (ddof=1) over the row's seeds" in statement
    assert "1 better, 0 worse, 1 no difference shown." in "\n".join(report.reading(table))


def test_reading_says_so_when_nothing_could_be_tested():
    table = table_of(row("privfedtalk", {"sync_corr": [0.5]}), row("fedavg", {"sync_corr": [0.3]}))
    table["comparison"] = report.compare(table)
    statement = report.reading(table)[-1]
    assert "1 (row pair, metric) comparisons, 0 tested and 1 not judged" in statement
    assert "no correction (no comparison could be tested)" in statement


def flags(table: dict) -> list[str]:
    table["comparison"] = report.compare(table)
    return [line for line in report.reading(table) if line.startswith("Flag:")]


def test_centralized_below_fedavg_is_flagged_and_above_is_not():
    fedavg = row("fedavg", {"sync_corr": WIN, "mouth_psnr": [18.0, 18.1, 18.2]})
    below = row("centralized", {"sync_corr": LOSS, "mouth_psnr": [19.0, 19.1, 19.2]})
    (flag,) = flags(table_of(fedavg, below))
    assert flag.startswith("Flag: centralized is not an upper bound here on sync corr")
    assert "worse, Holm p" in flag
    above = row("centralized", {"sync_corr": [0.70, 0.71, 0.72], "mouth_psnr": [19.0, 19.1, 19.2]})
    assert flags(table_of(fedavg, above)) == []
    # mouth PSNR is flagged on its own; a single-seed centralized row is flagged, its verdict not judged.
    low_mouth = row("centralized", {"sync_corr": [0.9], "mouth_psnr": [17.0]})
    (flag,) = flags(table_of(fedavg, low_mouth))
    assert "upper bound here on mouth PSNR (dB)" in flag and "not judged: n = 1 vs 3" in flag


def test_local_only_above_fedavg_is_flagged_and_below_is_not():
    fedavg = row("fedavg", {"sync_corr": LOSS})
    (flag,) = flags(table_of(fedavg, row("local-only", {"sync_corr": WIN})))
    assert flag.startswith("Flag: FedAvg does not beat local-only on sync corr") and "worse, Holm p" in flag
    assert flags(table_of(fedavg, row("local-only", {"sync_corr": [0.10, 0.12, 0.11]}))) == []
    # Equal means that differ only by float rounding (18.1 summed in another order) are no flag.
    tie = table_of(
        row("fedavg", {"mouth_psnr": [18.1, 18.0, 18.2]}),
        row("local-only", {"mouth_psnr": [18.0, 18.2, 18.1]}),
    )
    assert tie["main"][1]["mean"]["mouth_psnr"] != tie["main"][0]["mean"]["mouth_psnr"]
    assert flags(tie) == []
