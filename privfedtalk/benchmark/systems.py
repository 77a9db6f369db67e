"""Helpers the systems benchmarks share (experiments/bench_parallel.py, bench_memory.py, the method
benchmark's report): the machine, a tiny backbone to time runs on, run configs and round timings."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from pathlib import Path

from privfedtalk.federated.store import RunFolder


def machine() -> dict:
    """Where the numbers were measured: OS, CPU, Python, torch and its threads, GPU if any."""
    import torch

    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


def read_records(run_dir: Path) -> list[dict]:
    """The run's metrics.jsonl, one record per completed round."""
    return RunFolder(run_dir).records()


def steady_median(records: list[dict], key: str = "round_seconds") -> float:
    """Median over rounds after the first (round 1 also encodes each client's latents once)."""
    values = [r[key] for r in records if key in r]
    return statistics.median(values[1:] if len(values) > 1 else values)


def tiny_fixture(work: Path, private: int, threads: int) -> tuple[Path, Path]:
    """A tiny synthetic corpus (`private` client identities) and a QUICK-preset 32x32 checkpoint."""
    from privfedtalk.config import load_config
    from privfedtalk.data.synthetic import synthesize_corpus
    from privfedtalk.demo import QUICK
    from privfedtalk.pretrain import pretrain

    data = work / "data"
    if not (data / "split.json").is_file():
        # Public and private halves: `private` identities become the clients.
        synthesize_corpus(data, identities=2 * private, clips=2, seconds=1.0, size=32, seed=0)
    checkpoint = work / "pretrain" / "checkpoint"
    if not (checkpoint / "generator.json").is_file():
        overrides = [f"data.root={data}", f"out_dir={work / 'pretrain'}", f"threads={threads}"]
        pretrain(load_config(None, overrides + QUICK["pretrain"]))
    return data, checkpoint


def backbone(parser: argparse.ArgumentParser, args, private: int) -> tuple[Path, Path, Path]:
    """(work, data, checkpoint): --checkpoint with its --data, else the tiny fixture built in --work."""
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if not args.checkpoint:
        return (work, *tiny_fixture(work, private, args.threads))
    if not args.data:
        parser.error("--checkpoint needs --data (the corpus whose private identities are the clients)")
    return work, Path(args.data).resolve(), Path(args.checkpoint).resolve()


def checkpoint_size(checkpoint: Path) -> int:
    return int(json.loads((checkpoint / "generator.json").read_text())["size"])


def run_overrides(args, checkpoint: Path) -> list[str]:
    """The backbone and federation budget shared by every run of a benchmark (no evaluation)."""
    return [
        f"data.size={checkpoint_size(checkpoint)}",
        f"federated.checkpoint={checkpoint}",
        f"federated.rounds={args.rounds}",
        f"federated.clients_per_round={args.clients_per_round}",
        f"federated.local_steps={args.local_steps}",
        "federated.eval_every=0",
    ]


def write_config(path: Path, base: str | None, overrides: list[str]) -> Path:
    """Resolve base YAML + overrides here, so every process of a run reads the same file."""
    from omegaconf import OmegaConf

    from privfedtalk.config import load_config

    OmegaConf.save(load_config(base, overrides), path)
    return path
