"""experiments/run_benchmark.py (privfedtalk.benchmark), preset tiny: every output exists with finite
numbers; reruns reuse."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
from pathlib import Path

import pytest
import torch

from privfedtalk.benchmark import report

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "run_benchmark.py"
ARGS = ["--preset", "tiny", "--seeds", "1", "--only", "fedavg", "privfedtalk", "threads=1"]
OUTPUTS = [
    "table.md",
    "table.csv",
    "table.json",
    "table.tex",
    "README.md",
    "convergence.png",
    "privacy_utility.png",
    "qualitative.png",
    "samples/fedavg.mp4",
    "samples/privfedtalk.mp4",
]


def load_benchmark():
    """The script itself, loaded by path: the tests run the benchmark through experiments/run_benchmark.py."""
    spec = importlib.util.spec_from_file_location("run_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    threads = torch.get_num_threads()  # threads=1 is applied process-wide by the runs
    module = load_benchmark()
    out = tmp_path_factory.mktemp("bench")
    table = module.main(ARGS + ["--out", str(out)])
    yield module, out, table
    torch.set_num_threads(threads)


def test_tiny_benchmark_writes_every_output_with_finite_numbers(bench):
    _, out, _ = bench
    folder = out / "tiny"
    for name in OUTPUTS:
        assert (folder / name).is_file() and (folder / name).stat().st_size > 0, name
    table = json.loads((folder / "table.json").read_text())
    assert [row["row"] for row in table["main"]] == ["fedavg", "privfedtalk"]
    assert table["ablation"] == [] and table["privacy"] == []
    keys = [c["key"] for c in table["columns"]]
    assert {"psnr", "ssim", "mouth_psnr", "sync_corr", "id_sim", "jitter", "fd_identity_features"} <= set(
        keys
    )
    assert {"upload_kb", "round_s", "peak_mib", "epsilon"} <= set(keys)
    for row in table["main"]:
        for key in keys:
            value = row["mean"][key]
            if key == "epsilon" and row["row"] == "fedavg":
                assert value is None  # no DP: ε = ∞
                continue
            if key == "fid":
                assert value is None  # no --inception file: no true FID
                continue
            assert isinstance(value, float) and math.isfinite(value), (row["row"], key, value)
    rows = {row["row"]: row for row in table["main"]}
    # Secure aggregation uploads 64-bit fixed-point words, FedAvg float32: twice the bytes.
    assert rows["privfedtalk"]["mean"]["upload_kb"] == pytest.approx(2 * rows["fedavg"]["mean"]["upload_kb"])
    assert 0 < rows["privfedtalk"]["mean"]["epsilon"] <= 8.0 + 1e-6
    markdown = (folder / "table.md").read_text()
    assert "FD (identity-encoder features; not FID)" in markdown and "| n/a |" in markdown
    assert "Welch's two-sided t-test" in (folder / "README.md").read_text()
    for run in ("fedavg/seed0", "privfedtalk/seed0"):
        assert (folder / "runs" / run / "eval.json").is_file()


def test_second_invocation_reuses_finished_rows(bench, caplog):
    module, out, _ = bench
    runs = out / "tiny" / "runs"
    before = {p: p.stat().st_mtime_ns for p in runs.rglob("*") if p.name in ("state.json", "eval.json")}
    caplog.set_level(logging.INFO, logger="privfedtalk.benchmark")
    table = module.main(ARGS + ["--out", str(out)])
    assert {k: v["status"] for k, v in table["runs"].items()} == {
        "fedavg/seed0": "reused",
        "privfedtalk/seed0": "reused",
    }
    after = {p: p.stat().st_mtime_ns for p in runs.rglob("*") if p.name in ("state.json", "eval.json")}
    assert before == after and len(before) == 4
    assert sorted(p.name for p in runs.iterdir()) == ["fedavg", "privfedtalk"]
    assert "reused" in caplog.text and "backbone: reused" in caplog.text
    # The history keeps the invocation that trained the runs next to the one that only reused them.
    first, second = table["invocations"]
    assert (first["runs_trained"], first["runs_reused"]) == (2, 0)
    assert (second["runs_trained"], second["runs_reused"]) == (0, 2)
    assert first["pretrain_s"] > 0 and second["pretrain_s"] == 0
    assert first["total_s"] > second["total_s"]
    assert "Invocations that built these results" in (out / "tiny" / "README.md").read_text()


def test_parallel_jobs_reproduce_the_serial_numbers(bench):
    """--jobs 2 trains each run in its own worker process; with threads=1 either way, same numbers."""
    module, out, serial = bench
    table = module.main(ARGS + ["--out", str(out), "--jobs", "2", "--fresh"])
    assert {k: v["status"] for k, v in table["runs"].items()} == {
        "fedavg/seed0": "trained",
        "privfedtalk/seed0": "trained",
    }
    assert table["timings"]["jobs"] == 2
    jobs = out / "tiny" / "runs" / ".jobs"
    assert sorted(p.name for p in jobs.glob("*.result.json")) == [
        "fedavg_seed0.result.json",
        "privfedtalk_seed0.result.json",
    ]
    for before, after in zip(serial["main"], table["main"], strict=True):
        # The DP row's noise comes from OS entropy, so only its ε (not its quality) can repeat.
        keys = ("epsilon",) if before["row"] == "privfedtalk" else ("psnr", "sync_corr", "epsilon")
        for key in keys:
            if before["mean"][key] is None:  # fedavg's ε: no DP
                assert after["mean"][key] is None
            else:
                assert after["mean"][key] == pytest.approx(before["mean"][key], rel=1e-6, abs=1e-9), key


def _summary(row, mean, std=None, table="main", seeds=3, target=None):
    """A summarize()-shaped row whose per-seed values have exactly the given mean and sample std."""
    keys = ("psnr", "ssim", "mouth_psnr", "sync_corr", "id_sim", "jitter", "fd_identity_features")
    full = {k: mean.get(k, 0.5) for k in keys} | {"epsilon": mean.get("epsilon"), "fid": None}
    spread = {k: (std or {}).get(k, 0.01) if seeds > 1 else None for k in full}
    # Offsets with mean 0 and sample std 1, so mean ± std are the summary's numbers.
    offsets = [i - (seeds - 1) / 2 for i in range(seeds)]
    scale = math.sqrt(sum(o * o for o in offsets) / (seeds - 1)) if seeds > 1 else 1.0
    per_seed = {
        str(i): {k: None if full[k] is None else full[k] + (spread[k] or 0.0) * o / scale for k in full}
        for i, o in enumerate(offsets)
    }
    out = {
        "row": row,
        "label": row,
        "table": table,
        "n_seeds": seeds,
        "mean": full,
        "std": spread,
        "per_seed": per_seed,
    }
    if table == "privacy":
        out["target_epsilon"] = target
    return out


def test_reading_states_tested_verdicts_and_what_was_not_judged():
    table = {
        "main": [
            _summary("local-only", {"psnr": 26.0, "sync_corr": 0.96}),
            _summary("fedavg", {"psnr": 26.0, "sync_corr": 0.96}),
            _summary("fedprox", {"psnr": 26.01, "sync_corr": 0.96}),
            _summary("privfedtalk", {"psnr": 23.0, "sync_corr": 0.10}),
            _summary("centralized", {"psnr": 27.0, "sync_corr": 0.96}, seeds=1),
        ],
        "ablation": [
            _summary("adapters-only", {"psnr": 26.0}, table="ablation", seeds=1),
            _summary("+tdc", {"psnr": 26.006}, table="ablation", seeds=1),
        ],
        "privacy": [
            _summary("eps-inf", {"psnr": 26.0}, table="privacy", target=None),
            _summary("eps-2", {"psnr": 20.0, "epsilon": 1.9}, table="privacy", target=2.0),
        ],
        "clip_norm": 0.05,
    }
    table["comparison"] = report.compare(table)
    verdicts = {
        (c["baseline"], c["metric"]): c["verdict"] for c in table["comparison"] if c["row"] == "privfedtalk"
    }
    assert verdicts[("fedavg", "psnr")] == "worse" and verdicts[("fedavg", "sync_corr")] == "worse"
    assert verdicts[("fedavg", "ssim")] == "no difference shown"  # equal means
    text = "\n".join(report.reading(table))
    assert "federating the shared adapter shows no difference on the key metrics" in text
    assert "FedProx vs FedAvg" in text and "indistinguishable" in text
    assert "14 (metric, baseline) pairs: 0 better, 4 worse, 10 no difference shown." in text
    # Centralized and the ablations have one seed: no spread, so no verdict, whatever the gap.
    assert "PSNR (dB) +1.00 (not judged: n = 1 vs 3)" in text
    assert "Ablation +tdc vs adapters-only: PSNR (dB) +0.01 (not judged: n = 1 vs 1)" in text
    assert "key metrics differ at target ε 2.0" in text
    # The ε=∞ point's sync (0.5) is far below FedAvg's (0.96): the loss is the clipping's, not the noise's.
    assert "clipping at C=0.05" in text and "already lost to clipping, before any noise" in text
    # 21 PrivFedTalk pairs + 4 key metrics x 5 row pairs (centralized's and the ablation's not judged).
    assert "states 45 (row pair, metric) comparisons, 37 tested and 8 not judged" in text
    assert "yardstick" not in text.lower()


def test_inception_file_adds_true_fid_and_re_evaluates(bench, inception_file):
    """--inception FILE: the finished runs are re-evaluated (not retrained) and get a finite FID."""
    module, out, _ = bench
    table = module.main(ARGS + ["--out", str(out), "--inception", str(inception_file)])
    assert {v["status"] for v in table["runs"].values()} == {"re-evaluated"}
    for row in table["main"]:
        value = row["mean"]["fid"]
        assert isinstance(value, float) and math.isfinite(value) and value >= 0
    assert "| n/a |" not in (out / "tiny" / "table.md").read_text().split("## Main table")[1]


def test_privacy_rows_get_their_canary_audit(bench, monkeypatch):
    """With audit_canaries, each privacy row's seed-0 config is re-run with canary clients (sampling rate
    kept), and the privacy table shows the empirical ε next to the accountant's: large without noise."""
    module, out, _ = bench
    from privfedtalk.benchmark.presets import PRESETS

    monkeypatch.setitem(PRESETS, "tiny", {**PRESETS["tiny"], "audit_canaries": 32})
    args = ["--preset", "tiny", "--seeds", "1", "--only", "eps-inf", "eps-8", "threads=1", "--out", str(out)]
    table = module.main(args)
    audits = {s["row"]: s["audit"] for s in table["privacy"]}
    assert set(audits) == {"eps-inf", "eps-8"}
    for audit in audits.values():
        assert audit["canaries"] == 32 and audit["participations"] > 0
        assert audit["clients_per_round"] == 2 * (2 + 32) // 2  # q = m / N kept: 2/2 -> 34/34
    rows = {s["row"]: s for s in table["privacy"]}
    # Same z as the row itself, so the accountant gives the audit run the row's ε.
    row_epsilon = rows["eps-8"]["mean"]["epsilon"]
    assert audits["eps-8"]["accountant"]["epsilon_observer"] == pytest.approx(row_epsilon)
    assert audits["eps-inf"]["accountant"]["epsilon_observer"] is None  # DP off: no accountant bound
    no_noise, noised = audits["eps-inf"]["final_model"]["epsilon"], audits["eps-8"]["final_model"]["epsilon"]
    assert no_noise > 20 and no_noise > noised
    assert (out / "tiny" / "runs" / "audit" / "eps-8" / "seed0" / "audit.json").is_file()
    markdown = (out / "tiny" / "table.md").read_text()
    assert "ε empirical, final model [95% CI]" in markdown
    assert "Privacy audit" in (out / "tiny" / "README.md").read_text()
    assert table["runs"]["audit/eps-8/seed0"]["status"] == "trained"
    again = module.main(args)
    assert {key: run["status"] for key, run in again["runs"].items() if key.startswith("audit/")} == {
        "audit/eps-inf/seed0": "reused",
        "audit/eps-8/seed0": "reused",
    }
    assert again["privacy"][1]["audit"] == table["privacy"][1]["audit"]


