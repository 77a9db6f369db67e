"""The cohort sweep (presets with `cohorts`, e.g. dp-scale): its rows, that the older presets still plan
exactly the runs they planned before it existed, and a tiny cohort benchmark end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from privfedtalk.benchmark import plan, report
from privfedtalk.benchmark.presets import PRESETS

OLD_PRESETS = ("tiny", "small", "laptop-gpu", "paper")
SNAPSHOT = Path(__file__).parent / "data" / "old_preset_plans.json"


def planned_runs(preset: dict, tmp: Path) -> dict:
    """Every row's definition and run key per seed, and the shared overrides, with the paths made generic."""
    checkpoint = tmp / "checkpoint"
    checkpoint.mkdir(parents=True, exist_ok=True)
    (checkpoint / "generator.json").write_text(json.dumps({"size": preset["synth"]["size"]}))
    common = plan.common_overrides(preset, Path("/corpus"), checkpoint)
    seeds = int(preset["seeds"])
    rows = plan.row_definitions(
        preset, seeds, {"clients_per_round": 4, "local_steps": 10, "batch_windows": 4}, 8
    )
    plan.plan_runs(rows, common, ["threads=1"], tmp / "runs")
    # data.latent_cache only says where encoded clips are kept; it changes no number (tested in
    # test_shared_latent_cache_encodes_once_and_changes_nothing), so the snapshot does not hold it.
    kept = [o for o in common if not o.startswith("data.latent_cache=")]
    generic = [o.replace(str(checkpoint.resolve()), "CHECKPOINT") for o in kept]
    return {
        "common": generic,
        "rows": [
            {
                "name": r.name,
                "table": r.table,
                "label": r.label,
                "config_file": r.config_file,
                "overrides": r.overrides,
                "seeds": r.seeds,
                "target_epsilon": r.target_epsilon,
                "runs": {str(seed): run.key for seed, run in sorted(r.runs.items())},
            }
            for r in rows
        ],
    }


def test_old_presets_plan_exactly_the_runs_they_planned_before_the_cohort_sweep(tmp_path):
    # The snapshot was updated once since: centralized, ablation and privacy rows moved from seed 0
    # alone to the preset's seeds (same keys and configs at seed 0, new runs at seeds 1, 2); and once
    # more for the centralized row's batch (m x batch_windows windows, local_steps steps) and small's
    # client_batch=4, 6 local steps, ablations without "+dp" and ε sweep {∞, 8, 2}.
    snapshot = json.loads(SNAPSHOT.read_text())
    for name in OLD_PRESETS:
        assert "cohorts" not in PRESETS[name]
        assert planned_runs(PRESETS[name], tmp_path / name) == snapshot[name], name


@pytest.mark.parametrize("name", ["dp-scale", "dp-scale-gpu"])
def test_dp_scale_presets_plan_the_cohort_sweep(name, tmp_path):
    preset = PRESETS[name]
    cohorts = preset["cohorts"]
    largest = max(cohorts)
    assert cohorts == sorted(cohorts) and largest >= 64 and preset["seeds"] >= 3
    assert preset["synth"]["private_mouth_lag"] == 2  # the same domain shift as `small`
    private = round(preset["synth"]["identities"] * (1 - preset["synth"]["public_fraction"]))
    assert private >= 4 * largest  # hundreds of clients; Poisson rate q = m / N <= 1/4
    planned = planned_runs(preset, tmp_path)
    rows = {r["name"]: r for r in planned["rows"]}
    expected = [f"{curve}-m{m}" for m in cohorts for curve in ("privfedtalk", "fedavg", "local-only")]
    expected += ["privfedtalk-adaptive", "privfedtalk-momentum", "privfedtalk-adam"]
    assert list(rows) == expected
    for m in cohorts:
        for curve in ("privfedtalk", "fedavg", "local-only"):
            row = rows[f"{curve}-m{m}"]
            assert f"federated.clients_per_round={m}" in row["overrides"]
            seeds = preset["seeds"] if m == largest else preset.get("cohort_seeds", preset["seeds"])
            assert row["seeds"] == list(range(seeds))
        assert "privacy.log_signal_norm=true" in rows[f"privfedtalk-m{m}"]["overrides"]
        assert rows[f"privfedtalk-m{m}"]["target_epsilon"] == 8.0
        assert "privacy.dp=true" not in rows[f"fedavg-m{m}"]["overrides"]
        assert "federated.server_lr=0.0" in rows[f"local-only-m{m}"]["overrides"]
    for key in preset.get("dp_overrides", []):  # the DP rows' own tuning, theirs alone
        assert all(key in r["overrides"] for n, r in rows.items() if n.startswith("privfedtalk"))
        assert not any(key in r["overrides"] for n, r in rows.items() if not n.startswith("privfedtalk"))
    momentum = rows["privfedtalk-momentum"]["overrides"]  # a variant's own server lr wins
    assert momentum.index("federated.server_lr=1.0") > max(
        (momentum.index(k) for k in preset.get("dp_overrides", []) if k in momentum), default=-1
    )
    assert "privacy.clip=adaptive" in rows["privfedtalk-adaptive"]["overrides"]
    assert "federated.server_optimizer=momentum" in rows["privfedtalk-momentum"]["overrides"]
    assert "federated.server_optimizer=adam" in rows["privfedtalk-adam"]["overrides"]
    for variant in ("adaptive", "momentum", "adam"):
        assert f"federated.clients_per_round={largest}" in rows[f"privfedtalk-{variant}"]["overrides"]
    # Every (row, seed) is its own run: no two rows of the sweep share a config.
    keys = [key for r in planned["rows"] for key in r["runs"].values()]
    assert len(keys) == len(set(keys))


