"""Client-parallel rounds: 2 gloo processes reproduce the sequential run and the one-process secure sum."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from omegaconf import OmegaConf
from safetensors.torch import load_file

from privfedtalk.errors import PrivacyError
from privfedtalk.federated import parallel
from privfedtalk.privacy.fixed_point import plan_fixed_point
from privfedtalk.privacy.secagg import secure_weighted_sum

# The secure-sum workers are spawned and re-import this module: heavy imports stay inside the tests.
REPO = Path(__file__).resolve().parents[2]
IDS = [f"client{i:04d}" for i in range(5)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank: int, world: int, port: int) -> dict:
    env = {
        "RANK": str(rank),
        "WORLD_SIZE": str(world),
        "LOCAL_RANK": str(rank),
        "LOCAL_WORLD_SIZE": str(world),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }
    if sys.platform.startswith("linux"):
        env["GLOO_SOCKET_IFNAME"] = "lo"  # gloo's pair sockets stay on the loopback interface
    return env


def test_split_join_words_is_addition_mod_2_64():
    rng = np.random.default_rng(0)
    parts = [rng.integers(0, 2**64, size=1000, dtype=np.uint64) for _ in range(3)]
    parts[0][:2] = np.uint64(2**64 - 1)  # carries out of both halves
    summed = sum(parallel.split_words(p) for p in parts)
    expected = parts[0] + parts[1] + parts[2]  # numpy uint64 wraps mod 2^64
    assert np.array_equal(parallel.join_words(summed), expected)


def _secure_sum_worker(rank: int, port: int, out: str, cases: dict) -> None:
    os.environ.update(rank_env(rank, 2, port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    group = parallel.RankGroup()
    results = {}
    for name, case in cases.items():
        mine = {c: v for c, v in case["vectors"].items() if c in IDS[rank::2]}
        try:
            result = parallel.distributed_secure_sum(
                group, mine, IDS, size=case["size"], round_id=3, **case["kwargs"]
            )
            results[name] = (result.total, list(result.survivors))
        except PrivacyError as err:
            results[name] = str(err)
    dist.destroy_process_group()
    torch.save(results, Path(out) / f"rank{rank}.pt")


def test_distributed_secure_sum_matches_one_process(tmp_path):
    rng = np.random.default_rng(1)
    vectors = {c: rng.uniform(-0.4, 0.4, size=1000) for c in IDS}
    fixed_point = plan_fixed_point(0.5, len(IDS))
    dropped = ["client0001", "client0004"]  # one on each rank: both recover from peers' shares
    ok = {"threshold": 3, "fixed_point": fixed_point, "dropped": dropped}
    too_big = dict(vectors, client0003=np.full(1000, 0.9))  # fails on rank 1 only
    cases = {
        "dropouts": {"vectors": vectors, "size": 1000, "kwargs": ok},
        "below_threshold": {"vectors": vectors, "size": 1000, "kwargs": dict(ok, threshold=4)},
        "overflow": {"vectors": too_big, "size": 1000, "kwargs": ok},
    }
    mp.spawn(_secure_sum_worker, args=(free_port(), str(tmp_path), cases), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    expected = secure_weighted_sum(vectors, round_id=3, **ok)
    for result in ranks:
        total, survivors = result["dropouts"]
        assert np.array_equal(total, expected.total) and tuple(survivors) == expected.survivors
        assert "threshold 4" in result["below_threshold"]  # raised on every rank, none left waiting
        assert "exceeds the planned fixed-point bound" in result["overflow"]


def test_two_process_run_equals_sequential(tiny_federated_config, tmp_path):
    from privfedtalk.federated import simulation

    extra = ["federated.rounds=2", "federated.clients_per_round=2", "privacy.secure_aggregation=true"]
    # One thread everywhere: CPU kernels then add in the same order in both runs.
    sequential = simulation.train(tiny_federated_config(*extra, "threads=1", f"out_dir={tmp_path / 'seq'}"))
    cfg = tiny_federated_config(*extra, "threads=2", f"out_dir={tmp_path / 'par'}")  # 2 // 2 per rank
    OmegaConf.save(cfg, tmp_path / "par.yaml")

    port = free_port()
    command = [sys.executable, "-m", "privfedtalk.federated.launch", str(tmp_path / "par.yaml")]
    envs = [{**os.environ, **rank_env(r, 2, port)} for r in (0, 1)]
    procs = [subprocess.Popen(command, cwd=REPO, env=env, stderr=subprocess.PIPE) for env in envs]
    try:
        errors = [p.communicate(timeout=120)[1].decode() for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], errors[0][-2000:] + errors[1][-2000:]

    run = tmp_path / "par"
    reference = load_file(str(sequential / "global_shared.safetensors"))["global_shared"]
    result = load_file(str(run / "global_shared.safetensors"))["global_shared"]
    torch.testing.assert_close(result, reference, rtol=0, atol=0)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2]  # written once, by rank 0
    assert all(len(r["rank_seconds"]) == 2 for r in records)
    slots = sorted(p.parent.name for p in (run / "clients").glob("*/identity_adapter.safetensors"))
    assert slots == sorted({c for r in records for c in r["survivor_ids"]})