def test_second_backbone_pretrains_once_and_runs_beside_the_first(bench):
    """--backbone-seeds 2 on the same folder: backbone 0's cache and fedavg/seed0 are reused, backbone 1 is
    pretrained under seed 1 into pretrain-b1/ and fedavg runs on it as fedavg/b1-seed0."""
    module, out, _ = bench
    table = module.main(
        ["--preset", "tiny", "--seeds", "1", "--backbone-seeds", "2", "--only", "fedavg", "threads=1"]
        + ["--out", str(out)]
    )
    assert set(table["runs"]) == {"fedavg/seed0", "fedavg/b1-seed0"}
    assert table["runs"]["fedavg/b1-seed0"]["status"] == "trained"
    cache = out / "cache" / "tiny"
    assert table["checkpoints"] == [str(cache / "pretrain/checkpoint"), str(cache / "pretrain-b1/checkpoint")]
    (row,) = table["main"]
    assert (row["n_seeds"], row["n_backbones"], row["n_runs"]) == (1, 2, 2)
    assert row["runs"] == {"0": "fedavg/seed0", "b1-0": "fedavg/b1-seed0"}
    psnr = [run["psnr"] for run in row["per_seed"].values()]
    assert psnr[0] != psnr[1]  # another backbone, another result
    assert row["std"]["psnr"] is not None and row["mean"]["psnr"] == pytest.approx(sum(psnr) / 2)
    assert (
        "(1 federated seed x 2 backbones): federated-seed and backbone variance"
        in (out / "tiny" / "table.md").read_text()
    )
    last = table["invocations"][-1]
    assert last["pretrain_s_by_backbone"][0] == 0 and last["pretrain_s_by_backbone"][1] > 0
    assert json.loads((cache / "pretrain-b1.json").read_text())["pretrain_seed"] == 1
    assert (out / "tiny" / "runs" / "fedavg" / "b1-seed0" / "eval.json").is_file()


def test_a_failing_run_in_a_worker_stops_the_benchmark_naming_its_log(bench, tmp_path):
    """A worker's failure comes back as one line naming the run and its log (the pool does not wait)."""
    module, out, _ = bench
    cache = out / "cache" / "tiny"
    args = ARGS + [
        "--out",
        str(tmp_path),
        "--jobs",
        "2",
        "--checkpoint",
        str(cache / "pretrain" / "checkpoint"),
    ]
    args += ["--data", str(cache / "data"), f"federated.checkpoint={tmp_path / 'missing'}"]
    with pytest.raises(SystemExit, match=r"seed0: worker failed \(.*\); full log: .*\.log") as failure:
        module.main(args)
    log_file = Path(str(failure.value).rsplit("full log: ", 1)[1])
    assert "Traceback" in log_file.read_text() and "missing" in log_file.read_text()
