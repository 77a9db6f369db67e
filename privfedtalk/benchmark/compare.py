"""Two benchmark invocations side by side: how far apart are their tables?

    .venv/bin/python -m privfedtalk.benchmark.compare results/small/table.json /tmp/again/small/table.json

Compares every run's numbers (each row's per-run values, table.json "per_seed") and the canary
audits' estimates. Runs without DP noise must repeat exactly on the same machine (deterministic
kernels, seeded data order, fixed thread count): their tolerance is 0. Rows with DP noise cannot
repeat: the noise and the Poisson sample come from OS entropy on purpose (a seed would let the server
rebuild them), so for them the report gives the largest difference next to the row's seed spread,
and only the accountant's observer ε (a function of z, q and the rounds) must repeat.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

# A DP row's numbers that do not depend on the noise or the sample drawn.
NOISE_FREE_KEYS = ("epsilon", "upload_kb")
TIMING_KEYS = ("round_s", "peak_mib")  # machine load, not results: reported, never compared


def is_noised(summary: dict) -> bool:
    """A row whose runs add DP noise (their measured ε is finite)."""
    epsilon = summary["mean"].get("epsilon")
    return epsilon is not None and math.isfinite(epsilon)


def summaries(table: dict) -> dict:
    """(table name, row) -> the row's summary, over the main, ablation, privacy and cohort tables."""
    out = {}
    for name in ("main", "ablation", "privacy", "cohort"):
        for summary in table.get(name) or []:
            out[(name, summary["row"])] = summary
    return out


def row_difference(a: dict, b: dict) -> dict:
    """Largest |a − b| per key over the row's runs (keys in both), and whether any run differs."""
    largest: dict[str, float] = {}
    for run in sorted(set(a["per_seed"]) & set(b["per_seed"])):
        for key, x in a["per_seed"][run].items():
            y = b["per_seed"][run].get(key)
            if key in TIMING_KEYS or not isinstance(x, (int, float)) or not isinstance(y, (int, float)):
                continue
            if math.isinf(x) and x == y:
                continue
            largest[key] = max(largest.get(key, 0.0), abs(x - y))
    return largest


def compare_tables(a: dict, b: dict) -> dict:
    """Per row: its largest differences, whether it is noised, and whether it met its tolerance (0 for
    every number of a noise-free row; 0 for the noise-free keys of a noised row)."""
    left, right = summaries(a), summaries(b)
    rows = []
    for key in [k for k in left if k in right]:
        noised = is_noised(left[key])
        diff = row_difference(left[key], right[key])
        checked = NOISE_FREE_KEYS if noised else tuple(diff)
        rows.append(
            {
                "table": key[0],
                "row": key[1],
                "noised": noised,
                "largest": diff,
                "spread": {k: left[key]["std"].get(k) for k in diff},
                "reproduced": all(diff.get(k, 0.0) == 0.0 for k in checked),
            }
        )
    return {
        "rows": rows,
        "missing": sorted(str(k) for k in set(left) ^ set(right)),
        "audits": audit_differences(a, b),
        "reproduced": all(r["reproduced"] for r in rows) and not set(left) ^ set(right),
    }


def audit_differences(a: dict, b: dict) -> list[dict]:
    """The canary audits' estimates of both invocations (they train with DP noise or none)."""

    def estimate(audit: dict, model: str):
        return (audit[model] or {}).get("epsilon")

    out = []
    for x, y in zip(a.get("privacy") or [], b.get("privacy") or []):
        if x.get("audit") and y.get("audit"):
            entry = {"row": x["row"]}
            for model in ("final_model", "all_iterates"):
                entry[model] = [estimate(x["audit"], model), estimate(y["audit"], model)]
            out.append(entry)
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", type=Path, help="table.json of one invocation")
    parser.add_argument("second", type=Path, help="table.json of the other")
    args = parser.parse_args(argv)
    result = compare_tables(json.loads(args.first.read_text()), json.loads(args.second.read_text()))
    for row in result["rows"]:
        worst = max(row["largest"].items(), key=lambda kv: kv[1], default=("-", 0.0))
        kind = "DP noise (OS entropy)" if row["noised"] else "no noise: must repeat"
        print(f"{row['table']:8s} {row['row']:20s} {kind:24s} largest |diff| {worst[0]} {worst[1]:.3g}")
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
