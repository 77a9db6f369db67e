"""One training step's time and peak memory for a config (e.g. low_vram.yaml at 128x128).

    .venv/bin/python experiments/bench_step_memory.py low_vram [key=value ...]

Peak GPU memory on CUDA, peak RSS on CPU (see privfedtalk.runtime.peak_memory_mb); median of steps 2..N.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from privfedtalk.config import load_config
from privfedtalk.model.generator import TalkingHeadGenerator
from privfedtalk.runtime import (
    Precision,
    enable_gradient_checkpointing,
    peak_memory_mb,
    resolve_device,
    setup_torch,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides)
    setup_torch(cfg.threads)
    device = resolve_device(cfg.device)
    torch.manual_seed(0)
    model = TalkingHeadGenerator.from_config(cfg).to(device)
    precision = Precision(device, cfg.mixed_precision)
    enable_gradient_checkpointing(model.unet, cfg.gradient_checkpointing, device)
    params = list(model.unet.parameters()) + list(model.audio_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    factor = 2 ** (len(cfg.model.vae.block_out_channels) - 1)
    side, channels = cfg.data.size // factor, cfg.model.vae.latent_channels
    batch, window = cfg.model.unet.batch_windows, cfg.data.window
    latents = torch.randn(batch, window, channels, side, side, device=device)
    reference = torch.randn(batch, channels, side, side, device=device)
    audio = torch.randn(batch, window, model.spec.audio_tokens, model.spec.n_mels, device=device)
    generator = torch.Generator().manual_seed(0)
    times = []
    for _ in range(args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with precision.autocast():
            loss = model.loss(latents, reference, audio, generator, lambda_tdc=0.1)["total"]
        precision.step(loss, optimizer, params)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    result = {
        "device": str(device),
        "size": cfg.data.size,
        "latent": side,
        "mixed_precision": precision.label,
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "frames_per_step": batch * window,
        "step_seconds_median": statistics.median(times[1:]),
        "peak_memory_mb": peak_memory_mb(device),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
