"""Backbone variance in the benchmark (--backbone-seeds K, preset backbone_seeds): K = 1 plans exactly the
runs it planned before; K = 2 plans every row's runs on two backbones pretrained under two seeds; every
row (centralized, ablation, privacy-utility included) has the preset's seeds; the table says which
variance each ± holds. Planning-level: nothing here trains a model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from privfedtalk.benchmark import execute, plan, report
from privfedtalk.benchmark.cli import parse_args
from privfedtalk.benchmark.presets import PRESETS

# Every run `tiny` (1 seed) planned before backbones could vary, and the run each row reads.
TINY_RUNS = {
    "local-only": "local-only/seed0",
    "fedavg": "fedavg/seed0",
    "fedprox": "fedprox/seed0",
    "privfedtalk": "privfedtalk/seed0",
    "centralized": "centralized/seed0",
    "adapters-only": "fedavg/seed0",
    "+isfa": "plus-isfa/seed0",
    "+tdc": "plus-tdc/seed0",
    "+dp": "plus-dp/seed0",
    "full": "privfedtalk/seed0",
    "eps-inf": "eps-inf/seed0",
    "eps-32": "eps-32/seed0",
    "eps-8": "privfedtalk/seed0",
    "eps-2": "eps-2/seed0",
}


def fake_checkpoint(folder: Path, size: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "generator.json").write_text(json.dumps({"size": size}))
    return folder


def plan_tiny(tmp: Path, backbones: int, preset_name: str = "tiny", seeds: int | None = None):
    """plan_benchmark on a fake corpus (split.json only) and `backbones` fake checkpoints."""
    preset = PRESETS[preset_name]
    data = tmp / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "split.json").write_text(json.dumps({"public": ["a", "b"], "private": ["c", "d"]}))
    size = preset["synth"]["size"]
    checkpoints = [fake_checkpoint(tmp / f"pretrain-{b}" / "checkpoint", size) for b in range(backbones)]
    args = argparse.Namespace(
        overrides=["threads=1"], seeds=seeds, only=None, inception=None, backbone_seeds=backbones
    )
    return plan.plan_benchmark(preset_name, preset, data, checkpoints, args, tmp / "runs")


def test_one_backbone_plans_exactly_the_runs_and_configs_of_before(tmp_path):
    bench = plan_tiny(tmp_path, 1)
    assert {row.name: {label: run.key for label, run in row.runs.items()} for row in bench.rows} == {
        name: {"0": key} for name, key in TINY_RUNS.items()
    }
    assert sorted(run.key for run in bench.runs) == sorted(set(TINY_RUNS.values()))
    checkpoint = str(bench.checkpoints[0].resolve())
    for run in bench.runs:
        assert run.backbone == 0 and run.cfg.seed == 0
        assert run.cfg.out_dir == str(tmp_path / "runs" / run.key)
        assert run.cfg.federated.checkpoint == checkpoint
    rows = {row.name: row for row in bench.rows}
    assert rows["+tdc"].first_run().cfg.federated.lambda_tdc == pytest.approx(0.1)
    assert rows["eps-2"].first_run().cfg.privacy.target_epsilon == pytest.approx(2.0)


def test_two_backbones_plan_every_row_on_both_checkpoints(tmp_path):
    one = plan_tiny(tmp_path / "one", 1, seeds=2)
    two = plan_tiny(tmp_path / "two", 2, seeds=2)
    assert len(two.runs) == 2 * len(one.runs)
    first, second = (str(c.resolve()) for c in two.checkpoints)
    assert first != second
    for row in two.rows:
        assert list(row.runs) == ["0", "1", "b1-0", "b1-1"]
        for label, run in row.runs.items():
            backbone = 1 if label.startswith("b1-") else 0
            assert run.backbone == backbone
            assert run.cfg.federated.checkpoint == (second if backbone else first)
            assert run.cfg.seed == int(label.split("-")[-1])
        assert row.runs["b1-0"].key.endswith("/b1-seed0") and row.runs["0"].key.endswith("/seed0")
    out_dirs = [run.cfg.out_dir for run in two.runs]
    assert len(set(out_dirs)) == len(out_dirs)
    # Rows with identical configs share their runs on each backbone, never across backbones.
    rows = {row.name: row for row in two.rows}
    for alias, original in (("adapters-only", "fedavg"), ("full", "privfedtalk"), ("eps-8", "privfedtalk")):
        for label in rows[original].runs:
            assert rows[alias].runs[label] is rows[original].runs[label], (alias, label)
    assert rows["fedavg"].runs["b1-0"].key == "fedavg/b1-seed0"
    assert rows["fedavg"].runs["b1-0"] is not rows["fedavg"].runs["0"]


def test_centralized_ablation_and_privacy_rows_have_the_presets_seeds(tmp_path):
    for name in ("small", "laptop-gpu", "paper"):
        preset = PRESETS[name]
        rows = plan.row_definitions(
            preset, preset["seeds"], {"clients_per_round": 4, "local_steps": 10, "batch_windows": 4}, 8
        )
        assert preset["seeds"] >= 3
        assert {row.table for row in rows} == {"main", "ablation", "privacy"}
        assert all(row.seeds == list(range(preset["seeds"])) for row in rows), name
    bench = plan_tiny(tmp_path, 1, seeds=3)
    assert all(list(row.runs) == ["0", "1", "2"] for row in bench.rows)
    assert PRESETS["small"]["backbone_seeds"] == 1


def fake_run(key: str, seed: int, backbone: int, psnr: float) -> plan.Run:
    cfg = argparse.Namespace(seed=seed)
    metrics = {"psnr": psnr}
    records = [{"round": 1, "upload_bytes": 1000, "round_seconds": 1.0, "epsilon_observer": None}]
    return plan.Run(key, cfg, backbone=backbone, eval={"metrics": metrics}, records=records)


def test_summary_spreads_over_every_seed_and_backbone_and_the_table_says_so():
    row = plan.Row("fedavg", "ablation", "FedAvg", "fedavg.yaml", [], [0, 1])
    for backbone, values in enumerate(((20.0, 21.0), (23.0, 24.0))):
        for seed, psnr in enumerate(values):
            key = plan.run_key("fedavg", backbone, seed)
            row.runs[plan.run_label(backbone, seed)] = fake_run(key, seed, backbone, psnr)
    summary = report.summarize(row)
    assert summary["mean"]["psnr"] == pytest.approx(22.0)
    assert summary["std"]["psnr"] == pytest.approx(1.8257418, rel=1e-6)  # ddof=1 over all 4 runs
    assert (summary["n_seeds"], summary["n_backbones"], summary["n_runs"]) == (2, 2, 4)
    assert summary["seeds"] == [0, 1] and summary["backbones"] == [0, 1]
    assert summary["runs"] == {
        "0": "fedavg/seed0",
        "1": "fedavg/seed1",
        "b1-0": "fedavg/b1-seed0",
        "b1-1": "fedavg/b1-seed1",
    }
    assert list(summary["per_seed"]) == ["0", "1", "b1-0", "b1-1"]
    assert summary["spread"] == (
        "± = sample std over 4 runs (2 federated seeds x 2 backbones): federated-seed and backbone variance"
    )
    one = plan.Row("fedavg", "ablation", "FedAvg", "fedavg.yaml", [], [0, 1])
    one.runs = {label: run for label, run in row.runs.items() if not label.startswith("b")}
    assert report.summarize(one)["spread"].endswith(
        "(2 federated seeds x 1 backbone): federated-seed variance only"
    )
    empty = {"main": [], "privacy": []}
    ((title, markdown),) = report.markdown_tables(empty | {"ablation": [summary]})
    assert title.startswith("Ablation (2 seeds x 2 backbones;")
    assert "| FedAvg | 2 x 2 backbones | 22.00 ± 1.83 |" in markdown
    assert markdown.endswith("Every row: " + summary["spread"] + ".")
    ((title, _),) = report.markdown_tables(empty | {"ablation": [report.summarize(one)]})
    assert title.startswith("Ablation (2 seeds;")


def fake_pretrain(calls: list):
    def pretrain(cfg):
        checkpoint = Path(cfg.out_dir) / "checkpoint"
        checkpoint.mkdir(parents=True)
        (checkpoint / "identity_encoder.json").write_text("{}")
        calls.append((int(cfg.seed), Path(cfg.out_dir).name))

    return pretrain


def test_each_backbone_is_pretrained_once_under_its_own_seed_and_cached(tmp_path, monkeypatch):
    import privfedtalk.pretrain

    calls = []
    monkeypatch.setattr(privfedtalk.pretrain, "pretrain", fake_pretrain(calls))
    data = tmp_path / "cache" / "tiny" / "data"
    data.mkdir(parents=True)
    (data / "split.json").write_text("{}")  # a built corpus: not synthesized again
    times = {}
    _, checkpoints = execute.prepare_backbone("tiny", PRESETS["tiny"], tmp_path, [], times, backbones=3)
    cache = tmp_path / "cache" / "tiny"
    assert checkpoints == [cache / "pretrain/checkpoint"] + [
        cache / f"pretrain-b{b}/checkpoint" for b in (1, 2)
    ]
    assert calls == [(0, "pretrain"), (1, "pretrain-b1"), (2, "pretrain-b2")]
    assert len(times["pretrain_s_by_backbone"]) == 3 and times["pretrain_s"] > 0
    assert set(times["cached_build_s"]) == {"pretrain_s", "pretrain_s_b1", "pretrain_s_b2"}
    assert json.loads((cache / "pretrain-b2.json").read_text())["pretrain_seed"] == 2
    assert "pretrain_seed" not in json.loads(
        (cache / "meta.json").read_text()
    )  # backbone 0's cache as before
    again = {}
    assert (
        execute.prepare_backbone("tiny", PRESETS["tiny"], tmp_path, [], again, backbones=2)[1]
        == checkpoints[:2]
    )
    assert len(calls) == 3 and again["pretrain_s_by_backbone"] == [0.0, 0.0]
    # A command-line seed= shifts every backbone's seed, so they still differ.
    execute.prepare_backbone("tiny", PRESETS["tiny"], tmp_path / "other", ["seed=5"], {}, backbones=2)
    assert calls[3:] == [(5, "pretrain"), (6, "pretrain-b1")]


def test_backbone_seeds_on_the_command_line(tmp_path):
    args = parse_args(["--preset", "tiny", "--backbone-seeds", "2"])
    assert plan.backbone_count(PRESETS["tiny"], args) == 2
    assert plan.backbone_count(PRESETS["tiny"], parse_args(["--preset", "tiny"])) == 1
    with pytest.raises(SystemExit):
        parse_args(["--backbone-seeds", "0"])
    given = parse_args(["--checkpoint", str(tmp_path), "--data", str(tmp_path), "--backbone-seeds", "2"])
    with pytest.raises(SystemExit, match="drop --checkpoint"):
        execute.corpus_and_backbone(given, PRESETS["tiny"], {}, backbones=2)


def test_readme_and_invocation_record_time_each_backbone(tmp_path):
    times = {"total_s": 10.0, "synth_s": 1.0, "pretrain_s": 5.0, "pretrain_s_by_backbone": [2.0, 3.0]}
    times |= {"runs_wall_s": 4.0, "jobs": 1}
    table = {"finished": "now", "timings": times}
    args = argparse.Namespace(argv=["run_benchmark.py"])
    (entry,) = report.record_invocation(tmp_path / "invocations.jsonl", table, args, [])
    assert entry["pretrain_s_by_backbone"] == [2.0, 3.0]
    assert report.pretrain_text(5.0, [2.0, 3.0]) == "5.0 (b0 2.0 + b1 3.0)"
    assert report.pretrain_text(5.0, [5.0]) == "5.0" and report.pretrain_text(5.0, None) == "5.0"
