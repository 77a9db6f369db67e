"""Per-client ISFA signals on corrupted synthetic corpora: clean clients against each corruption kind.

.venv/bin/python experiments/signal_distributions.py [--out DIR] [--identities 8] [--seconds 1.5]
    [--size 32] [--fraction 0.5] [--seed 0] [key=value config overrides ...]

For each corruption kind it synthesizes a small corpus with that share of private clients corrupted,
then computes every private client's signals exactly as the client does (federated/signals.py on its
own training frames; no model is trained, as the signals read the data), calibrated and quantized by
the config's ranges and `signal_bits`. Writes DIR/signal_distributions.json (every client and a
summary per group) and prints a table of min / mean / max per group.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from privfedtalk.config import load_config
from privfedtalk.data.synthetic import Corruption, synthesize_corpus
from privfedtalk.federated import aggregation, signals
from privfedtalk.federated.clients import register_clients, training_clips

COLUMNS = (
    ("raw", signals.IDENTITY),
    ("raw", signals.TEMPORAL),
    ("sent", signals.IDENTITY),
    ("sent", signals.TEMPORAL),
    ("score", "s"),
    ("isfa", "weight_factor"),
)


def client_rows(cfg, corruption_record: dict | None) -> list[dict]:
    """One row per private client: its corruption kind ("clean"), raw and sent signals, score, weights."""
    corrupted = (corruption_record or {}).get("identities", {})
    fed = cfg.federated
    rows = []
    for spec in register_clients(cfg):
        clips, _ = training_clips(cfg, spec)
        raw = signals.raw_data_signals([clip.frames for clip in clips])
        sent = signals.quantized_signals(raw, fed)
        score = aggregation.reliability_score(sent[signals.IDENTITY], sent[signals.TEMPORAL], fed.isfa_alpha)
        kinds = {corrupted[i]["kind"] for i in spec.identities if i in corrupted}
        rows.append(
            {
                "client": spec.client_id,
                "identities": spec.identities,
                "group": ",".join(sorted(kinds)) or "clean",
                "raw": raw,
                "sent": sent,
                "score": {"s": score},
                "isfa": {"weight_factor": math.exp(fed.isfa_gamma * (score - 1.0))},
                "passes_threshold": score >= fed.signal_threshold,
            }
        )
    return rows


def summarize(rows: list[dict]) -> dict:
    """{group: {"clients": n, "<part>.<name>": [min, mean, max], "pass_rate": share over threshold}}."""
    out: dict[str, dict] = {}
    for group in sorted({r["group"] for r in rows}):
        members = [r for r in rows if r["group"] == group]
        summary = {"clients": len(members)}
        for part, name in COLUMNS:
            values = [r[part][name] for r in members]
            summary[f"{part}.{name}"] = [min(values), sum(values) / len(values), max(values)]
        summary["pass_rate"] = sum(r["passes_threshold"] for r in members) / len(members)
        out[group] = summary
    return out


def table(summary: dict) -> str:
    header = ["group", "n"] + [f"{part}.{name.split('_')[0]}" for part, name in COLUMNS] + ["pass"]
    lines = ["  ".join(f"{h:>22}" if i > 1 else f"{h:>12}" for i, h in enumerate(header))]
    for group, values in summary.items():
        cells = [f"{group:>12}", f"{values['clients']:>12}"]
        for part, name in COLUMNS:
            lo, mean, hi = values[f"{part}.{name}"]
            cells.append(f"{mean:.3f} [{lo:.3f},{hi:.3f}]".rjust(22))
        cells.append(f"{values['pass_rate']:.2f}".rjust(22))
        lines.append("  ".join(cells))
    return "\n".join(lines)


def measure(out: Path, identities: int, seconds: float, size: int, fraction: float, seed: int, overrides):
    results = {"settings": dict(identities=identities, seconds=seconds, size=size, fraction=fraction)}
    rows = []
    for offset, kind in enumerate(Corruption):
        root = out / f"corpus_{kind.value}"
        manifest = synthesize_corpus(
            root,
            identities=identities,
            clips=3,
            seconds=seconds,
            size=size,
            seed=seed + offset,  # other clean identities in every corpus
            corruption=kind.value,
            corrupt_fraction=fraction,
        )
        cfg = load_config(None, [f"data.root={root}", f"data.size={size}", *overrides])
        rows += [{**r, "corpus": kind.value} for r in client_rows(cfg, manifest["corruption"])]
    results["config"] = {
        key: list(value) if not isinstance(value, (int, float)) else value
        for key, value in cfg.federated.items()
        if key.startswith("signal_") or key.startswith("isfa_")
    }
    results["clients"] = rows
    results["summary"] = summarize(rows)
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/signal_distributions"))
    parser.add_argument("--identities", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--fraction", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", help="config key=value (e.g. federated.signal_bits=3)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results = measure(
        args.out, args.identities, args.seconds, args.size, args.fraction, args.seed, args.overrides
    )
    (args.out / "signal_distributions.json").write_text(json.dumps(results, indent=1))
    print(table(results["summary"]))
    print(f"wrote {args.out / 'signal_distributions.json'}")


if __name__ == "__main__":
    main()
