"""The benchmark's numbers and what they say: per-row summaries, the comparison against the seed spread,
plain-language findings, and every output file (table.{md,csv,tex,json}, figures, samples, README.md)."""

from __future__ import annotations

import csv
import io
import json
import math
import time
from pathlib import Path

import numpy as np

from privfedtalk.benchmark.plan import COHORT_CURVES, Benchmark, Row, Run, folder_name
from privfedtalk.benchmark.systems import machine
from privfedtalk.federated.store import atomic_write_text, read_jsonl

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


# ------------------------------------------------------------------------------------ the numbers


def save_figure(fig, path) -> None:
    """Every figure of the report: tight layout, 120 dpi, closed after writing."""
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot().close(fig)


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
        vals = [v[key] for v in per_run.values() if v[key] is not None and math.isfinite(v[key])]
        mean[key] = float(np.mean(vals)) if vals else None
        std[key] = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
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


def judge(method: dict, base: dict, base_name: str, metric: tuple) -> dict | None:
    """privfedtalk against one baseline on one metric; None where either mean is missing."""
    key, label, direction, decimals = metric
    a, b = method["mean"][key], base["mean"][key]
    if a is None or b is None:
        return None
    gain = direction * (a - b)
    sa, sb = method["std"][key], base["std"][key]
    entry = {"baseline": base_name, "metric": key, "label": label, "gain": gain}
    if sa is None or sb is None:
        entry["verdict"] = "not judged"
        entry["text"] = (
            f"{label}: privfedtalk {fmt(a, decimals)} vs {base_name} {fmt(b, decimals)}; "
            f"does not beat {base_name} beyond seed spread (fewer than 2 seeds: no spread measured)"
        )
        return entry
    spread = sa + sb
    entry["spread"] = spread
    numbers = (
        f"privfedtalk {a:.{decimals}f} ± {sa:.{decimals}f} vs {base_name} "
        f"{b:.{decimals}f} ± {sb:.{decimals}f}"
    )
    if gain > spread:
        entry["verdict"] = "beats"
        entry["text"] = f"{label}: beats {base_name} beyond seed spread ({numbers})"
    elif -gain > spread:
        entry["verdict"] = "worse"
        entry["text"] = f"{label}: worse than {base_name} beyond seed spread ({numbers})"
    else:
        entry["verdict"] = "does not beat"
        how = "better, but within the spread" if gain > 0 else "not better"
        entry["text"] = f"{label}: does not beat {base_name} beyond seed spread ({how}; {numbers})"
    return entry


def compare(table: dict) -> list[dict]:
    """privfedtalk against each baseline, metric by metric, against the seed spread.

    "Beats beyond seed spread" = better in the metric's direction by more than std(privfedtalk) +
    std(baseline) (sample std over seeds): the mean ± std intervals do not overlap.
    """
    rows = {s["row"]: s for s in table["main"]}
    method = rows.get("privfedtalk")
    out = []
    for base_name in ("fedavg", "fedprox", "local-only"):
        base = rows.get(base_name)
        if method is None or base is None:
            continue
        entries = (judge(method, base, base_name, metric) for metric in QUALITY)
        out += [entry for entry in entries if entry is not None]
    return out


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


def mean_and_std(values: list) -> tuple[float | None, float | None]:
    """Mean and sample std (None with fewer than 2) of the finite values."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    mean = float(np.mean(finite)) if finite else None
    return mean, float(np.std(finite, ddof=1)) if len(finite) > 1 else None


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


def goal_ratios(summaries: list[dict]) -> list[dict]:
    """Per m: (PrivFedTalk − local-only) / (FedAvg − local-only) of sync corr seed means: the share of what
    federation gains that PrivFedTalk keeps under DP (1: all of it, 0: none). None where FedAvg does
    not differ from local-only (nothing to keep)."""
    private, fedavg, local = (curve_points(summaries, c) for c in ("privfedtalk", "fedavg", "local-only"))
    out = []
    for m in sorted(set(private) & set(fedavg) & set(local)):
        p, f, lo = (x[m]["mean"]["sync_corr"] for x in (private, fedavg, local))
        ratio = (p - lo) / (f - lo) if f != lo else None
        out.append({"m": m, "privfedtalk": p, "fedavg": f, "local_only": lo, "ratio": ratio})
    return out


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
    """The goal figure per m: how much of FedAvg's gain over local-only PrivFedTalk keeps (sync corr)."""
    lines = [
        "| m | PrivFedTalk | FedAvg | local-only | (PrivFedTalk − local-only) ÷ (FedAvg − local-only) |",
        "|---|---|---|---|---|",
    ]
    for r in ratios:
        ratio = "— (FedAvg = local-only)" if r["ratio"] is None else f"{r['ratio']:.2f}"
        lines.append(
            f"| {r['m']} | {r['privfedtalk']:.3f} | {r['fedavg']:.3f} | {r['local_only']:.3f} | {ratio} |"
        )
    return "\n".join(lines)


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


