"""Client throughput in local steps per second for federated.client_batch K (batched clients).

At the dp-scale preset's model size (32x32 frames, VAE [16,32,32] -> 8x8 latents, U-Net [32,64],
rank-1 shared adapter on the attention projections, rank-4 identity adapter on the resnets' 3x3
convolutions, 4 windows of 4 frames, 10 local steps). Step time does not depend on what the backbone
learned, so the backbone is untrained and the clients' clips are random latents (2 clips of 50 frames
each, as dp-scale's 2 s clips).
Each repeat trains the same `--clients` clients once from the same global state, K at a time, and
counts clients x local_steps / wall seconds (swap in/out and update included; signals off: they cost
the same per client either way). The K's are interleaved within each repeat; prints the median over
repeats per K and the median of the per-repeat ratios to the first K (K = 1).

    .venv/bin/python experiments/bench_client_throughput.py --batches 1 8 16 32 --clients 32 --repeats 3

For a whole round (data loading, aggregation and the run folder included) time `privfedtalk train` on a
dp-scale run's config with federated.client_batch=K instead (docs/results.md, "Client throughput").

`--model small`: the `small` benchmark preset's size instead (64x64 frames, the default VAE and U-Net:
16x16 latents, rank-4 shared adapter, 10 local steps, clips of 75 frames).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

DP_SCALE_MODEL = [
    "data.size=32",
    "model.vae.block_out_channels=[16,32,32]",
    "model.unet.block_out_channels=[32,64]",
    "federated.local_steps=10",
    "federated.batch_windows=4",
    "federated.shared.rank=1",
    "federated.shared.alpha=1.0",
    "federated.shared.target_modules=[to_q,to_k,to_v,to_out.0]",
]

SMALL_MODEL = ["data.size=64", "federated.local_steps=10", "federated.batch_windows=4"]
MODELS = {"dp-scale": (DP_SCALE_MODEL, 50), "small": (SMALL_MODEL, 75)}


class NoSlots:
    """Every client starts from a fresh identity adapter; staged adapters are dropped."""

    def has_identity(self, client_id):
        return False

    def stage_identity(self, client_id, state, round_index):
        pass


def build(cfg):
    from privfedtalk.model import adapters
    from privfedtalk.model.generator import TalkingHeadGenerator

    torch.manual_seed(0)
    model = TalkingHeadGenerator.from_config(cfg)
    model.requires_grad_(False)
    adapters.attach_adapters(model.unet, cfg.federated.shared, cfg.federated.identity)
    return model


def random_clients(model, count: int, frames: int = 50) -> list:
    from privfedtalk.federated.client import ClientData
    from privfedtalk.model.latents import LatentClip

    channels = model.vae.config.latent_channels
    side = model.spec.size // 2 ** (len(model.vae.config.block_out_channels) - 1)
    spec = model.spec

    def clip(name):
        latents = torch.randn(frames, channels, side, side)
        features = torch.randn(frames, spec.audio_tokens, spec.n_mels)
        return LatentClip("synthetic", name, latents, features, None, None, None)

    return [ClientData(f"client{i}", ["synthetic"], [clip(f"{i}a"), clip(f"{i}b")]) for i in range(count)]


def time_once(trainer, clients, global_shared, batch: int, instructions) -> float:
    started = time.perf_counter()
    for start in range(0, len(clients), batch):
        group = clients[start : start + batch]
        seeds = [1000 + start + i for i in range(len(group))]
        if len(group) == 1:
            trainer.run(group[0], global_shared, 0, seeds[0], instructions)
        else:
            trainer.run_many(group, global_shared, 0, seeds, instructions)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 16, 32])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", choices=sorted(MODELS), default="dp-scale")
    args = parser.parse_args()
    from privfedtalk.config import load_config
    from privfedtalk.federated.client import LocalTrainer, get_flat
    from privfedtalk.federated.strategy import Instructions

    torch.set_num_threads(args.threads)
    overrides, frames = MODELS[args.model]
    cfg = load_config(None, overrides)
    model = build(cfg)
    trainer = LocalTrainer(cfg, model, None, NoSlots())
    clients = random_clients(model, args.clients, frames)
    global_shared = 0.01 * torch.randn(get_flat(trainer.shared).numel())
    instructions = Instructions(cfg.federated.local_steps, 0.0, False)
    steps = args.clients * cfg.federated.local_steps
    time_once(trainer, clients[:1], global_shared, 1, instructions)  # warm-up (allocator, kernels)
    # Interleaved: repeat r times every K once, so a machine that drifts (shared, throttled) slows all
    # K alike; the ratio to the first K is taken within each repeat, then its median.
    seconds = {batch: [] for batch in args.batches}
    for repeat in range(args.repeats):
        for batch in args.batches:
            seconds[batch].append(time_once(trainer, clients, global_shared, batch, instructions))
        rates = ", ".join(f"K={k} {steps / seconds[k][-1]:.2f}" for k in args.batches)
        print(f"repeat {repeat + 1}: {rates}", flush=True)
    first = args.batches[0]
    results = {
        batch: {
            "steps_per_s": steps / statistics.median(seconds[batch]),
            "ratio": statistics.median(a / b for a, b in zip(seconds[first], seconds[batch])),
            "seconds": [round(s, 3) for s in seconds[batch]],
        }
        for batch in args.batches
    }
    for batch, result in results.items():
        rate, ratio = result["steps_per_s"], result["ratio"]
        print(f"client_batch={batch}: {rate:.2f} local steps/s, {ratio:.2f}x K={first}")
    summary = {
        "model": args.model,
        "threads": args.threads,
        "clients": args.clients,
        "local_steps": cfg.federated.local_steps,
    }
    print(json.dumps({**summary, "results": results}, indent=2))


if __name__ == "__main__":
    main()