def _cohort_summary(
    curve: str, m: int, sync: float, std: float | None = None, seeds: int = 1, per_seed: list | None = None
) -> dict:
    mean = {key: None for key, *_ in report.COHORT_COLUMNS} | {"sync_corr": sync}
    spread = {key: None for key in mean} | {"sync_corr": std}
    return {
        "row": f"{curve}-m{m}",
        "label": curve,
        "curve": curve,
        "m": m,
        "n_seeds": seeds,
        "mean": mean,
        "std": spread,
        "per_seed": {str(i): {"sync_corr": v} for i, v in enumerate(per_seed or [])},
    }


def test_goal_ratio_is_the_share_of_fedavgs_gain_privfedtalk_keeps():
    summaries = [
        _cohort_summary("privfedtalk", 4, 0.10),
        _cohort_summary("fedavg", 4, 0.30),
        _cohort_summary("local-only", 4, 0.10),
        _cohort_summary("privfedtalk", 64, 0.25, 0.02, 3),
        _cohort_summary("fedavg", 64, 0.30, 0.01, 3),
        _cohort_summary("local-only", 64, 0.20, 0.01, 3),
        _cohort_summary("privfedtalk", 16, 0.2),  # no fedavg/local-only at 16: no ratio
        _cohort_summary("fedavg", 8, 0.2),
        _cohort_summary("local-only", 8, 0.2),
        _cohort_summary("privfedtalk", 8, 0.3),  # FedAvg = local-only: nothing to keep, no ratio
        _cohort_summary("privfedtalk-adam", 64, 0.5),
    ]
    ratios = {r["m"]: r["ratio"] for r in report.goal_ratios(summaries)}
    assert set(ratios) == {4, 8, 64}
    assert ratios[4] == pytest.approx(0.0) and ratios[64] == pytest.approx(0.5) and ratios[8] is None
    text = report.goal_markdown(report.goal_ratios(summaries))
    assert "| 64 | 0.250 | 0.300 | 0.200 | 0.50 |" in text and "FedAvg = local-only" in text
    assert "| 4 | 0.100 | 0.300 | 0.100 | 0.00 | — | — | — |" in text  # one seed a side: no test
    table = report.cohort_markdown(summaries)
    assert "0.250 ± 0.020" in table  # sample std where there are seeds
    assert "| ∞ | ∞ | ∞ |" in table  # no ε recorded: no DP


def test_goal_figure_tests_each_gain_against_the_seeds_spread():
    """FedAvg clearly above local-only (every seed), PrivFedTalk in between but overlapping both."""
    summaries = [
        _cohort_summary("fedavg", 64, 0.40, per_seed=[0.39, 0.40, 0.41]),
        _cohort_summary("local-only", 64, 0.10, per_seed=[0.09, 0.10, 0.11]),
        _cohort_summary("privfedtalk", 64, 0.25, per_seed=[0.05, 0.25, 0.45]),
    ]
    (goal,) = report.goal_ratios(summaries)
    assert goal["ratio"] == pytest.approx(0.5)
    assert goal["p_fedavg_vs_local_only"] < 1e-3  # a gain beyond the spread: something to keep
    assert goal["p_privfedtalk_vs_fedavg"] > 0.05 and goal["p_privfedtalk_vs_local_only"] > 0.05
    row = report.goal_markdown([goal]).splitlines()[-1]
    assert row.startswith("| 64 | 0.250 | 0.400 | 0.100 | 0.50 | ")
    assert row.split(" | ")[5] == f"{goal['p_fedavg_vs_local_only']:.2g}"