# ---------------------------------------------------------------------------- the honest reading


def against(row: dict, ref: dict, ref_name: str, fedavg: dict | None) -> tuple[str, int]:
    """Key-metric differences row - ref, marked where beyond the yardstick; (text, how many beyond).

    Yardstick: 2 x FedAvg's sample std over its seeds, also for single-seed rows.
    """
    labels = {key: (label, decimals, direction) for key, label, direction, decimals in QUALITY}
    parts, beyond = [], 0
    for key in KEY_METRICS:
        a, b = row["mean"][key], ref["mean"][key]
        if a is None or b is None:
            continue
        label, decimals, direction = labels[key]
        std = fedavg["std"][key] if fedavg else None
        delta, noise = a - b, (2 * std if std is not None else None)
        mark = ""
        if noise is not None and abs(delta) > noise:
            beyond += 1
            mark = " (beyond spread: " + ("better" if direction * delta > 0 else "worse") + ")"
        parts.append(f"{label} {delta:+.{decimals}f}{mark}")
    return f"vs {ref_name}: " + ", ".join(parts), beyond


def main_findings(table: dict, main: dict, fedavg: dict | None) -> list[str]:
    """FedAvg vs local-only, FedProx vs FedAvg, the comparison's tally, centralized vs FedAvg."""
    lines = []
    if fedavg and "local-only" in main:
        text, beyond = against(fedavg, main["local-only"], "local-only", fedavg)
        verdict = (
            "federating the shared adapter changes nothing measurable"
            if beyond == 0
            else (f"federation moves {beyond} of {len(KEY_METRICS)} key metrics beyond the spread")
        )
        lines.append(f"FedAvg {text}: {verdict}.")
    if fedavg and "fedprox" in main:
        text, beyond = against(main["fedprox"], fedavg, "FedAvg", fedavg)
        lines.append(f"FedProx {text}" + (": indistinguishable." if beyond == 0 else "."))
    comparison = table.get("comparison") or []
    if comparison:
        verdicts = [c["verdict"] for c in comparison if c["baseline"] != "local-only"]
        lines.append(
            f"PrivFedTalk vs FedAvg/FedProx, {len(verdicts)} (metric, baseline) pairs: "
            f"{verdicts.count('beats')} better beyond seed spread, {verdicts.count('worse')} worse beyond "
            f"seed spread, {verdicts.count('does not beat')} within the spread."
        )
    if fedavg and "centralized" in main:
        text, beyond = against(main["centralized"], fedavg, "FedAvg", fedavg)
        lines.append(
            f"Centralized (one client with all private data, seed 0) {text}"
            + (": no gap for federation to close here." if beyond == 0 else ".")
        )
    return lines


def ablation_findings(table: dict, fedavg: dict | None) -> list[str]:
    ablation = {s["row"]: s for s in table.get("ablation", [])}
    if "adapters-only" not in ablation:
        return []
    lines = []
    for name, row in ablation.items():
        if name == "adapters-only":
            continue
        text, beyond = against(row, ablation["adapters-only"], "adapters-only", fedavg)
        lines.append(f"Ablation {row['label']} {text}" + (": within the spread." if beyond == 0 else "."))
    return lines


def privacy_findings(table: dict, fedavg: dict | None) -> list[str]:
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
    lines = ["Privacy-utility (measured ε, seed 0): " + "; ".join(points) + "."]
    ref = next((r for r in privacy if r["target_epsilon"] is None), None)
    if ref is not None and fedavg is not None:
        text, beyond = against(ref, fedavg, "FedAvg", fedavg)
        lines.append(
            f"The ε=∞ point (PrivFedTalk's pipeline with clipping at C={table.get('clip_norm')} and "
            f"secure aggregation, no noise) {text}"
            + (
                ": what DP costs here is already lost to clipping, before any noise."
                if beyond
                else ": clipping and secure aggregation cost nothing measurable."
            )
        )
    if ref is not None:
        worst = [r for r in privacy if r is not ref and against(r, ref, "ε=∞", fedavg)[1] > 0]
        moved = ", ".join(str(r["target_epsilon"]) for r in worst)
        lines.append(
            "Against the ε=∞ point, "
            + (
                "no noise level moves a key metric beyond the spread."
                if not worst
                else f"key metrics move beyond the spread at target ε {moved}."
            )
        )
    return lines


