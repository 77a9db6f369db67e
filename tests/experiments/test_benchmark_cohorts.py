"""The cohort sweep (presets with `cohorts`, e.g. dp-scale): its rows, that the older presets still plan
exactly the runs they planned before it existed, and a tiny cohort benchmark end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from privfedtalk.benchmark import plan
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
    rows = plan.row_definitions(preset, seeds, {"clients_per_round": 4, "local_steps": 10}, 8)
    plan.plan_runs(rows, common, ["threads=1"], tmp / "runs")
    generic = [o.replace(str(checkpoint.resolve()), "CHECKPOINT") for o in common]
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
    assert "privacy.clip=adaptive" in rows["privfedtalk-adaptive"]["overrides"]
    assert "federated.server_optimizer=momentum" in rows["privfedtalk-momentum"]["overrides"]
    assert "federated.server_optimizer=adam" in rows["privfedtalk-adam"]["overrides"]
    for variant in ("adaptive", "momentum", "adam"):
        assert f"federated.clients_per_round={largest}" in rows[f"privfedtalk-{variant}"]["overrides"]
    # Every (row, seed) is its own run: no two rows of the sweep share a config.
    keys = [key for r in planned["rows"] for key in r["runs"].values()]
    assert len(keys) == len(set(keys))