def test_cohort_values_take_the_median_noise_to_signal_over_rounds():
    records = [
        {"round": 1, "noise_to_signal": 4.0},
        {"round": 2, "noise_to_signal": 1.0},
        {"round": 3, "noise_to_signal": None},  # a skipped round: no noise-free sum
        {"round": 4, "noise_to_signal": 2.0, "epsilon_observer": 7.9, "epsilon_server_worst": 9.0},
    ]
    run = plan.Run("x/seed0", None, eval={"metrics": {"sync_corr": 0.2, "mouth_psnr": 20.0}}, records=records)
    values = report.cohort_values(run)
    assert values["noise_to_signal"] == 2.0
    assert (values["epsilon_observer"], values["epsilon_server_worst"]) == (7.9, 9.0)
    assert values["epsilon_server_median"] is None and values["sync_corr"] == 0.2


@pytest.fixture(scope="module")
def cohort_bench(tmp_path_factory):
    """A tiny cohort sweep (preset tiny with cohorts [2]) through experiments/run_benchmark.py."""
    from test_experiments_benchmark import load_benchmark

    threads = torch.get_num_threads()  # threads=1 is applied process-wide by the runs
    patch = pytest.MonkeyPatch()
    patch.setitem(PRESETS, "tiny-cohorts", {**PRESETS["tiny"], "cohorts": [2], "seeds": 1})
    out = tmp_path_factory.mktemp("cohorts")
    # Not privfedtalk-adaptive: at m = 2 its bit noise m/20 is too small for ε = 8 (dp-scale: m = 64, 3.2).
    only = ["privfedtalk-m2", "fedavg-m2", "local-only-m2", "privfedtalk-momentum"]
    table = load_benchmark().main(
        ["--preset", "tiny-cohorts", "--out", str(out), "--only", *only, "threads=1"]
    )
    yield out / "tiny-cohorts", table
    patch.undo()
    torch.set_num_threads(threads)


def test_tiny_cohort_sweep_writes_the_cohort_table_and_plot(cohort_bench):
    folder, table = cohort_bench
    assert table["main"] == [] and table["ablation"] == [] and table["privacy"] == []
    rows = {s["row"]: s for s in table["cohort"]}
    assert set(rows) == {"privfedtalk-m2", "fedavg-m2", "local-only-m2", "privfedtalk-momentum"}
    for name in ("privfedtalk-m2", "privfedtalk-momentum"):
        mean = rows[name]["mean"]
        assert mean["noise_to_signal"] > 0 and math.isfinite(mean["noise_to_signal"])
        assert 0 < mean["epsilon_observer"] <= 8.0 + 1e-6
        assert mean["epsilon_server_worst"] >= mean["epsilon_server_median"] > 0
    for name in ("fedavg-m2", "local-only-m2"):
        assert (
            rows[name]["mean"]["noise_to_signal"] is None and rows[name]["mean"]["epsilon_observer"] is None
        )
    for s in rows.values():
        assert (
            s["m"] == 2 and math.isfinite(s["mean"]["sync_corr"]) and math.isfinite(s["mean"]["mouth_psnr"])
        )
    (goal,) = table["cohort_goal"]
    p, f, lo = (rows[f"{c}-m2"]["mean"]["sync_corr"] for c in ("privfedtalk", "fedavg", "local-only"))
    assert goal["m"] == 2 and (goal["privfedtalk"], goal["fedavg"], goal["local_only"]) == (p, f, lo)
    # 2 rounds of the tiny backbone may leave FedAvg's sync exactly at local-only's: then no ratio.
    assert goal["ratio"] == (None if f == lo else pytest.approx((p - lo) / (f - lo)))
    plot = folder / "utility_vs_cohort.png"
    assert plot.is_file() and plot.stat().st_size > 0
    for name in ("table.md", "README.md"):
        text = (folder / name).read_text()
        assert "Utility vs cohort size" in text and "Goal figure" in text
        assert "PrivFedTalk (ε=8), m=2, server momentum" in text
    # The DP rows log the noise-free sum's norm and the noise's every round (privacy.log_signal_norm).
    records = [json.loads(line) for line in (folder / "runs/privfedtalk-m2/seed0/metrics.jsonl").open()]
    rounds = [r for r in records if "round" in r]
    assert len(rounds) == 2 and all(r["noise_norm"] > 0 and r["signal_norm"] > 0 for r in rounds)
