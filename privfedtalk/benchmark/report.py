"""The benchmark's numbers and what they say: per-row summaries, tested comparisons (stats.py: Welch's
t-test, Holm–Bonferroni), plain-language findings, and every output file (table.{md,csv,tex,json},
figures, samples, README.md)."""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections import Counter
from pathlib import Path

import numpy as np

from privfedtalk.benchmark.plan import COHORT_CURVES, Benchmark, Row, Run, folder_name
from privfedtalk.benchmark.plan import scenarios as plan_scenarios
from privfedtalk.benchmark.stats import (
    ALPHA,
    BETTER,
    CORRECTION_NAME,
    MIN_SEEDS,
    NO_DIFFERENCE,
    NOT_JUDGED,
    TEST_NAME,
    WORSE,
    decide,
    holm_adjust,
    welch_test,
)
from privfedtalk.benchmark.systems import machine
from privfedtalk.federated.store import atomic_write_text, read_jsonl
from privfedtalk.figures import pyplot, save_figure

FD_LABEL = "FD (identity-encoder features; not FID)"
FID_LABEL = "FID (Inception, --inception FILE)"
# (key, label, direction: +1 higher is better / -1 lower is better / 0 not a quality score, decimals)
QUALITY = [
    ("psnr", "PSNR (dB)", 1, 2),
    ("ssim", "SSIM", 1, 3),
    ("mouth_psnr", "mouth PSNR (dB)", 1, 2),
    ("sync_corr", "sync corr", 1, 3),
    ("id_sim", "ID sim", 1, 3),
    ("jitter", "jitter", -1, 4),
    ("fd_identity_features", FD_LABEL, -1, 3),
    ("fid", FID_LABEL, -1, 2),
]
SYSTEMS = [
    ("upload_kb", "upload KB/client-round", 0, 1),
    ("round_s", "round s (median)", 0, 2),
    ("peak_mib", "peak MiB", 0, 0),
    ("epsilon", "ε", 0, 2),
]
COLUMNS = QUALITY + SYSTEMS
# Section titles; {runs} is what each row's runs span, e.g. "3 seeds" or "3 seeds x 2 backbones".
TABLES = {
    "main": "Main table",
    "ablation": "Ablation ({runs}; each component added alone to adapters-only FedAvg)",
    "privacy": "Privacy-utility (privfedtalk, {runs})",
}
KEY_METRICS = ("psnr", "mouth_psnr", "sync_corr", "id_sim")
# The generated video's own frame-to-frame change (privfedtalk.metrics.flicker); only the robust and
# flicker tables show it (lower: steadier video, though a still picture would score 0).
FLICKER = ("flicker", "flicker", -1, 4)
METRIC = {m[0]: m for m in QUALITY + [FLICKER]}  # key -> (key, label, direction, decimals)
# Where centralized must not fall below FedAvg, nor FedAvg below local-only, for the table to make sense.
BOUND_METRICS = ("sync_corr", "mouth_psnr")


# ------------------------------------------------------------------------------------ the numbers


def run_values(row: Row, run: Run) -> dict:
    """One run's table values: quality from eval.json, systems from metrics.jsonl."""
    values = {key: run.eval["metrics"].get(key) for key, *_ in QUALITY}
    done = [r for r in run.records if "upload_bytes" in r]
    values["upload_kb"] = float(np.median([r["upload_bytes"] for r in done])) / 1e3 if done else None
    values["round_s"] = float(np.median([r["round_seconds"] for r in done])) if done else None
    peaks = [r["peak_memory_mb"] for r in done if r.get("peak_memory_mb") is not None]
    values["peak_mib"] = float(max(peaks)) if peaks else None
    values["epsilon"] = run.records[-1].get("epsilon_observer") if run.records else None
    if row.name == "local-only":
        values["upload_kb"] = 0.0
    if row.name == "centralized":
        values["upload_kb"] = None
    return values


def mean_and_std(values: list) -> tuple[float | None, float | None]:
    """Mean and sample std (None with fewer than 2) of the finite values."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    mean = float(np.mean(finite)) if finite else None
    return mean, float(np.std(finite, ddof=1)) if len(finite) > 1 else None


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def spread_text(n_runs: int, n_seeds: int, n_backbones: int) -> str:
    """Which variance a row's ± holds: its runs span n_seeds federated seeds on n_backbones backbones."""
    span = f"{plural(n_seeds, 'federated seed')} x {plural(n_backbones, 'backbone')}"
    if n_runs < 2:
        return f"no ± (1 run: {span})"
    what = "federated-seed and backbone variance" if n_backbones > 1 else "federated-seed variance only"
    return f"± = sample std over {n_runs} runs ({span}): {what}"


def summarize(row: Row) -> dict:
    """The row's per-run values, their mean and sample std (None with one run) per column.

    The mean and std are over ALL the row's runs: every federated seed on every backbone. per_seed and
    runs are keyed by run label ("0", "1", ... on backbone 0; "b1-0", ... on backbone 1); n_seeds counts
    the federated seeds, n_backbones the backbones, and `spread` says which variance the ± includes.
    """
    per_run = {label: run_values(row, run) for label, run in row.runs.items()}
    mean, std = {}, {}
    for key, *_ in COLUMNS:
        mean[key], std[key] = mean_and_std([v[key] for v in per_run.values()])
    first = row.first_run()
    seeds = sorted({int(run.cfg.seed) for run in row.runs.values()})
    backbones = sorted({run.backbone for run in row.runs.values()})
    out = {
        "row": row.name,
        "label": row.label,
        "table": row.table,
        "n_seeds": len(seeds),
        "seeds": seeds,
        "n_backbones": len(backbones),
        "backbones": backbones,
        "n_runs": len(per_run),
        "spread": spread_text(len(per_run), len(seeds), len(backbones)),
        "runs": {label: r.key for label, r in row.runs.items()},
        "mean": mean,
        "std": std,
        "per_seed": per_run,
        "note": row.note,
    }
    if row.table == "privacy":
        out["target_epsilon"] = None if math.isinf(row.target_epsilon) else row.target_epsilon
        # The planned z (the last round may have been skipped, or had fewer clients than planned).
        noised = [r["noise_multiplier"] for r in first.records if r.get("noise_multiplier")]
        out["noise_multiplier"] = max(noised) if noised else None
    return out


def fmt(value, decimals: int, key: str = "") -> str:
    if value is None:
        return {"epsilon": "∞", "fid": "n/a"}.get(key, "—")
    if isinstance(value, float) and math.isinf(value):
        return "∞"
    return f"{value:.{decimals}f}"


def cell(summary: dict, key: str, decimals: int) -> str:
    text = fmt(summary["mean"][key], decimals, key)
    if summary["std"][key] is not None:
        text += f" ± {summary['std'][key]:.{decimals}f}"
    return text


def seed_values(summary: dict, key: str) -> list[float]:
    """The row's finite per-seed values of one metric: the sample its mean, ± and test come from."""
    values = (v.get(key) for v in summary.get("per_seed", {}).values())
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def comparison_entry(row: dict, ref: dict, metric: tuple) -> dict | None:
    """Row against reference on one metric, before the family's correction: the numbers a reader needs
    to check the verdict and the raw Welch test; None where either mean is missing."""
    key, label, direction, _ = metric
    a, b = row["mean"][key], ref["mean"][key]
    if a is None or b is None:
        return None
    values, reference = seed_values(row, key), seed_values(ref, key)
    test = welch_test(values, reference)
    return {
        "row": row["row"],
        "baseline": ref["row"],
        "metric": key,
        "label": label,
        "better_when": "higher" if direction > 0 else "lower",
        "mean_row": a,
        "mean_baseline": b,
        "std_row": row["std"][key],
        "std_baseline": ref["std"][key],
        "n_row": len(values),
        "n_baseline": len(reference),
        "gain": direction * (a - b),  # positive: row better than the reference
        "t": None if test is None else test[0],
        "p": None if test is None else test[1],
    }


def entry_numbers(entry: dict) -> str:
    """'row a ± sa (n=…) vs reference b ± sb (n=…)', in the metric's decimals."""
    decimals = METRIC[entry["metric"]][3]

    def side(name: str, mean: float, std: float | None, n: int) -> str:
        spread = "" if std is None else f" ± {std:.{decimals}f}"
        return f"{name} {mean:.{decimals}f}{spread} (n={n})"

    return (
        side(entry["row"], entry["mean_row"], entry["std_row"], entry["n_row"])
        + " vs "
        + side(entry["baseline"], entry["mean_baseline"], entry["std_baseline"], entry["n_baseline"])
    )


def entry_text(entry: dict) -> str:
    """'label: verdict reference (the numbers; t, p, Holm p)'."""
    if entry["verdict"] == NOT_JUDGED:
        return (
            f"{entry['label']}: not judged, fewer than {MIN_SEEDS} seeds on a side ({entry_numbers(entry)})"
        )
    word = {BETTER: "better than", WORSE: "worse than", NO_DIFFERENCE: "no difference shown against"}
    return (
        f"{entry['label']}: {word[entry['verdict']]} {entry['baseline']} ({entry_numbers(entry)}; "
        f"t = {entry['t']:.2f}, p = {entry['p']:.3g}, Holm p = {entry['p_holm']:.3g})"
    )


