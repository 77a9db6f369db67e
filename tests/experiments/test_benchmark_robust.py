"""The robustness benchmark (presets with `scenarios`, e.g. robust): its row plan (every method on every
scenario's own corpus, every run evaluated on the clean held-out clips, the flicker rows sampled with
independent noise), its verdicts and client-weight summaries on constructed values, and a tiny robust
benchmark end to end."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from privfedtalk.benchmark import plan, report
from privfedtalk.benchmark.presets import PRESETS
from privfedtalk.federated.store import run_signature

METHODS = ["fedavg", "fedprox", "isfa", "isfa-tdc", "threshold"]
SCENARIOS = [
    "clean",
    "audio_shift-25",
    "audio_shift-50",
    "identity-25",
    "identity-50",
    "temporal-25",
    "temporal-50",
]


def fake_corpus(folder: Path, private: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "split.json").write_text(json.dumps({"public": ["p0", "p1"], "private": private}))
    return folder


def plan_robust(tmp: Path) -> plan.Benchmark:
    """plan_benchmark of the robust preset on fake corpora (split.json only) and a fake checkpoint."""
    private = [f"id{k:03d}" for k in range(32, 40)]
    data = fake_corpus(tmp / "cache" / "data", private)
    roots = {"clean": data} | {
        name: fake_corpus(tmp / "cache" / f"data-{name}", private) for name in SCENARIOS[1:]
    }
    checkpoint = tmp / "cache" / "pretrain" / "checkpoint"
    checkpoint.mkdir(parents=True)
    (checkpoint / "generator.json").write_text(json.dumps({"size": 32}))
    args = argparse.Namespace(overrides=["threads=1"], seeds=None, only=None, inception=None)
    return plan.plan_benchmark("robust", PRESETS["robust"], data, [checkpoint], args, tmp / "runs", roots)


def test_robust_preset_plans_every_method_on_each_scenarios_own_corpus(tmp_path):
    preset = PRESETS["robust"]
    assert preset["synth"]["private_mouth_lag"] == 2 and preset["synth"]["size"] == 32
    private = round(preset["synth"]["identities"] * (1 - preset["synth"]["public_fraction"]))
    assert private == 8 and preset["seeds"] == 3 and preset["jobs"] == 2
    assert [s.name for s in plan.scenarios(preset)] == SCENARIOS
    bench = plan_robust(tmp_path)
    expected = [f"{s}-{m}" for s in SCENARIOS for m in METHODS] + ["flicker-isfa", "flicker-isfa-tdc"]
    assert [row.name for row in bench.rows] == expected == plan.row_names(preset)
    assert all(
        row.seeds == ([0, 1, 2, 3, 4, 5] if row.table == "flicker" else [0, 1, 2]) for row in bench.rows
    )
    # 105 runs of the robust table + 12 flicker runs: no two rows share a run.
    assert len(bench.runs) == (len(expected) - 2) * 3 + 2 * 6 == 117  # flicker rows: 6 seeds
    clean_root = str((tmp_path / "cache" / "data").resolve())
    assert bench.spec.heldout_root == clean_root  # every run's held-out clips: the clean corpus's
    for row in bench.rows:
        root = (
            clean_root
            if row.scenario == "clean"
            else str((tmp_path / "cache" / f"data-{row.scenario}").resolve())
        )
        for run in row.runs.values():
            cfg = run.cfg
            assert cfg.data.root == root, row.name  # trained on its scenario's corpus
            assert cfg.federated.signal_source == "data" and cfg.federated.rounds == 10
            assert cfg.federated.checkpoint == str((tmp_path / "cache" / "pretrain" / "checkpoint").resolve())
            spec = bench.spec.for_run(run)
            assert spec.heldout_root == clean_root and spec.identities == bench.split["private"]
            assert spec.frame_noise == ("independent" if row.table == "flicker" else "shared")
    rows = {row.name: row for row in bench.rows}
    method = {name: rows[f"identity-25-{name}"].first_run().cfg.federated for name in METHODS}
    assert (method["fedavg"].method, method["fedprox"].method) == ("fedavg", "fedprox")
    assert method["fedprox"].mu == pytest.approx(0.01)
    assert method["isfa"].method == "isfa" and method["isfa"].lambda_tdc == 0
    assert method["isfa-tdc"].method == "isfa" and method["isfa-tdc"].lambda_tdc == pytest.approx(1.0)
    assert method["threshold"].method == "isfa_threshold"
    assert method["threshold"].signal_threshold == pytest.approx(0.95)
    # A flicker row trains exactly the clean row's config, in a folder of its own, and its evaluation
    # (independent frame noise) is part of its eval.json settings, so it cannot be confused with one.
    flicker, clean = rows["flicker-isfa-tdc"].first_run(), rows["clean-isfa-tdc"].first_run()
    assert run_signature(flicker.cfg) == run_signature(clean.cfg) and flicker.key != clean.key
    assert bench.spec.for_run(flicker).settings(0)["frame_noise"] == "independent"
    assert "frame_noise" not in bench.spec.for_run(clean).settings(0)


def test_older_presets_keep_their_eval_settings():
    """The new EvalSpec fields stay out of the cache key at their defaults: eval.json files written
    before them are still reused."""
    spec = plan.EvalSpec(["id001"], 5)
    assert spec.settings(0) == {"identities": ["id001"], "sample_steps": 5, "seed": 0, "version": 1}
    assert spec.for_run(plan.Run("x/seed0", None)) is spec


def _summary(name: str, scenario: str, method: str, values: dict, table: str = "robust") -> dict:
    """A summarize_robust()-shaped row from per-seed values {metric: [seed 0, ...]}."""
    keys = [key for key, *_ in report.ROBUST_COLUMNS]
    seeds = len(next(iter(values.values())))
    per_seed = {str(i): {k: values[k][i] if k in values else None for k in keys} for i in range(seeds)}
    kind = None if scenario == "clean" else scenario.rsplit("-", 1)[0]
    attacked = report.FLICKER_METRICS if table == "flicker" else report.ATTACKED[kind]
    return {
        "row": name,
        "label": name,
        "table": table,
        "scenario": scenario,
        "scenario_label": scenario,
        "method": method,
        "n_seeds": seeds,
        "spread": "",
        "mean": {k: float(np.mean(values[k])) if k in values else None for k in keys},
        "std": {k: float(np.std(values[k], ddof=1)) if k in values else None for k in keys},
        "per_seed": per_seed,
        "attacked": list(attacked),
        "clients": dict.fromkeys(report.CLIENT_KEYS),
    }


def test_each_method_is_judged_against_fedavg_on_the_metric_its_scenario_attacks():
    good, bad, same = [0.80, 0.81, 0.82], [0.50, 0.51, 0.49], [0.60, 0.62, 0.61]
    table = {
        "main": [],
        "ablation": [],
        "privacy": [],
        "robust": [
            _summary("identity-50-fedavg", "identity-50", "fedavg", {"id_sim": bad, "sync_corr": good}),
            _summary("identity-50-isfa", "identity-50", "isfa", {"id_sim": good, "sync_corr": bad}),
            _summary("clean-fedavg", "clean", "fedavg", {"id_sim": same, "sync_corr": same, "jitter": same}),
            _summary("clean-isfa", "clean", "isfa", {"id_sim": same, "sync_corr": same, "jitter": same}),
        ],
        "flicker": [
            _summary("flicker-isfa", "clean", "isfa", {"flicker": good, "jitter": same}, "flicker"),
            _summary("flicker-isfa-tdc", "clean", "isfa-tdc", {"flicker": bad, "jitter": same}, "flicker"),
        ],
    }
    table["comparison"] = report.compare(table)
    judged = {(c["row"], c["baseline"], c["metric"]): c["verdict"] for c in table["comparison"]}
    # Under the identity attack only ID sim is judged (sync, worse here, is not what it attacks).
    assert judged[("identity-50-isfa", "identity-50-fedavg", "id_sim")] == "better"
    assert ("identity-50-isfa", "identity-50-fedavg", "sync_corr") not in judged
    assert {m for r, _, m in judged if r == "clean-isfa"} == {"sync_corr", "id_sim", "jitter"}
    assert judged[("clean-isfa", "clean-fedavg", "jitter")] == "no difference shown"
    # Lower flicker is better: TDC's lower flicker wins; jitter and sync are judged too (sync: no data).
    assert judged[("flicker-isfa-tdc", "flicker-isfa", "flicker")] == "better"
    assert ("flicker-isfa-tdc", "flicker-isfa", "jitter") in judged
    sections = dict(report.robust_sections(table))
    robust = next(md for title, md in sections.items() if title.startswith("Robustness"))
    assert "reference (attacked: ID sim)" in robust and "ID sim: better, Holm p" in robust
    flicker = next(md for title, md in sections.items() if title.startswith("Flicker"))
    assert "flicker: better, Holm p" in flicker
    assert any("Scenario identity-50, against FedAvg" in line for line in report.reading(table))


def test_client_groups_separate_the_corrupted_clients_weights_and_scores():
    records = [
        {
            "round": 1,
            "weights": {"client0000": 0.1, "client0001": 0.45, "client0002": 0.45},
            "signals": {
                "client0000": {"identity_consistency": 0.2, "temporal_stability": 0.4},
                "client0001": {"identity_consistency": 1.0, "temporal_stability": 1.0},
                "client0002": {"identity_consistency": 1.0, "temporal_stability": 0.8},
            },
        },
        {"round": 2, "weights": {"client0000": 0.5, "client0003": 0.5}},  # FedAvg-like: no signals
    ]
    groups = report.client_groups(records, {"client0000"}, alpha=0.5)
    assert groups["weight_corrupted"] == pytest.approx((0.3 + 1.0) / 2)  # weight x clients in round
    assert groups["weight_clean"] == pytest.approx((1.35 + 1.35 + 1.0) / 3)
    assert groups["score_corrupted"] == pytest.approx(0.3)
    assert groups["score_clean"] == pytest.approx((1.0 + 0.9) / 2)
    assert report.client_groups([], set(), 0.5) == dict.fromkeys(report.CLIENT_KEYS)


@pytest.fixture(scope="module")
def robust_bench(tmp_path_factory):
    """A tiny robust benchmark (preset tiny: 2 private clients; the clean corpus and one with temporal
    damage on 50 % of them, i.e. one client) through experiments/run_benchmark.py."""
    from test_experiments_benchmark import load_benchmark

    threads = torch.get_num_threads()  # threads=1 is applied process-wide by the runs
    patch = pytest.MonkeyPatch()
    tiny = PRESETS["tiny"]
    preset = {key: value for key, value in tiny.items() if key not in ("target_epsilon", "epsilons")} | {
        "federated": tiny["federated"] + ["federated.signal_source=data"],
        "scenarios": {"kinds": ["temporal"], "fractions": [0.5]},
        "flicker_rows": True,
        "seeds": 1,
    }
    patch.setitem(PRESETS, "tiny-robust", preset)
    out = tmp_path_factory.mktemp("robust")
    only = ["clean-fedavg", "clean-isfa", "temporal-50-fedavg", "temporal-50-isfa", "flicker-isfa"]
    table = load_benchmark().main(
        ["--preset", "tiny-robust", "--out", str(out), "--only", *only, "threads=1"]
    )
    yield out, table
    patch.undo()
    torch.set_num_threads(threads)


def test_tiny_robust_benchmark_trains_on_each_scenario_and_writes_the_robust_table(robust_bench):
    out, table = robust_bench
    folder, cache = out / "tiny-robust", out / "cache" / "tiny-robust"
    clean_root, damaged_root = (cache / "data").resolve(), (cache / "data-temporal-50").resolve()
    damaged = json.loads((damaged_root / "split.json").read_text())["corruption"]
    assert damaged["kinds"] == ["temporal"] and len(damaged["identities"]) == 1
    assert table["main"] == [] and table["heldout_root"] == str(clean_root)
    robust = {s["row"]: s for s in table["robust"]}
    assert list(robust) == ["clean-fedavg", "clean-isfa", "temporal-50-fedavg", "temporal-50-isfa"]
    assert [s["row"] for s in table["flicker"]] == ["flicker-isfa"]
    evals = {}
    for name in [*robust, "flicker-isfa"]:
        run_dir = folder / "runs" / name / "seed0"
        config = (run_dir / "config.yaml").read_text()
        root = damaged_root if name.startswith("temporal") else clean_root
        assert f"root: {root}\n" in config, name  # trained on its own scenario's corpus
        evals[name] = json.loads((run_dir / "eval.json").read_text())
        assert evals[name]["settings"]["heldout_root"] == str(clean_root)  # evaluated on the clean clips
    clips = {name: [(c["identity"], c["clip"]) for c in e["per_clip"]] for name, e in evals.items()}
    assert len(set(map(tuple, clips.values()))) == 1
    assert evals["flicker-isfa"]["settings"]["frame_noise"] == "independent"
    assert "frame_noise" not in evals["clean-isfa"]["settings"]
    # The same training as clean-isfa, sampled with independent noise per frame: it flickers more.
    assert robust["clean-isfa"]["mean"]["flicker"] < table["flicker"][0]["mean"]["flicker"]
    # The temporal damage is in the data signals: ISFA scores and weighs the damaged client lower,
    # while FedAvg gives both clients an equal share.
    isfa, fedavg = robust["temporal-50-isfa"]["clients"], robust["temporal-50-fedavg"]["clients"]
    assert isfa["score_corrupted"] < isfa["score_clean"] and isfa["weight_corrupted"] < isfa["weight_clean"]
    assert fedavg["weight_corrupted"] == pytest.approx(1.0) == fedavg["weight_clean"]
    assert fedavg["score_corrupted"] is None and robust["clean-isfa"]["clients"]["weight_corrupted"] is None
    # A damaged scenario's quality columns score its clean client only; the damaged client's own score
    # of the attacked metric has its own entry. The clean corpus scores every client.
    damaged_client = next(
        iter(report.corrupted_clients(OmegaConf.load(folder / "runs/temporal-50-isfa/seed0/config.yaml")))
    )
    per_clip = evals["temporal-50-isfa"]["per_clip"]
    clean_jitter = [c["jitter"] for c in per_clip if c["client"] != damaged_client]
    own_jitter = [c["jitter"] for c in per_clip if c["client"] == damaged_client]
    assert len(clean_jitter) == len(own_jitter) == 1
    assert robust["temporal-50-isfa"]["mean"]["jitter"] == pytest.approx(clean_jitter[0])
    assert robust["temporal-50-isfa"]["corrupted_own"] == {"jitter": pytest.approx(own_jitter[0])}
    assert robust["temporal-50-isfa"]["scored_on"] == "clean clients"
    assert robust["clean-isfa"]["mean"]["jitter"] == pytest.approx(evals["clean-isfa"]["metrics"]["jitter"])
    assert robust["clean-isfa"]["corrupted_own"] is None
    # The damage diagnostic: the same method on the clean corpus, scored on the same (clean) client.
    undamaged = [c["jitter"] for c in evals["clean-isfa"]["per_clip"] if c["client"] != damaged_client]
    damage = robust["temporal-50-isfa"]["damage"]["jitter"]
    assert damage["clean_corpus_mean"] == pytest.approx(undamaged[0]) and damage["p"] is None  # one seed
    assert [s["name"] for s in table["scenarios"]] == ["clean", "temporal-50"]
    for name in ("table.md", "README.md"):
        text = (folder / name).read_text()
        assert "Robustness: methods under corrupted clients" in text and "Flicker: independent" in text
        assert "reference (attacked: jitter)" in text and "not judged" in text  # one seed: no test
    saved = json.loads((folder / "table.json").read_text())
    assert [s["row"] for s in saved["robust"]] == list(robust)
