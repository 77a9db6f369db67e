"""Batched clients: K clients' local steps in one grouped U-Net pass (`federated.client_batch` = K).

On a CPU the tiny U-Nets of large-cohort runs spend most of a step in per-op overhead, not in
arithmetic; K clients in one pass pay it once. Each client keeps its own everything:

- its adapters: the shared (from the broadcast state) and identity (from its slot) LoRA weights of
  the K clients are stacked into (K, ...) leaves, and model/grouped_lora.py makes every LoRA layer
  apply slice k to client k's rows of the batch;
- its randomness: windows, timesteps, noise and dropout are drawn from client k's own generator in
  the order `LocalTrainer.run` draws them, so the draws are identical;
- its gradient: the loss is the sum of the K clients' losses, so slice k of a stacked gradient is
  client k's gradient; clipping (max_norm 1.0, as `Precision.step`) is per client;
- its optimizer: AdamW is element-wise, so torch.optim.AdamW on the stacked leaves updates each slice
  exactly as a per-client AdamW would (same step count: every client runs `local_steps`);
- its FedProx term: (μ/2)·‖w_k − w_global‖² summed over k has gradient μ·(w_k − w_global) in slice k.

Afterwards each client's slice is written into the U-Net and `LocalTrainer.finish` computes its
signals, update and identity-adapter slot exactly as after `run`. The results equal sequential
training up to float rounding (kernels sum in another order; tests/federated/test_batched_clients.py).
Not supported, with a ConfigError: federate=unet (the backbone is not an adapter) and fp16 loss scaling
(GradScaler skips a step for all clients at once when one overflows).
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch
from diffusers.models.attention_processor import AttnProcessor

from privfedtalk.config import Federate
from privfedtalk.errors import ConfigError
from privfedtalk.federated.aggregation import fedprox_term
from privfedtalk.model.grouped_lora import grouped_lora
from privfedtalk.model.latents import sample_windows
from privfedtalk.runtime import grouped_step


def can_group(client, window: int) -> bool:
    """Every training window of the client has `window` frames, so clients' batches have equal rows."""
    return bool(client.train) and all(len(clip) >= window for clip in client.train)


def check_supported(trainer) -> None:
    if trainer.cfg.federate != Federate.shared_adapter:
        raise ConfigError(
            "federated.client_batch > 1 needs federated.federate=shared_adapter (use client_batch=1)"
        )
    if trainer.precision.scaler is not None:
        raise ConfigError(
            "federated.client_batch > 1 does not support mixed_precision=fp16 (loss scaling skips "
            "steps for all clients at once); use fp32 or bf16, or client_batch=1"
        )


def run_group(trainer, clients, global_shared, round_index: int, seeds: list[int], instructions) -> list:
    """(ClientUpdate, LocalReport) per client, in order; clients that cannot be grouped run alone."""
    check_supported(trainer)
    results: list = [None] * len(clients)
    grouped = [i for i, c in enumerate(clients) if can_group(c, trainer.window)]
    for i in range(len(clients)):
        if i not in grouped or len(grouped) == 1:
            results[i] = trainer.run(clients[i], global_shared, round_index, seeds[i], instructions)
    if len(grouped) > 1:
        outcomes = _train_together(
            trainer,
            [clients[i] for i in grouped],
            global_shared,
            round_index,
            [seeds[i] for i in grouped],
            instructions,
        )
        for i, outcome in zip(grouped, outcomes):
            results[i] = outcome
    return results


def _stacked_start(trainer, clients, global_shared) -> list[torch.Tensor]:
    """(K, ...) leaves of shared + identity parameters, each client's starting values in slice k."""
    params = trainer.shared + trainer.identity
    starts = []
    for client in clients:
        trainer.swap_in(client, global_shared)
        starts.append([p.detach().clone() for p in params])
    return [torch.stack([s[i] for s in starts]).requires_grad_(True) for i in range(len(params))]


def _group_loss(trainer, clients, generators, global_copy, stacked_shared, instructions):
    """Sum of the clients' losses of one local step, and each client's loss terms."""
    model, device, cfg = trainer.model, trainer.model.device, trainer.cfg
    per_client, inputs = [], []
    for client, generator in zip(clients, generators):
        latents, reference, audio = sample_windows(client.train, cfg.batch_windows, trainer.window, generator)
        latents = latents.to(device)
        draws = model.draw_loss_noise(latents, generator, trainer.condition_dropout)
        per_client.append((latents, draws))
        inputs.append(model.noised_inputs(latents, reference.to(device), audio.to(device), draws))
    joined = [None if parts[0] is None else torch.cat(parts) for parts in zip(*inputs)]
    with trainer.precision.autocast():
        output = model.denoise(*joined)
        rows = output.shape[0] // len(clients)
        terms = [
            model.loss_terms(
                output[k * rows : (k + 1) * rows], latents, inputs[k][0], draws, cfg.lambda_tdc, cfg.tdc_space
            )
            for k, (latents, draws) in enumerate(per_client)
        ]
    total = torch.stack([t["total"] for t in terms]).sum()
    if instructions.mu > 0:
        total = total + fedprox_term(stacked_shared, global_copy, instructions.mu)
    return total, terms


@contextmanager
def matmul_attention(unet):
    """On a CPU, attention through diffusers' AttnProcessor (batched matmuls and a softmax) within the
    block. The grouped pass's attention has a few tokens (16–20 at the dp-scale size) and heads of
    dimension 4–8; there the fused CPU kernel (scaled_dot_product_attention) costs ~1.6x as much,
    forward and backward, as the three plain ops. Same arithmetic up to float rounding."""
    if unet.device.type != "cpu":
        yield
        return
    processors = unet.attn_processors
    unet.set_attn_processor(AttnProcessor())
    try:
        yield
    finally:
        unet.set_attn_processor(processors)


def _train_together(trainer, clients, global_shared, round_index: int, seeds, instructions) -> list:
    model = trainer.model
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    t0 = time.perf_counter()
    stacked = _stacked_start(trainer, clients, global_shared)
    swap = (time.perf_counter() - t0) / len(clients)
    params = trainer.shared + trainer.identity
    stacked_shared = stacked[: len(trainer.shared)]
    global_copy = [p[0].detach().clone() for p in stacked_shared]
    optimizer = torch.optim.AdamW(stacked, lr=trainer.cfg.lr, weight_decay=0.0)
    losses = [[] for _ in clients]
    tdcs = [[] for _ in clients]
    t1 = time.perf_counter()
    model.unet.train()
    with grouped_lora(model.unet, {id(p): s for p, s in zip(params, stacked)}), matmul_attention(model.unet):
        for _ in range(instructions.local_steps):
            total, terms = _group_loss(
                trainer, clients, generators, global_copy, stacked_shared, instructions
            )
            grouped_step(total, optimizer, stacked)
            for k, out in enumerate(terms):
                losses[k].append(out["diffusion"].item())
                tdcs[k].append(out["tdc"].item() if "tdc" in out else 0.0)
    model.unet.eval()
    train_seconds = (time.perf_counter() - t1) / len(clients)
    results = []
    for k, client in enumerate(clients):
        with torch.no_grad():
            for p, s in zip(params, stacked):
                p.copy_(s[k])
        results.append(
            trainer.finish(
                client,
                generators[k],
                global_shared,
                round_index,
                instructions,
                losses[k],
                tdcs[k],
                train_seconds,
                swap,
            )
        )
    return results