def judge_family(entries: list[dict]) -> list[dict]:
    """Holm-adjust the tested entries' p-values as one family, then give every entry its verdict and text.

    Entries with a single-seed side are not tested, so they are not part of the family's count.
    """
    tested = [e for e in entries if e["p"] is not None]
    adjusted = holm_adjust([e["p"] for e in tested])
    for entry, p_holm in zip(tested, adjusted, strict=True):
        entry["p_holm"] = p_holm
    for entry in entries:
        entry.setdefault("p_holm", None)
        entry["verdict"] = decide(entry["gain"], entry["p_holm"])
        entry["text"] = entry_text(entry)
    return entries


def stated_pairs(table: dict) -> list[tuple[dict, dict, list]]:
    """Every (row, reference, metrics) the reading states a verdict on: PrivFedTalk against each
    baseline on every quality metric; on the key metrics FedAvg against local-only, FedProx and
    centralized against FedAvg, each ablation against adapters-only, the ε=∞ privacy point against
    FedAvg and each noise level against the ε=∞ point; in the robust table every method against FedAvg
    in its scenario on the scenario's attacked metrics, and in the flicker table ISFA + TDC against
    ISFA (robust_pairs)."""
    main = {s["row"]: s for s in table["main"]}
    key_metrics = [m for m in QUALITY if m[0] in KEY_METRICS]
    pairs = [
        (main["privfedtalk"], main[base], QUALITY)
        for base in ("fedavg", "fedprox", "local-only")
        if "privfedtalk" in main and base in main
    ]
    for name, ref in (("fedavg", "local-only"), ("fedprox", "fedavg"), ("centralized", "fedavg")):
        if name in main and ref in main:
            pairs.append((main[name], main[ref], key_metrics))
    ablation = {s["row"]: s for s in table.get("ablation", [])}
    if "adapters-only" in ablation:
        base = ablation["adapters-only"]
        pairs += [(row, base, key_metrics) for name, row in ablation.items() if name != "adapters-only"]
    privacy = table.get("privacy") or []
    no_noise = next((r for r in privacy if r["target_epsilon"] is None), None)
    if no_noise is not None:
        if "fedavg" in main:
            pairs.append((no_noise, main["fedavg"], key_metrics))
        pairs += [(row, no_noise, key_metrics) for row in privacy if row is not no_noise]
    return pairs + robust_pairs(table)


def compare(table: dict) -> list[dict]:
    """Every verdict the reading states, one family: Welch's t-test per (row pair, metric) on the
    per-seed values, Holm–Bonferroni-adjusted over all tested pairs, α = 0.05."""
    entries = [
        comparison_entry(row, ref, metric) for row, ref, metrics in stated_pairs(table) for metric in metrics
    ]
    return judge_family([e for e in entries if e is not None])


# ------------------------------------------------------------------------------- the cohort sweep

# (key, label, decimals) of the cohort table; ε keys: None = no DP (∞).
COHORT_COLUMNS = [
    ("sync_corr", "sync corr", 3),
    ("mouth_psnr", "mouth PSNR (dB)", 2),
    ("epsilon_observer", "ε observer", 2),
    ("epsilon_server_worst", "ε server worst", 2),
    ("epsilon_server_median", "ε server median", 2),
    ("noise_to_signal", "noise/signal (median over rounds)", 2),
]


def cohort_values(run: Run) -> dict:
    """One run's cohort-table values: quality from eval.json, ε after the last round, and the median
    over rounds of ‖noise‖/‖noise-free sum‖ (privacy.log_signal_norm, a simulation-only diagnostic)."""
    last = run.records[-1] if run.records else {}
    ratios = [r["noise_to_signal"] for r in run.records if r.get("noise_to_signal") is not None]
    return {
        "sync_corr": run.eval["metrics"].get("sync_corr"),
        "mouth_psnr": run.eval["metrics"].get("mouth_psnr"),
        "epsilon_observer": last.get("epsilon_observer"),
        "epsilon_server_worst": last.get("epsilon_server_worst"),
        "epsilon_server_median": last.get("epsilon_server_median"),
        "noise_to_signal": float(np.median(ratios)) if ratios else None,
    }


def summarize_cohort(row: Row) -> dict:
    """A cohort row's per-seed values and their mean and sample std per cohort column."""
    per_seed = {seed: cohort_values(run) for seed, run in sorted(row.runs.items())}
    mean, std = {}, {}
    for key, *_ in COHORT_COLUMNS:
        mean[key], std[key] = mean_and_std([v[key] for v in per_seed.values()])
    return {
        "row": row.name,
        "label": row.label,
        "curve": row.curve,
        "m": row.cohort,
        "n_seeds": len(per_seed),
        "mean": mean,
        "std": std,
        "per_seed": {str(s): v for s, v in per_seed.items()},
    }


def curve_points(summaries: list[dict], curve: str, key: str = "sync_corr") -> dict:
    """{m: summary} of one curve's rows that have a mean of `key`."""
    return {s["m"]: s for s in summaries if s["curve"] == curve and s["mean"][key] is not None}


# The goal figure's Welch tests on sync corr: (key, curve, reference curve).
GOAL_TESTS = (
    ("p_fedavg_vs_local_only", "fedavg", "local-only"),
    ("p_privfedtalk_vs_fedavg", "privfedtalk", "fedavg"),
    ("p_privfedtalk_vs_local_only", "privfedtalk", "local-only"),
)


def goal_ratios(summaries: list[dict]) -> list[dict]:
    """Per m: (PrivFedTalk − local-only) / (FedAvg − local-only) of sync corr seed means: the share of what
    federation gains that PrivFedTalk keeps under DP (1: all of it, 0: none). None where FedAvg does
    not differ from local-only (nothing to keep). With the ratio, Welch's two-sided p of FedAvg against
    local-only (is there a gain beyond the seeds' spread to keep?) and of PrivFedTalk against FedAvg
    and against local-only (None with fewer than 2 seeds on a side)."""
    curves = {c: curve_points(summaries, c) for c in COHORT_CURVES}
    out = []
    for m in sorted(set.intersection(*(set(points) for points in curves.values()))):
        p, f, lo = (curves[c][m]["mean"]["sync_corr"] for c in COHORT_CURVES)
        ratio = (p - lo) / (f - lo) if f != lo else None
        entry = {"m": m, "privfedtalk": p, "fedavg": f, "local_only": lo, "ratio": ratio}
        for key, curve, reference in GOAL_TESTS:
            entry[key] = _sync_p(curves[curve][m], curves[reference][m])
        out.append(entry)
    return out


def _sync_p(row: dict, reference: dict) -> float | None:
    """Welch's two-sided p of two cohort rows' per-seed sync corr; None with fewer than 2 seeds a side."""
    test = welch_test(seed_values(row, "sync_corr"), seed_values(reference, "sync_corr"))
    return None if test is None else test[1]


def cohort_cell(summary: dict, key: str, decimals: int) -> str:
    mean, std = summary["mean"][key], summary["std"][key]
    if mean is None:
        return "∞" if key.startswith("epsilon") else "—"
    return f"{mean:.{decimals}f}" + (f" ± {std:.{decimals}f}" if std is not None else "")