def reading(table: dict) -> list[str]:
    """Plain-language findings beside the per-metric comparison, derived from the numbers.

    Single-seed rows (centralized, ablations, privacy-utility) have no spread of their own; their
    differences are measured against FedAvg's seed spread (2 x its sample std), the yardstick used
    in every sentence below.
    """
    main = {s["row"]: s for s in table["main"]}
    fedavg = main.get("fedavg")
    lines = (
        main_findings(table, main, fedavg)
        + ablation_findings(table, fedavg)
        + privacy_findings(table, fedavg)
    )
    if lines:
        seeds = fedavg["n_seeds"] if fedavg else 0
        lines.append(
            f"Yardstick (also for single-seed rows): 2 x FedAvg's sample std over its {seeds} seeds. "
            "All numbers come from one synthetic corpus; a difference inside the yardstick is noise."
        )
    return lines


# ------------------------------------------------------------------------------------- the tables


def markdown_table(summaries: list[dict], extra_privacy: bool = False) -> str:
    head = ["row", "seeds"]
    if extra_privacy:
        head += ["target ε", "measured ε", "noise z"]
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
    sections = markdown_tables(table) + cohort_sections(table)
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


def pyplot():
    """matplotlib's pyplot on the file-only backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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
    plot_rows = main_rows or bench.selected
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
    "- All rows are small-scale synthetic-data runs: differences smaller than the seed spread are noise.",
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
    lines += ["", "Per metric, PrivFedTalk against each baseline:", ""]
    comparison = table["comparison"]
    if not comparison:
        return lines + ["No comparison: the privfedtalk row or the fedavg/fedprox rows were not selected."]
    federated = [c for c in comparison if c["baseline"] != "local-only"]
    beats = [c for c in federated if c["verdict"] == "beats"]
    lines.append(
        f"privfedtalk beats a federated baseline beyond seed spread on {len(beats)} of "
        f"{len(federated)} (metric, baseline) pairs. "
        "Criterion: better in the metric's direction by more than std(privfedtalk) + std(baseline).\n"
    )
    return lines + [f"- {c['text']}" for c in comparison]


def readme(table: dict, args, rows: list[Row]) -> str:
    """OUT/PRESET/README.md: what ran, where and how long, the tables, how to read them, the findings."""
    lines = readme_what_ran(table, rows) + readme_machine_and_time(table)
    for title, markdown in markdown_tables(table) + cohort_sections(table):
        lines += [f"## {title}", "", markdown, ""]
    if table.get("cohort"):
        lines += COHORT_HOW_TO_READ
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
            "last_eval_s": float(run.eval.get("seconds", 0.0)),
        }
        for run in runs
    }


def build_table(bench: Benchmark, args) -> dict:
    """Everything table.json holds but the timings, samples and invocation history."""
    table = describe(bench, args)
    for name in TABLES:
        table[name] = [summarize(r) for r in bench.selected if r.table == name]
    cohort = [summarize_cohort(r) for r in bench.selected if r.table == "cohort"]
    if cohort:
        table["cohort"], table["cohort_goal"] = cohort, goal_ratios(cohort)
    table["comparison"] = compare(table)
    privacy_rows = [r for r in bench.selected if r.table == "privacy"]
    if privacy_rows:
        table["clip_norm"] = float(privacy_rows[0].first_run().cfg.privacy.clip_norm)
    table["reading"] = reading(table)
    families = {run.eval.get("metric_family") for run in bench.runs}
    table["metric_family"] = "; ".join(sorted(f for f in families if f))
    table["runs"] = run_costs(bench.runs)
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
    table["invocations"] = record_invocation(out_dir / "invocations.jsonl", table, args, bench.runs)
    (out_dir / "README.md").write_text(readme(table, args, bench.selected))
    (out_dir / "table.json").write_text(json.dumps(table, indent=1, default=float))
    return table
