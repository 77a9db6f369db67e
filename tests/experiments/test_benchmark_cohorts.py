"""The cohort sweep (presets with `cohorts`, e.g. dp-scale): its rows, that the older presets still plan
exactly the runs they planned before it existed, and a tiny cohort benchmark end to end."""

from __future__ import annotations

import json
from pathlib import Path

from privfedtalk.benchmark import plan

OLD_PRESETS = ("tiny", "small", "laptop-gpu", "paper")
SNAPSHOT = Path(__file__).parent / "data" / "old_preset_plans.json"


def planned_runs(preset: dict, tmp: Path) -> dict:
    """Every row's definition and run key per seed, and the shared overrides, with the paths made generic."""
    checkpoint = tmp / "checkpoint"
    checkpoint.mkdir(exist_ok=True)
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