def cohort_markdown(summaries: list[dict]) -> str:
    """Rows x m: quality, ε (observer, server worst/median) and the noise-to-signal ratio."""
    head = ["row", "m", "seeds"] + [label for _, label, _ in COHORT_COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in sorted(summaries, key=lambda s: s["m"]):  # stable: the plan's order within each m
        cells = [s["label"], str(s["m"]), str(s["n_seeds"])]
        cells += [cohort_cell(s, key, decimals) for key, _, decimals in COHORT_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def goal_markdown(ratios: list[dict]) -> str:
    """The goal figure per m: how much of FedAvg's gain over local-only PrivFedTalk keeps (sync corr), with
    the Welch p that says whether each difference is beyond the seeds' spread."""
    lines = [
        "| m | PrivFedTalk | FedAvg | local-only | (PrivFedTalk − local-only) ÷ (FedAvg − local-only) "
        "| p FedAvg vs local-only | p PrivFedTalk vs FedAvg | p PrivFedTalk vs local-only |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in ratios:
        ratio = "— (FedAvg = local-only)" if r["ratio"] is None else f"{r['ratio']:.2f}"
        tests = [_p_cell(r.get(key)) for key, *_ in GOAL_TESTS]
        lines.append(
            f"| {r['m']} | {r['privfedtalk']:.3f} | {r['fedavg']:.3f} | {r['local_only']:.3f} | {ratio} | "
            + " | ".join(tests)
            + " |"
        )
    return "\n".join(lines)


def _p_cell(p: float | None) -> str:
    return "—" if p is None else f"{p:.2g}"


def cohort_sections(table: dict) -> list[tuple[str, str]]:
    """(title, markdown) of the cohort table and the goal figure; none without cohort rows."""
    if not table.get("cohort"):
        return []
    return [
        ("Utility vs cohort size m (mean ± sample std over seeds)", cohort_markdown(table["cohort"])),
        (
            "Goal figure: share of FedAvg's gain over local-only that PrivFedTalk keeps "
            "(sync corr, seed means)",
            goal_markdown(table["cohort_goal"]),
        ),
    ]


def _cohort_curve(ax, summaries: list[dict], curve: str, style: str) -> None:
    points = curve_points(summaries, curve)
    if not points:
        return
    ms = sorted(points)
    means = [points[m]["mean"]["sync_corr"] for m in ms]
    errors = [points[m]["std"]["sync_corr"] or 0.0 for m in ms]
    seeds = "/".join(str(points[m]["n_seeds"]) for m in ms)
    ax.errorbar(ms, means, yerr=errors, fmt=style, capsize=3, label=f"{curve} (seeds {seeds})")


def plot_cohort(path: Path, summaries: list[dict]) -> None:
    """utility_vs_cohort.png: sync corr against m per curve (error bars: sample std over seeds); the
    variants at the largest m as single markers."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for curve, style in zip(COHORT_CURVES, ("o-", "s--", "^:"), strict=True):
        _cohort_curve(ax, summaries, curve, style)
    variants = [
        s for s in summaries if s["curve"] not in COHORT_CURVES and s["mean"]["sync_corr"] is not None
    ]
    for i, (s, marker) in enumerate(zip(variants, "xDv*P", strict=False)):
        std = s["std"]["sync_corr"] or 0.0
        x = s["m"] * 2 ** (0.1 * (i + 1))  # beside the base point at the same m, not on top of it
        label = f"{s['row']} (seeds {s['n_seeds']})"
        ax.errorbar([x], [s["mean"]["sync_corr"]], yerr=[std], fmt=marker, capsize=3, label=label)
    ax.set_xscale("log", base=2)
    ms = sorted({s["m"] for s in summaries})
    ax.set_xticks(ms, [str(m) for m in ms])
    ax.minorticks_off()
    ax.set_xlabel("clients per round m")
    ax.set_ylabel("sync corr (held-out clips)")
    ax.set_title("Utility vs cohort size at fixed ε (mean ± std over seeds)")
    ax.legend(fontsize=7)
    save_figure(fig, path)


# ------------------------------------------------------------------- the robust and flicker tables

ROBUST_COLUMNS = [m for m in QUALITY if m[0] in ("psnr", "mouth_psnr", "sync_corr", "id_sim", "jitter")]
ROBUST_COLUMNS.append(FLICKER)
# What each corruption damages, so what its verdict is on: an audio shift breaks lip-sync timing, another
# identity the likeness, temporal jitter and flicker the motion. On the clean corpus: all three (what a
# robust method may cost when nothing is wrong).
ATTACKED = {
    None: ("sync_corr", "id_sim", "jitter"),
    "audio_shift": ("sync_corr",),
    "identity": ("id_sim",),
    "occlusion": ("id_sim",),
    "temporal": ("jitter",),
}
FLICKER_METRICS = ("jitter", "flicker", "sync_corr")
# Per-client groups' (weight, ISFA score) in the robust table, from metrics.jsonl (runs without DP).
CLIENT_KEYS = ("weight_corrupted", "weight_clean", "score_corrupted", "score_clean")


def corrupted_clients(cfg) -> set[str]:
    """The run's clients that own an identity whose training clips its corpus corrupted (split.json)."""
    from privfedtalk.federated.clients import register_clients

    split = json.loads((Path(cfg.data.root) / "split.json").read_text())
    corrupted = set((split.get("corruption") or {}).get("identities", {}))
    return {c.client_id for c in register_clients(cfg) if corrupted & set(c.identities)}


def client_groups(records: list[dict], corrupted: set[str], alpha: float) -> dict:
    """Mean over the run's client-rounds of the corrupted and of the clean clients' aggregation weight,
    times the clients in that round (1: an equal share, FedAvg's with equal data), and ISFA score
    s = α·identity + (1 − α)·temporal of the signals they sent (None where no such client-round)."""
    from privfedtalk.federated import aggregation, signals

    weights = {True: [], False: []}
    scores = {True: [], False: []}
    for record in records:
        round_weights = record.get("weights") or {}
        for client, weight in round_weights.items():
            weights[client in corrupted].append(weight * len(round_weights))
        for client, sent in (record.get("signals") or {}).items():
            if signals.IDENTITY in sent and signals.TEMPORAL in sent:
                score = aggregation.reliability_score(sent[signals.IDENTITY], sent[signals.TEMPORAL], alpha)
                scores[client in corrupted].append(score)

    def mean(values):
        return float(np.mean(values)) if values else None

    return {
        "weight_corrupted": mean(weights[True]),
        "weight_clean": mean(weights[False]),
        "score_corrupted": mean(scores[True]),
        "score_clean": mean(scores[False]),
    }


def clip_means(per_clip: list[dict], keep, keys) -> dict | None:
    """Mean of each of `keys` over the evaluated clips whose client satisfies `keep` (None: no such clip)."""
    rows = [r for r in per_clip if keep(r.get("client"))]
    if not rows:
        return None
    return {key: float(np.mean([r[key] for r in rows if r.get(key) is not None] or [np.nan])) for key in keys}


def summarize_robust(row: Row, scenario, corrupted: set[str]) -> dict:
    """summarize(row) scored on the scenario's clean clients only, with flicker; the scenario
    (plan.Scenario), its attacked metrics, the corrupted clients' own scores of them, and the corrupted
    vs clean clients' mean weight and ISFA score (CLIENT_KEYS; mean over the row's runs). `corrupted`:
    the scenario's corrupted clients (corrupted_clients; every run of a row trains on one corpus).

    A corrupted client's own personalized model carries its corruption in its identity adapter, which no
    aggregation rule reaches; what aggregation decides is how much the corrupted updates spoil the
    shared adapter for everyone else. So the columns and verdicts are the clean clients' (the same
    clients in every method of a scenario; all clients on the clean corpus)."""
    out = summarize(row)
    keys = [key for key, *_ in ROBUST_COLUMNS]
    per_group, own = [], []
    for label, run in row.runs.items():
        per_clip = run.eval.get("per_clip") or []
        clean = clip_means(per_clip, lambda client: client not in corrupted, keys)
        values = out["per_seed"][label]
        values.update(clean or {"flicker": run.eval["metrics"].get("flicker")})
        bad = clip_means(per_clip, lambda client: client in corrupted, keys)
        if bad is not None:
            own.append(bad)
        if run.cfg is not None and run.records:
            per_group.append(client_groups(run.records, corrupted, float(run.cfg.federated.isfa_alpha)))
    for key in keys:
        out["mean"][key], out["std"][key] = mean_and_std([v.get(key) for v in out["per_seed"].values()])
    attacked = list(FLICKER_METRICS if row.table == "flicker" else ATTACKED[scenario.corruption])
    out.update(
        scenario=scenario.name,
        scenario_label=scenario.label,
        corruption=scenario.corruption,
        fraction=scenario.fraction,
        method=row.method,
        evaluation=dict(row.evaluation),
        attacked=attacked,
        scored_on="clean clients" if scenario.corruption else "all clients",
        corrupted_own={key: float(np.mean([o[key] for o in own])) for key in attacked} if own else None,
        clients={key: mean_and_std([g[key] for g in per_group])[0] for key in CLIENT_KEYS},
    )
    return out


def scenario_groups(table: dict) -> list[tuple[list[dict], dict]]:
    """(the scenario's robust rows, its FedAvg row) per scenario of the robust table, in table order;
    scenarios without a FedAvg row are left out (nothing to compare against)."""
    robust = table.get("robust") or []
    groups = []
    for scenario in dict.fromkeys(s["scenario"] for s in robust):
        rows = [s for s in robust if s["scenario"] == scenario]
        reference = next((s for s in rows if s["method"] == "fedavg"), None)
        if reference is not None:
            groups.append((rows, reference))
    return groups


def robust_pairs(table: dict) -> list[tuple[dict, dict, list]]:
    """(row, reference, metrics) of the robust table (every method against FedAvg in its scenario, on
    the scenario's attacked metrics) and of the flicker table (ISFA + TDC against ISFA)."""
    pairs = []
    for rows, reference in scenario_groups(table):
        pairs += [(s, reference, [METRIC[key] for key in s["attacked"]]) for s in rows if s is not reference]
    flicker = {s["method"]: s for s in table.get("flicker") or []}
    if "isfa" in flicker and "isfa-tdc" in flicker:
        tdc = flicker["isfa-tdc"]
        pairs.append((tdc, flicker["isfa"], [METRIC[key] for key in tdc["attacked"]]))
    return pairs


def verdict_cell(summary: dict, reference: str, verdicts: dict) -> str:
    """'sync corr better (Holm p 0.01)' per attacked metric, or '—' where nothing was compared."""
    parts = []
    for key in summary["attacked"]:
        entry = verdicts.get((summary["row"], reference, key))
        if entry is not None:
            parts.append(f"{entry['label']}: {verdict_mark(entry)}")
    return "; ".join(parts) or "—"


def pair_cell(summary: dict, first: str, second: str, decimals: int = 2) -> str:
    a, b = (summary["clients"].get(key) for key in (first, second))
    if a is None and b is None:
        return "—"
    return f"{fmt(a, decimals)} / {fmt(b, decimals)}"


def robust_markdown(summaries: list[dict], verdicts: dict) -> str:
    """One line per scenario x method: quality, the verdict against the scenario's FedAvg on its
    attacked metrics, and the corrupted / clean clients' mean weight share and ISFA score."""
    head = ["scenario", "method", "seeds"] + [label for _, label, _, _ in ROBUST_COLUMNS]
    head += [
        "vs FedAvg (attacked metric)",
        "corrupted clients' own (attacked metric)",
        "same clients, clean corpus (attacked metric)",
        "weight share corrupted / clean",
        "ISFA score corrupted / clean",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    references = {s["scenario"]: s["row"] for s in summaries if s["method"] == "fedavg"}
    for s in summaries:
        cells = [s["scenario_label"], s["label"], runs_cell(s)]
        cells += [cell(s, key, decimals) for key, _, _, decimals in ROBUST_COLUMNS]
        if s["method"] == "fedavg":
            cells.append("reference (attacked: " + ", ".join(METRIC[k][1] for k in s["attacked"]) + ")")
        else:
            cells.append(verdict_cell(s, references.get(s["scenario"], ""), verdicts))
        own = s.get("corrupted_own")
        cells.append(
            "; ".join(f"{METRIC[k][1]} {fmt(v, METRIC[k][3])}" for k, v in own.items()) if own else "—"
        )
        cells.append(damage_cell(s))
        cells += [
            pair_cell(s, "weight_corrupted", "weight_clean"),
            pair_cell(s, "score_corrupted", "score_clean", 3),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def flicker_markdown(summaries: list[dict], verdicts: dict) -> str:
    """ISFA and ISFA + TDC sampled with independent noise per frame: jitter, flicker, sync corr."""
    metrics = [METRIC[key] for key in FLICKER_METRICS]
    head = ["row", "seeds"] + [label for _, label, _, _ in metrics] + ["vs ISFA"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    reference = next((s["row"] for s in summaries if s["method"] == "isfa"), "")
    for s in summaries:
        cells = [s["label"], runs_cell(s)] + [cell(s, key, decimals) for key, _, _, decimals in metrics]
        cells.append("reference" if s["row"] == reference else verdict_cell(s, reference, verdicts))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def robust_sections(table: dict) -> list[tuple[str, str]]:
    """(title, markdown) of the robust and flicker tables; none without their rows."""
    verdicts = verdict_index(table)
    sections = []
    if table.get("robust"):
        sections.append(
            (
                f"Robustness: methods under corrupted clients ({runs_span(table['robust'])})",
                robust_markdown(table["robust"], verdicts) + "\n\n" + spread_note(table["robust"]),
            )
        )
    if table.get("flicker"):
        sections.append(
            (
                f"Flicker: independent initial noise per frame ({runs_span(table['flicker'])})",
                flicker_markdown(table["flicker"], verdicts) + "\n\n" + spread_note(table["flicker"]),
            )
        )
    return sections


ROBUST_HOW_TO_READ = [
    "Robustness: each scenario trains every method on its own corpus, in which the training clips of a "
    "share of the private clients are damaged (audio_shift: the audio moved 3-6 frames; identity: half "
    "the frames show another person; temporal: per-frame head jitter and brightness flicker). Held-out "
    "clips are never damaged: every run is evaluated on the clean corpus's held-out clips, with one "
    "backbone pretrained on the clean public identities. The quality columns and verdicts score the "
    "scenario's CLEAN clients only (all clients on the clean corpus): a corrupted client's own model "
    "carries its damage in its identity adapter, which no aggregation rule reaches, so what aggregation "
    "decides is how much the corrupted updates spoil the shared adapter for the others; the corrupted "
    "clients' own scores are in their own column, and 'same clients, clean corpus' is the same method "
    "trained on the undamaged corpus, scored on the same clients, with Welch's p against the scenario "
    "(unadjusted): the damage the corrupted updates did to the others, i.e. what there is to protect. "
    "The verdict column compares each method with "
    "FedAvg in the same scenario on the metric the corruption attacks (audio_shift: sync corr; identity: "
    "ID sim; temporal: jitter; clean: all three). Weight share: a client's aggregation weight times the "
    "clients in its round (1 = an equal share, as FedAvg gives clients with equal data), averaged over "
    "the corrupted clients' client-rounds and over the clean ones'; ISFA score: the s = α·identity + "
    "(1 − α)·temporal its reported data signals give (ISFA rows). A corrupted share well under the clean "
    "one means the signals told the clients apart; an audio shift leaves the frames clean, so the data "
    "signals cannot see it. Flicker: mean absolute change between consecutive generated frames (lower: "
    "steadier; a still picture scores 0, so read it with jitter, the error against the real motion).",
    "",
    "Flicker table: ISFA and ISFA + TDC trained on the clean corpus as in the robust table, but sampled "
    "with independent initial noise per frame instead of one shared draw: shared noise hides temporal "
    "inconsistency, independent noise shows whether the model itself keeps consecutive frames "
    "consistent, which is what TDC trains for.",
    "",
]


def robust_findings(table: dict, verdicts: dict) -> list[str]:
    """Per scenario the verdicts against FedAvg and whether the signals separated the clients; the
    flicker rows' verdicts."""
    lines = []
    for rows, reference in scenario_groups(table):
        parts = [
            f"{s['label']} ({verdict_cell(s, reference['row'], verdicts)})"
            for s in rows
            if s is not reference
        ]
        text = f"Scenario {rows[0]['scenario_label']}, against FedAvg: " + "; ".join(parts) + "."
        if reference.get("damage"):
            text += f" FedAvg's clean clients on the undamaged corpus: {damage_cell(reference)}."
        isfa = next((s for s in rows if s["method"] == "isfa"), None)
        if isfa is not None and isfa["clients"]["weight_corrupted"] is not None:
            weights = pair_cell(isfa, "weight_corrupted", "weight_clean")
            scores = pair_cell(isfa, "score_corrupted", "score_clean", 3)
            text += f" ISFA's weight share corrupted / clean: {weights} (score {scores})."
        lines.append(text)
    flicker = {s["method"]: s for s in table.get("flicker") or []}
    if "isfa" in flicker and "isfa-tdc" in flicker:
        lines.append(
            "Flicker rows (independent noise per frame), ISFA + TDC against ISFA: "
            + verdict_cell(flicker["isfa-tdc"], flicker["isfa"]["row"], verdicts)
            + "."
        )
    return lines


def damage(summary: dict, clean_row: Row, corrupted: set[str]) -> dict:
    """What the corruption did to the clean clients under this method: per attacked metric, the same
    method's runs on the clean corpus scored on the same (here clean) clients, and Welch's p of the
    scenario's values against them (unadjusted; a diagnostic, not one of the reading's verdicts). If the
    corrupted updates do not move the clean clients' scores, there is nothing for a robust aggregation
    rule to protect, whatever its signals see. `corrupted`: the scenario's corrupted clients."""
    keys = summary["attacked"]
    reference = []
    for run in clean_row.runs.values():
        scored = clip_means(run.eval.get("per_clip") or [], lambda client: client not in corrupted, keys)
        if scored is not None:
            reference.append(scored)
    out = {}
    for key in keys:
        values = [v.get(key) for v in summary["per_seed"].values() if v.get(key) is not None]
        base = [r[key] for r in reference]
        mean, std = mean_and_std(base)
        test = welch_test(values, base) if len(values) > 1 and len(base) > 1 else None
        p = None if test is None else test[1]
        out[key] = {"clean_corpus_mean": mean, "clean_corpus_std": std, "p": p}
    return out


def damage_cell(summary: dict) -> str:
    """'jitter 0.0074 ± 0.0002 on the clean corpus (Welch p 0.6)' per attacked metric, or '—'."""
    parts = []
    for key, entry in (summary.get("damage") or {}).items():
        _, label, _, decimals = METRIC[key]
        text = f"{label} {fmt(entry['clean_corpus_mean'], decimals)}"
        if entry["clean_corpus_std"] is not None:
            text += f" ± {entry['clean_corpus_std']:.{decimals}f}"
        if entry["p"] is not None:
            text += f" (Welch p {entry['p']:.2g})"
        parts.append(text)
    return "; ".join(parts) or "—"


def scenario_table(bench: Benchmark, selected: list[Row]) -> tuple[list[dict], list[dict], list[dict]]:
    """(robust summaries, flicker summaries, scenarios) of a scenario preset's selected rows; scenarios:
    each one's corpus and corrupted identities, for table.json."""
    index = {s.name: s for s in plan_scenarios(bench.preset)}
    robust_rows = [r for r in selected if r.table == "robust"]
    flicker_rows = [r for r in selected if r.table == "flicker"]
    # Once per scenario (split.json + the client registry), not once per run.
    corrupted = {}
    for row in robust_rows + flicker_rows:
        if row.scenario not in corrupted:
            corrupted[row.scenario] = corrupted_clients(row.first_run().cfg)
    robust = [summarize_robust(r, index[r.scenario], corrupted[r.scenario]) for r in robust_rows]
    flicker = [summarize_robust(r, index[r.scenario], corrupted[r.scenario]) for r in flicker_rows]
    clean_rows = {r.method: r for r in robust_rows if r.scenario == "clean"}
    for summary, row in zip(robust, robust_rows):
        if summary["corruption"] and row.method in clean_rows:
            summary["damage"] = damage(summary, clean_rows[row.method], corrupted[row.scenario])
    corpora = {}
    for row in robust_rows:
        if row.scenario not in corpora:
            root = Path(row.first_run().cfg.data.root)
            record = json.loads((root / "split.json").read_text()).get("corruption") or {}
            scenario = index[row.scenario]
            corpora[row.scenario] = {
                "name": scenario.name,
                "corruption": scenario.corruption,
                "fraction": scenario.fraction,
                "data": str(root),
                "corrupted_identities": sorted(record.get("identities", {})),
            }
    return robust, flicker, list(corpora.values())


# ---------------------------------------------------------------------------- the honest reading


def verdict_index(table: dict) -> dict:
    """{(row, reference, metric): comparison entry}; computes the family when table has none yet."""
    comparison = table.get("comparison")
    if comparison is None:
        comparison = compare(table)
    return {(c["row"], c["baseline"], c["metric"]): c for c in comparison}


def verdict_mark(entry: dict) -> str:
    if entry["verdict"] == NOT_JUDGED:
        return f"not judged: n = {entry['n_row']} vs {entry['n_baseline']}"
    return f"{entry['verdict']}, Holm p {entry['p_holm']:.2g}"


def against(row: dict, ref: dict, ref_name: str, verdicts: dict) -> tuple[str, Counter]:
    """Key-metric differences row − ref, each with its tested verdict; (text, verdict counts)."""
    decimals = {key: d for key, _, _, d in QUALITY}
    parts, tally = [], Counter()
    for key in KEY_METRICS:
        entry = verdicts.get((row["row"], ref["row"], key))
        if entry is None:
            continue
        tally[entry["verdict"]] += 1
        delta = entry["mean_row"] - entry["mean_baseline"]
        parts.append(f"{entry['label']} {delta:+.{decimals[key]}f} ({verdict_mark(entry)})")
    return f"vs {ref_name}: " + ", ".join(parts), tally


def tally_text(tally: Counter) -> str:
    text = f"{tally[BETTER]} better, {tally[WORSE]} worse, {tally[NO_DIFFERENCE]} no difference shown"
    return text + (f", {tally[NOT_JUDGED]} not judged" if tally[NOT_JUDGED] else "")


def outcome(tally: Counter, quiet: str) -> str:
    """How a row pair came out: not judged, the quiet sentence when nothing differs, else the tally."""
    if not tally or tally[NOT_JUDGED] == sum(tally.values()):
        return f"not judged (fewer than {MIN_SEEDS} seeds on a side)"
    if tally[BETTER] + tally[WORSE] == 0:
        return quiet
    return tally_text(tally)


def main_findings(table: dict, main: dict, verdicts: dict) -> list[str]:
    """FedAvg vs local-only, FedProx vs FedAvg, the comparison's tally, centralized vs FedAvg."""
    lines = []
    fedavg = main.get("fedavg")
    if fedavg and "local-only" in main:
        text, tally = against(fedavg, main["local-only"], "local-only", verdicts)
        quiet = "federating the shared adapter shows no difference on the key metrics"
        lines.append(f"FedAvg {text}: {outcome(tally, quiet)}.")
    if fedavg and "fedprox" in main:
        text, tally = against(main["fedprox"], fedavg, "FedAvg", verdicts)
        lines.append(f"FedProx {text}: {outcome(tally, 'indistinguishable (no difference shown)')}.")
    pairs = [
        c for c in verdicts.values() if c["row"] == "privfedtalk" and c["baseline"] in ("fedavg", "fedprox")
    ]
    if pairs:
        tally = Counter(c["verdict"] for c in pairs)
        lines.append(
            f"PrivFedTalk vs FedAvg/FedProx, {len(pairs)} (metric, baseline) pairs: {tally_text(tally)}."
        )
    if fedavg and "centralized" in main:
        central = main["centralized"]
        text, tally = against(central, fedavg, "FedAvg", verdicts)
        quiet = "no gap for federation to close shown"
        lines.append(
            f"Centralized (one client with all private data; {central['n_seeds']} seed(s)) {text}: "
            f"{outcome(tally, quiet)}."
        )
    return lines


def below_reference(entry: dict | None) -> bool:
    """The row's mean is worse than the reference's; float noise between equal means is not."""
    if entry is None or math.isclose(entry["mean_row"], entry["mean_baseline"], rel_tol=1e-9, abs_tol=1e-12):
        return False
    return entry["gain"] < 0


def bound_flags(verdicts: dict) -> list[str]:
    """Where a reference row is on the wrong side of FedAvg: centralized (meant as the upper bound)
    below it, or local-only (no federation) above it, on sync corr and mouth PSNR seed means."""
    lines = []
    for key in BOUND_METRICS:
        below = verdicts.get(("centralized", "fedavg", key))
        if below_reference(below):
            lines.append(
                f"Flag: centralized is not an upper bound here on {below['label']}, its mean is below "
                f"FedAvg's ({entry_numbers(below)}; {verdict_mark(below)})."
            )
        federation = verdicts.get(("fedavg", "local-only", key))
        if below_reference(federation):
            lines.append(
                f"Flag: FedAvg does not beat local-only on {federation['label']}, local-only's mean is "
                f"higher ({entry_numbers(federation)}; {verdict_mark(federation)})."
            )
    return lines


def ablation_findings(table: dict, verdicts: dict) -> list[str]:
    ablation = {s["row"]: s for s in table.get("ablation", [])}
    if "adapters-only" not in ablation:
        return []
    lines = []
    for name, row in ablation.items():
        if name == "adapters-only":
            continue
        text, tally = against(row, ablation["adapters-only"], "adapters-only", verdicts)
        lines.append(f"Ablation {row['label']} {text}: {outcome(tally, 'no difference shown')}.")
    return lines


def privacy_findings(table: dict, main: dict, verdicts: dict) -> list[str]:
    """The sweep's points; the ε=∞ point against FedAvg (clipping) and each noise level against it."""
    privacy = table.get("privacy") or []
    if not privacy:
        return []
    points = []
    for row in privacy:
        eps = row["mean"].get("epsilon")
        eps_text = "∞" if eps is None else f"{eps:.2f}"
        points.append(
            f"target {row['target_epsilon'] or '∞'} -> ε {eps_text}: PSNR "
            f"{fmt(row['mean']['psnr'], 2)}, sync {fmt(row['mean']['sync_corr'], 3)}"
        )
    lines = ["Privacy-utility (measured ε): " + "; ".join(points) + "."]
    ref = next((r for r in privacy if r["target_epsilon"] is None), None)
    if ref is None:
        return lines
    if "fedavg" in main:
        text, tally = against(ref, main["fedavg"], "FedAvg", verdicts)
        if tally[WORSE]:
            result = "what DP costs here is already lost to clipping, before any noise"
        else:
            result = outcome(tally, "no cost of clipping and secure aggregation shown")
        lines.append(
            f"The ε=∞ point (PrivFedTalk's pipeline with clipping at C={table.get('clip_norm')} and "
            f"secure aggregation, no noise) {text}: {result}."
        )
    tallies = {str(r["target_epsilon"]): against(r, ref, "ε=∞", verdicts)[1] for r in privacy if r is not ref}
    moved = ", ".join(eps for eps, t in tallies.items() if t[BETTER] + t[WORSE])
    if not tallies:
        return lines
    if not any(t[NOT_JUDGED] < sum(t.values()) for t in tallies.values()):
        lines.append(f"Against the ε=∞ point: not judged (fewer than {MIN_SEEDS} seeds on a side).")
    elif moved:
        lines.append(f"Against the ε=∞ point, key metrics differ at target ε {moved}.")
    else:
        lines.append("Against the ε=∞ point, no noise level shows a difference on a key metric.")
    return lines


def rule_statement(verdicts: dict) -> str:
    """Which test, α, how many comparisons, the correction, and what ± means."""
    entries = list(verdicts.values())
    tested = sum(e["verdict"] != NOT_JUDGED for e in entries)
    untested = len(entries) - tested
    correction = (
        f"{CORRECTION_NAME} correction over those {tested} tests"
        if tested
        else "no correction (no comparison could be tested)"
    )
    return (
        f"Verdicts: {TEST_NAME}, α = {ALPHA}; this reading states {len(entries)} (row pair, metric) "
        f"comparisons, {tested} tested and {untested} not judged (a row with fewer than {MIN_SEEDS} seeds "
        f"has no spread to test); {correction}. 'better'/'worse': adjusted p ≤ {ALPHA} in the metric's "
        "direction; 'no difference shown': not significant after correction, which is not evidence of "
        "equality. ± is the sample std (ddof=1) over the row's seeds. All numbers come from one synthetic "
        "corpus."
    )


def reading(table: dict) -> list[str]:
    """Plain-language findings beside the per-metric comparison, each verdict from the one tested family
    (table["comparison"]), the bound flags, and the statement of the test and its correction."""
    main = {s["row"]: s for s in table["main"]}
    verdicts = verdict_index(table)
    lines = (
        main_findings(table, main, verdicts)
        + bound_flags(verdicts)
        + ablation_findings(table, verdicts)
        + privacy_findings(table, main, verdicts)
        + robust_findings(table, verdicts)
    )
    if lines:
        lines.append(rule_statement(verdicts))
    return lines


def audit_summary(row: Row) -> dict | None:
    """A privacy row's canary audit (audit.json of its seed-0 config with canaries), or None; with the
    server's accountant ε of the row's own first run next to it."""
    if row.audit is None or row.audit.audit is None:
        return None
    audit = row.audit.audit
    records = row.first_run().records
    return {
        "run": row.audit.key,
        "canaries": audit["canaries_inserted"],
        "participations": audit["canary_participations"],
        "clients_per_round": int(row.audit.cfg.federated.clients_per_round),
        "accountant": audit["accountant"],
        "row_epsilon_server_worst": records[-1].get("epsilon_server_worst") if records else None,
        "final_model": audit["empirical"]["final_model"],
        "all_iterates": audit["empirical"]["all_iterates"],
        "confidence": audit["empirical"]["confidence"],
    }


def interval_text(result: dict | None) -> str:
    """'6.12 [1.69, 7.46]' for an empirical ε with its interval; '—' if absent."""
    if not result:
        return "—"
    return f"{result['epsilon']:.2f} [{result['low']:.2f}, {result['high']:.2f}]"


def audit_cells(summary: dict) -> list[str]:
    audit = summary.get("audit")
    if audit is None:
        return ["—", "—", "—"]
    return [
        fmt(audit["row_epsilon_server_worst"], 2, "epsilon"),
        interval_text(audit["final_model"]),
        interval_text(audit["all_iterates"]),
    ]


AUDIT_HEAD = ["ε server worst (accountant)", "ε empirical, final model [95% CI]", "ε empirical, all iterates"]


def audit_findings(table: dict) -> list[str]:
    """One line per audited privacy row: accountant ε next to the canary audit's estimates."""
    audited = [s for s in table.get("privacy", []) if s.get("audit")]
    if not audited:
        return []
    first = audited[0]["audit"]
    lines = [
        f"Privacy audit (one-shot canary audit, Andrew et al. 2024): each privacy row's seed-0 config "
        f"re-run with {first['canaries']} canary clients added to the population and clients per round "
        f"scaled to keep the sampling rate (so the same noise z and accountant ε); empirical ε at the "
        f"row's δ with a {first['confidence']:.0%} bootstrap interval. The audit is a lower-bound "
        "estimate: it must not exceed the accountant's ε beyond its interval, and must be large where "
        "there is no noise."
    ]
    for s in audited:
        a = s["audit"]
        accountant = {k: fmt(v, 2, "epsilon") for k, v in a["accountant"].items()}
        lines.append(
            f"{s['label']}: accountant ε observer {accountant.get('epsilon_observer', '—')}, "
            f"server worst {accountant.get('epsilon_server_worst', '—')}; empirical "
            f"final model {interval_text(a['final_model'])}, all iterates {interval_text(a['all_iterates'])}"
            f" ({a['participations']} canary participations)."
        )
    return lines


# ------------------------------------------------------------------------------------- the tables


def markdown_table(summaries: list[dict], extra_privacy: bool = False) -> str:
    head = ["row", "seeds"]
    if extra_privacy:
        head += ["target ε", "measured ε", "noise z"] + AUDIT_HEAD
    head += [label for key, label, *_ in COLUMNS if not (extra_privacy and key == "epsilon")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summaries:
        cells = [s["label"], runs_cell(s)]
        if extra_privacy:
            z = s.get("noise_multiplier")
            cells += [
                fmt(s.get("target_epsilon"), 0, "epsilon"),
                fmt(s["mean"]["epsilon"], 2, "epsilon"),
                "—" if z is None else f"{z:.3f}",
                *audit_cells(s),
            ]
        cells += [cell(s, k, d) for k, _, _, d in COLUMNS if not (extra_privacy and k == "epsilon")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def runs_cell(summary: dict) -> str:
    """The "seeds" column: the federated seeds, times the backbones where there is more than one."""
    backbones = summary.get("n_backbones", 1)
    return str(summary["n_seeds"]) + (f" x {backbones} backbones" if backbones > 1 else "")


def runs_span(summaries: list[dict]) -> str:
    """What a table's rows span, for its title: "3 seeds", "3 seeds x 2 backbones" (or per row)."""
    spans = {(s["n_seeds"], s.get("n_backbones", 1)) for s in summaries}
    if len(spans) > 1:
        return "seeds per row"
    seeds, backbones = spans.pop()
    return plural(seeds, "seed") + (f" x {backbones} backbones" if backbones > 1 else "")


def spread_note(summaries: list[dict]) -> str:
    """The line under a table that says which variance each ± includes (per row where rows differ)."""
    texts = {s.get("spread") for s in summaries}
    if len(texts) == 1:
        return f"Every row: {texts.pop()}."
    return " ".join(f"{s['label']}: {s.get('spread')}." for s in summaries)


def markdown_tables(table: dict) -> list[tuple[str, str]]:
    """(title, markdown) of each non-empty table; the markdown ends with its spread note."""
    return [
        (
            title.format(runs=runs_span(table[name])),
            markdown_table(table[name], extra_privacy=name == "privacy") + "\n\n" + spread_note(table[name]),
        )
        for name, title in TABLES.items()
        if table[name]
    ]


def write_markdown(path: Path, table: dict) -> None:
    sections = markdown_tables(table) + cohort_sections(table) + robust_sections(table)
    path.write_text("\n\n".join(f"## {title}\n\n{md}" for title, md in sections) + "\n")


def write_csv(path: Path, table: dict) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    header = ["table", "row", "label", "n_seeds", "target_epsilon"]
    for key, *_ in COLUMNS:
        header += [f"{key}_mean", f"{key}_std"]
    writer.writerow(header)
    for name in TABLES:
        for s in table[name]:
            line = [name, s["row"], s["label"], s["n_seeds"], s.get("target_epsilon", "")]
            for key, *_ in COLUMNS:
                line += [s["mean"][key], s["std"][key]]
            writer.writerow(["" if v is None else v for v in line])
    path.write_text(buf.getvalue())


def tex_escape(text: str) -> str:
    for old, new in (
        ("\\", "\\textbackslash{}"),
        ("&", "\\&"),
        ("%", "\\%"),
        ("_", "\\_"),
        ("#", "\\#"),
        ("±", "$\\pm$"),
        ("ε", "$\\varepsilon$"),
        ("λ", "$\\lambda$"),
        ("∞", "$\\infty$"),
        ("—", "--"),
    ):
        text = text.replace(old, new)
    return text


def write_tex(path: Path, table: dict, preset: str) -> None:
    parts = [f"% PrivFedTalk benchmark, preset {preset}; generated by experiments/run_benchmark.py"]
    for title, markdown in markdown_tables(table):
        grid, note = markdown.split("\n\n", 1)
        md = grid.splitlines()
        header = [c.strip() for c in md[0].strip("|").split("|")]
        parts += [
            "\\begin{table}[t]",
            "\\centering\\scriptsize",
            f"\\caption{{{tex_escape(title)}. {tex_escape(note)}}}",
            "\\begin{tabular}{l" + "r" * (len(header) - 1) + "}",
            "\\hline",
            " & ".join(tex_escape(h) for h in header) + " \\\\",
            "\\hline",
        ]
        for line in md[2:]:
            cells = [c.strip() for c in line.strip("|").split("|")]
            parts.append(" & ".join(tex_escape(c) for c in cells) + " \\\\")
        parts += ["\\hline", "\\end{tabular}", "\\end{table}", ""]
    path.write_text("\n".join(parts))


# ------------------------------------------------------------------------------------ the figures


def plot_convergence(path: Path, rows: list[Row]) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for row in rows:
        curves = []
        for run in row.runs.values():
            curve = {r["round"]: r["loss"] for r in run.records if r.get("loss") is not None}
            curves.append(curve)
        rounds = sorted({k for c in curves for k in c})
        if not rounds:
            continue
        mean = [np.mean([c[r] for c in curves if r in c]) for r in rounds]
        std = [np.std([c[r] for c in curves if r in c]) for r in rounds]
        ax.plot(rounds, mean, marker="o", label=f"{row.label} (n={len(curves)})")
        if len(curves) > 1:
            ax.fill_between(rounds, np.subtract(mean, std), np.add(mean, std), alpha=0.2)
    ax.set_xlabel("round")
    ax.set_ylabel("diffusion loss (mean over sampled clients)")
    ax.set_title("Convergence (mean ± std over each row's runs)")
    ax.legend(fontsize=7)
    save_figure(fig, path)


def _privacy_axis(ax, points, index: int, name: str, references, inf_x: float, finite, has_inf) -> None:
    """One panel: quality `index` (1 PSNR, 2 sync) against measured ε, references as levels."""
    pts = sorted(
        (inf_x if (p[0] is None or math.isinf(p[0])) else p[0], p[index], p[3])
        for p in points
        if p[index] is not None
    )
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label="privfedtalk")
    key = "psnr" if index == 1 else "sync_corr"
    for ref, style in zip(references, ("--", ":", "-."), strict=False):
        if ref["mean"].get(key) is not None:
            label = f"{ref['label']} ({ref['n_seeds']} seeds)"
            ax.axhline(ref["mean"][key], linestyle=style, color="gray", label=label)
    if references:
        ax.legend(fontsize=6)
    for x, y, label in pts:
        ax.annotate(label, (x, y), fontsize=6, textcoords="offset points", xytext=(3, 3))
    ax.set_xscale("log")
    if has_inf:
        ticks = sorted(set(finite)) + [inf_x]
        ax.set_xticks(ticks, [f"{t:.3g}" for t in ticks[:-1]] + ["∞ (no DP)"])
        ax.minorticks_off()
    ax.set_xlabel("measured ε after the last round (δ fixed)")
    ax.set_ylabel(name)


def plot_privacy(path: Path, summaries: list[dict], references: list[dict] = ()) -> None:
    """Quality against measured ε; `references` (e.g. FedAvg, local-only) are drawn as dashed levels,
    so the axis shows differences at the scale that separates methods, not at the noise's scale."""
    plt = pyplot()
    points = []
    for s in summaries:
        target = s.get("target_epsilon", 0.0)
        name = s["label"] if target == 0.0 else f"target {fmt(target, 0, 'epsilon')}"
        points.append((s["mean"]["epsilon"], s["mean"]["psnr"], s["mean"]["sync_corr"], name))
    finite = [p[0] for p in points if p[0] is not None and math.isfinite(p[0])]
    inf_x = max(finite) * 4 if finite else 1.0
    has_inf = any(p[0] is None or math.isinf(p[0]) for p in points)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, index, name in ((axes[0], 1, "PSNR (dB)"), (axes[1], 2, "sync corr")):
        _privacy_axis(ax, points, index, name, references, inf_x, finite, has_inf)
    fig.suptitle(f"Privacy-utility (privfedtalk, {runs_span(summaries)})")
    save_figure(fig, path)


def load_sample(run: Run):
    path = Path(run.cfg.out_dir) / "eval_sample.npz"
    with np.load(path) as data:
        return data["frames"], str(data["clip"])


def clip_by_name(run: Run, name: str, cache):
    identity = name.split("/", 1)[0]
    for clip in cache.heldout(run.cfg, identity):
        if f"{identity}/{clip.name}" == name:
            return clip
    raise SystemExit(f"held-out clip {name} not found")


def _draw_frame(ax, i: int, j: int, t: int, label: str, frames, clip) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    if frames is None:  # the reference line: only the input frame
        if j == 0:
            ax.imshow(clip.frames[0], interpolation="nearest")
        else:
            ax.axis("off")
    else:
        ax.imshow(frames[t], interpolation="nearest")
    if i == 0 and j == 0:
        ax.set_title("frame 0", fontsize=7)
    elif i == 1:
        ax.set_title(f"frame {t}", fontsize=7)
    if j == 0:
        ax.set_ylabel(label, fontsize=6)


def plot_qualitative(path: Path, rows: list[Row], cache, frames_shown: int) -> None:
    """The first row's sample clip: reference, ground truth and every row's generation of it."""
    plt = pyplot()
    first = rows[0].first_run()
    _, name = load_sample(first)
    clip = clip_by_name(first, name, cache)
    steps = np.linspace(0, len(clip.frames) - 1, frames_shown).round().astype(int)
    lines = [("reference (input)", None), ("ground truth", clip.frames)]
    for row in rows:
        frames, sample_name = load_sample(row.first_run())
        if sample_name == name:
            lines.append((row.label, frames))
    fig, axes = plt.subplots(
        len(lines), len(steps), figsize=(1.6 * len(steps), 1.6 * len(lines)), squeeze=False
    )
    for i, (label, frames) in enumerate(lines):
        for j, t in enumerate(steps):
            _draw_frame(axes[i][j], i, j, t, label, frames, clip)
    fig.suptitle(f"Held-out clip {name} (seed 0 runs)", fontsize=8)
    save_figure(fig, path)


def write_samples(folder: Path, rows: list[Row], cache) -> list[str]:
    from privfedtalk.data.media import write_video

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for row in rows:
        run = row.first_run()
        frames, name = load_sample(run)
        clip = clip_by_name(run, name, cache)
        path = folder / f"{folder_name(row.name)}.mp4"
        write_video(path, frames, clip.fps, audio=clip.audio, sample_rate=clip.sample_rate)
        written.append(str(path.name))
    return written


def write_figures(out_dir: Path, bench: Benchmark, table: dict, cache) -> None:
    """convergence.png, privacy_utility.png (if any DP row), qualitative.png and samples/*.mp4."""
    main_rows = [r for r in bench.selected if r.table == "main"]
    # A scenario preset's figures and samples: the clean corpus's rows (every method once) and the
    # flicker rows, not every scenario's.
    clean = [
        r for r in bench.selected if r.table == "flicker" or (r.table == "robust" and r.scenario == "clean")
    ]
    plot_rows = main_rows or clean or bench.selected
    plot_convergence(out_dir / "convergence.png", plot_rows)
    privacy = table["privacy"] or [s for s in table["main"] if s["row"] == "privfedtalk"]
    if privacy:
        levels = [s for s in table["main"] if s["row"] in ("fedavg", "local-only")]
        plot_privacy(out_dir / "privacy_utility.png", privacy, levels)
    if table.get("cohort"):
        plot_cohort(out_dir / "utility_vs_cohort.png", table["cohort"])
    frames_shown = int(bench.preset["qualitative_frames"])
    plot_qualitative(out_dir / "qualitative.png", plot_rows, cache, frames_shown)
    table["samples"] = write_samples(out_dir / "samples", plot_rows, cache)


# ------------------------------------------------------------------------------------- README.md


def cache_note(times: dict) -> str:
    """Why corpus and pretraining took 0 s, if they did: a reused cache, or --checkpoint/--data."""
    built = times.get("cached_build_s") or {}
    if built and times["synth_s"] + times["pretrain_s"] == 0:
        return (
            " (cache reused; building it took " + ", ".join(f"{k} {v:.0f} s" for k, v in built.items()) + ")"
        )
    if times["synth_s"] + times["pretrain_s"] == 0:
        return " (given with --checkpoint/--data)"
    return ""


def readme_what_ran(table: dict, rows: list[Row]) -> list[str]:
    preset = table["preset"]
    return [
        f"# PrivFedTalk benchmark — preset `{preset}`",
        "",
        f"Generated by `experiments/run_benchmark.py --preset {preset}` on {table['finished']}. "
        f"{table['description']}.",
        "",
        "## What ran",
        "",
        f"- Data: `{table['data']}` (synthetic corpus: procedural faces, speech-like audio); backbone "
        f"`{table['checkpoint']}`, pretrained on the public identities only. "
        f"{table['private_identities']} private identities are the clients.",
        f"- Budget, identical for every row: {table['budget_text']}. Rows differ only in method keys "
        "(privfedtalk/configs/{fedavg,fedprox,privfedtalk}.yaml plus the keys listed per row in "
        "`table.json`).",
        f"- Evaluation: the held-out clips (the last {table['heldout_clips']} clip(s) of each identity, "
        "never trained on) of the first "
        f"{len(table['eval_identities'])} private identities ({', '.join(table['eval_identities'])}), "
        "each generated by its own client's personalized model (global shared adapter + that client's "
        f"identity adapter) from the clip's first frame and its audio; DDIM steps: "
        f"{table['eval_sample_steps'] or 'checkpoint default'}; metric family: {table['metric_family']}.",
        f"- Every row (main, ablation, privacy-utility) on federated seeds {table['seeds']}"
        + backbones_text(table)
        + ". Mean ± sample std (ddof=1) over all of a row's runs; no ± where there is one run; the note "
        "under each table says which variance its ± includes.",
        "",
        "Rows: "
        + "; ".join(f"`{r.name}` = {r.label}" + (f" ({r.note})" if r.note else "") for r in rows)
        + ".",
        "",
    ]


def backbones_text(table: dict) -> str:
    """The backbones every row's runs span, for the README."""
    checkpoints = table.get("checkpoints") or [table["checkpoint"]]
    if len(checkpoints) == 1:
        return ", on one pretrained backbone"
    return (
        f", each on {len(checkpoints)} backbones pretrained under different seeds ("
        + ", ".join(f"backbone {b}: `{c}`" for b, c in enumerate(checkpoints))
        + "; runs on backbone b >= 1 are `runs/ROW/bB-seedS/`)"
    )


def pretrain_text(seconds: float, by_backbone: list | None) -> str:
    """Pretraining seconds, split per backbone where there are several."""
    if not by_backbone or len(by_backbone) < 2:
        return f"{seconds:.1f}"
    return f"{seconds:.1f} (" + " + ".join(f"b{b} {t:.1f}" for b, t in enumerate(by_backbone)) + ")"


def readme_machine_and_time(table: dict) -> list[str]:
    times, m = table["timings"], table["machine"]
    lines = [
        "## Machine and time",
        "",
        f"- {m['platform']}, {m['cpu_count']} CPUs ({m['processor']}), Python {m['python']}, "
        f"torch {m['torch']}" + (f", GPU {m['cuda_device']}" if "cuda_device" in m else ", no GPU") + ".",
        f"- corpus: {times['synth_s']:.1f} s, backbone pretraining: "
        f"{pretrain_text(times['pretrain_s'], times.get('pretrain_s_by_backbone'))} s"
        + cache_note(times)
        + f", federated runs: {times['train_s']:.1f} s, evaluation: {times['eval_s']:.1f} s, "
        f"tables/figures/samples: {times['outputs_s']:.1f} s; whole invocation: {times['total_s']:.1f} s.",
        "",
        "Invocations that built these results (oldest first; `invocations.jsonl`):",
        "",
        "| finished | total s | corpus s | pretraining s | runs wall s | jobs | trained | reused |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for h in table.get("invocations", []):
        lines.append(
            f"| {h['finished']} | {h['total_s']:.1f} | {h['synth_s']:.1f} "
            f"| {pretrain_text(h['pretrain_s'], h.get('pretrain_s_by_backbone'))} "
            f"| {h['runs_wall_s']:.1f} | {h['jobs']} | {h['runs_trained']} | {h['runs_reused']} |"
        )
    lines += [
        "",
        "| run | status | train s (this invocation) | eval s (this invocation) | sum of round s | eval s |",
        "|---|---|---|---|---|---|",
    ]
    for key, info in table["runs"].items():
        lines.append(
            f"| {key} | {info['status']} | {info['train_s']:.1f} | {info['eval_s']:.1f} "
            f"| {info['rounds_s']:.1f} | {info['last_eval_s']:.1f} |"
        )
    return lines + [
        "",
        "`reused`: finished by an earlier invocation (0 s now); the last two columns are what each run "
        "cost when it ran (its rounds from metrics.jsonl, its evaluation from eval.json).",
        "",
    ]


HOW_TO_READ = [
    "## How to read the tables",
    "",
    "- PSNR / SSIM: whole frame vs the real clip (higher is better); mouth PSNR: inside the "
    "ground-truth mouth box; sync corr: correlation of the generated mouth opening with the real one "
    "at lag 0 (higher is better; 0 = no relation); ID sim: identity-encoder cosine similarity to the "
    "reference (higher is better); jitter: error of frame-to-frame change (lower is better).",
    f"- {FD_LABEL}: Fréchet distance between real and generated frames in the project's small "
    "identity encoder's feature space (lower is better). It is not FID and not comparable to FID.",
    f"- {FID_LABEL}: true FID over the pooled frames, computed only when `--inception FILE` names a "
    "local TorchScript Inception-v3 feature extractor (nothing is downloaded); otherwise n/a.",
    "- upload KB/client-round: what a sampled client sends per round (fixed-point words under "
    "secure aggregation, else float32); local-only uploads nothing; centralized: not applicable. "
    "round s: median wall time of a round (all sampled clients trained in turn in one process). "
    "peak MiB: peak resident memory of the benchmark process during the run (GPU: peak allocated), "
    "reset before each run. ε: measured (ε, δ) client-level DP after the last round (∞: no DP).",
    "- All rows are small-scale synthetic-data runs. Verdicts (better / worse / no difference shown / not "
    f"judged) come from {TEST_NAME} with {CORRECTION_NAME} correction, α = {ALPHA}; a row with fewer than "
    f"{MIN_SEEDS} seeds is not judged.",
    "",
]


COHORT_HOW_TO_READ = [
    "Cohort sweep: m = clients per round (PrivFedTalk: Poisson sampling at rate m/N, so m is the expected "
    "count). ε observer: what anyone who sees the released model learns; ε server worst/median: over the "
    "clients, for a server that knows who took part. noise/signal: ‖released sum − noise-free sum‖ ÷ "
    "‖noise-free sum‖ per round (privacy.log_signal_norm, a simulation-only diagnostic), the median over "
    "rounds, averaged over seeds; about z·√d/m. `utility_vs_cohort.png` plots sync corr against m.",
    "",
]


def readme_reading(table: dict) -> list[str]:
    lines = ["## Honest reading", ""]
    lines += [f"- {text}" for text in table.get("reading", [])]
    entries = [c for c in table["comparison"] if c["row"] == "privfedtalk"]
    if not entries and (table.get("robust") or table.get("flicker")):
        return lines  # a scenario preset: its verdicts are in the robust and flicker tables
    lines += ["", "Per metric, PrivFedTalk against each baseline:", ""]
    if not entries:
        return lines + ["No comparison: the privfedtalk row or the fedavg/fedprox rows were not selected."]
    federated = Counter(c["verdict"] for c in entries if c["baseline"] != "local-only")
    lines.append(
        f"privfedtalk against FedAvg/FedProx over {sum(federated.values())} (metric, baseline) pairs: "
        f"{tally_text(federated)}. Criterion: {TEST_NAME}, α = {ALPHA}, {CORRECTION_NAME}-adjusted over "
        "every comparison the reading states (its last line gives the count).\n"
    )
    return lines + [f"- {c['text']}" for c in entries]


def readme(table: dict, args, rows: list[Row]) -> str:
    """OUT/PRESET/README.md: what ran, where and how long, the tables, how to read them, the findings."""
    lines = readme_what_ran(table, rows) + readme_machine_and_time(table)
    for title, markdown in markdown_tables(table) + cohort_sections(table) + robust_sections(table):
        lines += [f"## {title}", "", markdown, ""]
    if table.get("cohort"):
        lines += COHORT_HOW_TO_READ
    if table.get("robust") or table.get("flicker"):
        lines += ROBUST_HOW_TO_READ
    lines += HOW_TO_READ + readme_reading(table)
    lines += [
        "",
        "## Files",
        "",
        "`table.md`, `table.csv`, `table.json` (every number, per seed), `table.tex`, `convergence.png`, "
        "`privacy_utility.png`, `utility_vs_cohort.png` (cohort presets), `qualitative.png`, `samples/*.mp4` "
        "(seed-0 generations with the driving "
        "audio), `runs/ROW/seedK/` (backbone 0) and `runs/ROW/bB-seedK/` (backbone B >= 1): config.yaml, "
        "metrics.jsonl, eval.json, TensorBoard logs.",
        "",
        f"Command line: `{' '.join(args.argv)}`",
        "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------- table.json itself


def describe(bench: Benchmark, args) -> dict:
    """What ran: preset, backbone, budget, evaluation, columns and the selected rows' configs."""
    fed, preset = bench.base.federated, bench.preset
    table = {
        "preset": args.preset,
        "description": preset["description"],
        "data": str(bench.data),
        "checkpoint": str(bench.checkpoint),
        "checkpoints": [str(c) for c in bench.checkpoints],
        "backbone_seeds": len(bench.checkpoints),
        "private_identities": len(bench.split["private"]),
        "seeds": list(range(bench.seeds)),
        "budget": {
            "rounds": int(fed.rounds),
            "clients_per_round": bench.budget["clients_per_round"],
            "local_steps": bench.budget["local_steps"],
            "batch_windows": int(fed.batch_windows),
            "lr": float(fed.lr),
            "server_lr": float(fed.server_lr),
        },
        "eval_identities": bench.spec.identities,
        "heldout_clips": int(bench.base.data.heldout_clips),
        "eval_sample_steps": preset["eval_sample_steps"],
        "columns": [
            {"key": k, "label": label, "direction": {1: "higher", -1: "lower", 0: None}[d]}
            for k, label, d, _ in COLUMNS
        ],
        "rows": {
            r.name: {"config": r.config_file, "overrides": r.overrides, "label": r.label}
            for r in bench.selected
        },
    }
    table["budget_text"] = ", ".join(f"{k}={v}" for k, v in table["budget"].items())
    return table


def run_costs(runs: list[Run]) -> dict:
    return {
        run.key: {
            "status": run.status,
            "train_s": run.train_s,
            "eval_s": run.eval_s,
            # What the run cost when it ran (also for reused runs): its rounds, its last evaluation.
            "rounds_s": float(sum(r.get("round_seconds", 0.0) for r in run.records)),
            "last_eval_s": float(run.eval.get("seconds", 0.0)) if run.eval else 0.0,
        }
        for run in runs
    }


def build_table(bench: Benchmark, args) -> dict:
    """Everything table.json holds but the timings, samples and invocation history."""
    table = describe(bench, args)
    for name in TABLES:
        table[name] = [summarize(r) for r in bench.selected if r.table == name]
    for row, summary in zip([r for r in bench.selected if r.table == "privacy"], table["privacy"]):
        summary["audit"] = audit_summary(row)
    cohort = [summarize_cohort(r) for r in bench.selected if r.table == "cohort"]
    if cohort:
        table["cohort"], table["cohort_goal"] = cohort, goal_ratios(cohort)
    if any(r.table in ("robust", "flicker") for r in bench.selected):
        table["robust"], table["flicker"], table["scenarios"] = scenario_table(bench, bench.selected)
        table["heldout_root"] = bench.spec.heldout_root
    table["comparison"] = compare(table)
    privacy_rows = [r for r in bench.selected if r.table == "privacy"]
    if privacy_rows:
        table["clip_norm"] = float(privacy_rows[0].first_run().cfg.privacy.clip_norm)
    table["reading"] = reading(table) + audit_findings(table)
    families = {run.eval.get("metric_family") for run in bench.runs}  # audits are not evaluated
    table["metric_family"] = "; ".join(sorted(f for f in families if f))
    table["runs"] = run_costs(bench.runs + bench.audits)
    table["machine"] = machine()
    return table


def record_invocation(path: Path, table: dict, args, runs) -> list[dict]:
    """Append this invocation to OUT/PRESET/invocations.jsonl; return them all, oldest first.

    A re-run that reuses finished runs takes seconds; the history keeps the wall time of the
    invocation that trained them, which is what a preset's time budget is about.
    """
    history = read_jsonl(path)
    statuses = [run.status for run in runs]
    times = table["timings"]
    history.append(
        {
            "finished": table["finished"],
            "command": " ".join(args.argv),
            "total_s": round(times["total_s"], 1),
            "synth_s": round(times["synth_s"], 1),
            "pretrain_s": round(times["pretrain_s"], 1),
            "pretrain_s_by_backbone": [round(t, 1) for t in times.get("pretrain_s_by_backbone", [])],
            "runs_wall_s": round(times["runs_wall_s"], 1),
            "jobs": times["jobs"],
            "runs_trained": sum(s in ("trained", "resumed") for s in statuses),
            "runs_reused": sum(s in ("reused", "re-evaluated") for s in statuses),
        }
    )
    atomic_write_text("".join(json.dumps(h) + "\n" for h in history), path)
    return history


def write_report(out_dir: Path, bench: Benchmark, args, cache, times: dict, started: float) -> dict:
    """Every output under OUT/PRESET/; returns table.json's content."""
    t0 = time.perf_counter()
    table = build_table(bench, args)
    write_markdown(out_dir / "table.md", table)
    write_csv(out_dir / "table.csv", table)
    write_tex(out_dir / "table.tex", table, args.preset)
    write_figures(out_dir, bench, table, cache)
    times["outputs_s"] = time.perf_counter() - t0
    times["total_s"] = time.perf_counter() - started
    table["timings"] = times
    table["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    table["invocations"] = record_invocation(
        out_dir / "invocations.jsonl", table, args, bench.runs + bench.audits
    )
    (out_dir / "README.md").write_text(readme(table, args, bench.selected))
    (out_dir / "table.json").write_text(json.dumps(table, indent=1, default=float))
    return table
