"""One virtual client's turn: local training of shared + identity adapters, signals, and its update.

Everything here runs "on the device" of the client. Its result is a `ClientUpdate`; the privacy
mechanism turns that into the clipped, weighted, noised vector that secure aggregation masks. The
identity adapter and the media stay in the client's slot.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from privfedtalk.config import Federate, SignalSource
from privfedtalk.federated import batched, signals
from privfedtalk.federated.aggregation import fedprox_term
from privfedtalk.federated.strategy import ClientReport, Instructions
from privfedtalk.model import adapters
from privfedtalk.model.latents import LatentClip, sample_windows
from privfedtalk.privacy.dp import quantize_unit_scalar
from privfedtalk.runtime import Precision


@dataclass
class ClientData:
    """A client's private data: its training clips (latents cached) and its held-out clip names."""

    client_id: str
    identities: list[str]
    train: list[LatentClip]
    heldout: list[str] = field(default_factory=list)  # "identity/clip" names kept for evaluation
    data_signals: dict[str, float] = field(default_factory=dict)  # raw, see federated/signals.py

    @property
    def num_samples(self) -> int:
        return sum(len(clip) for clip in self.train)


@dataclass
class ClientUpdate:
    """The only thing a client hands to the privacy step after local training.

    delta: change of the shared parameters (flat float32); signals: quantized reliability
    scalars in [0, 1] (empty when the strategy does not ask for them). No identity-adapter tensor,
    no media, no loss curve.
    """

    client_id: str
    num_samples: int
    delta: torch.Tensor
    signals: dict[str, float]

    @property
    def report(self) -> ClientReport:
        """The weighing inputs (count, signals): sent to the server only in runs without DP."""
        return ClientReport(self.client_id, self.num_samples, dict(self.signals))


@dataclass
class LocalReport:
    """Client-side diagnostics for the simulation's logs (a deployment would keep them on device)."""

    loss: float
    tdc: float
    update_norm: float  # before clipping
    train_seconds: float
    swap_seconds: float


def shared_parameters(unet, federate: Federate) -> list[torch.nn.Parameter]:
    """Parameters that are aggregated: the shared LoRA adapter, or the whole U-Net backbone."""
    if federate == Federate.unet:
        return [p for n, p in unet.named_parameters() if "lora_" not in n]
    return adapters.adapter_parameters(unet, adapters.SHARED)


def get_flat(params) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).float().cpu() for p in params])


def set_flat(params, vector: torch.Tensor) -> None:
    offset = 0
    with torch.no_grad():
        for p in params:
            n = p.numel()
            p.copy_(vector[offset : offset + n].view_as(p).to(p.device, p.dtype))
            offset += n


class LocalTrainer:
    """Runs clients one after another on the single U-Net in memory."""

    def __init__(self, cfg, model, identity_encoder, store):
        self.model = model
        self.precision = Precision(model.device, cfg.mixed_precision)
        self.encoder = identity_encoder
        self.store = store
        self.cfg = cfg.federated
        self.window = cfg.data.window
        self.client_batch = cfg.federated.client_batch
        self.condition_dropout = cfg.model.diffusion.condition_dropout
        fed_cfg = cfg.federated
        unet = model.unet
        self.shared = shared_parameters(unet, fed_cfg.federate)
        self.identity = adapters.adapter_parameters(unet, adapters.IDENTITY)
        self.fresh_identity = adapters.adapter_state(unet, adapters.IDENTITY) if self.identity else None

    # -- adapter slot swap ----------------------------------------------------------------------
    def swap_in(self, client: ClientData, global_shared: torch.Tensor) -> None:
        set_flat(self.shared, global_shared)
        if self.identity:
            state = (
                self.store.load_identity(client.client_id)
                if self.store.has_identity(client.client_id)
                else None
            )
            adapters.load_adapter_state(self.model.unet, adapters.IDENTITY, state or self.fresh_identity)

    def swap_out(self, client: ClientData, round_index: int) -> None:
        if self.identity:
            state = adapters.adapter_state(self.model.unet, adapters.IDENTITY)
            self.store.stage_identity(client.client_id, state, round_index)

    # -- the local round ------------------------------------------------------------------------
    def run(
        self,
        client: ClientData,
        global_shared: torch.Tensor,
        round_index: int,
        seed: int,
        instructions: Instructions,
    ):
        """Train locally from the broadcast shared state as instructed; return (ClientUpdate, LocalReport)."""
        cfg = self.cfg
        generator = torch.Generator().manual_seed(seed)
        t0 = time.perf_counter()
        self.swap_in(client, global_shared)
        swap = time.perf_counter() - t0

        model, device = self.model, self.model.device
        global_copy = [p.detach().clone() for p in self.shared]
        params = self.shared + self.identity
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
        model.unet.train()
        losses, tdcs = [], []
        t1 = time.perf_counter()
        for _ in range(instructions.local_steps):
            latents, reference, audio = sample_windows(
                client.train, cfg.batch_windows, self.window, generator
            )
            with self.precision.autocast():
                out = model.loss(
                    latents.to(device),
                    reference.to(device),
                    audio.to(device),
                    generator,
                    lambda_tdc=cfg.lambda_tdc,
                    tdc_space=cfg.tdc_space,
                    condition_dropout=self.condition_dropout,
                )
            loss = out["total"]
            if instructions.mu > 0:
                loss = loss + fedprox_term(self.shared, global_copy, instructions.mu)
            self.precision.step(loss, optimizer, params)
            losses.append(out["diffusion"].item())
            tdcs.append(out["tdc"].item() if "tdc" in out else 0.0)
        model.unet.eval()
        train_seconds = time.perf_counter() - t1
        return self.finish(
            client, generator, global_shared, round_index, instructions, losses, tdcs, train_seconds, swap
        )

    def finish(
        self,
        client: ClientData,
        generator: torch.Generator,
        global_shared: torch.Tensor,
        round_index: int,
        instructions: Instructions,
        losses: list[float],
        tdcs: list[float],
        train_seconds: float,
        swap: float,
    ):
        """After local steps, with the client's adapters in the U-Net: signals, update, slot, report."""
        reliability = self.reliability_signals(client, generator) if instructions.compute_signals else {}
        t2 = time.perf_counter()
        delta = get_flat(self.shared) - global_shared
        self.swap_out(client, round_index)
        swap += time.perf_counter() - t2
        update = ClientUpdate(client.client_id, client.num_samples, delta, reliability)
        report = LocalReport(
            float(np.mean(losses)) if losses else math.nan,
            float(np.mean(tdcs)) if tdcs else math.nan,
            float(delta.norm()),
            train_seconds,
            swap,
        )
        return update, report

    def run_many(
        self,
        clients: list[ClientData],
        global_shared: torch.Tensor,
        round_index: int,
        seeds: list[int],
        instructions: Instructions,
    ) -> list:
        """`run` for several clients at once (grouped U-Net passes): one (ClientUpdate, LocalReport)
        per client, equal to `run`'s up to float rounding (federated/batched.py). A group of one is
        `run` itself."""
        if len(clients) == 1:
            return [self.run(clients[0], global_shared, round_index, seeds[0], instructions)]
        return batched.run_group(self, clients, global_shared, round_index, seeds, instructions)

    def reliability_signals(self, client: ClientData, generator: torch.Generator) -> dict[str, float]:
        """Identity consistency and temporal stability, quantized to `signal_bits` bits on the client.

        `signal_source=model` (the paper's): measured on the locally trained model's predictions.
        `signal_source=data`: measured on the client's own training frames when it read its clips
        (federated/signals.py), mapped through `signal_identity_range` / `signal_temporal_range`.
        """
        if self.cfg.signal_source == SignalSource.data:
            return signals.quantized_signals(client.data_signals, self.cfg)
        return self.model_signals(client, generator)

    @torch.no_grad()
    def model_signals(self, client: ClientData, generator: torch.Generator) -> dict[str, float]:
        """The model denoises windows noised to the middle of the schedule. ID: cosine similarity of
        the identity encoder's embeddings of the decoded prediction and of the decoded reference.
        TS = 1/(1 + J), J the mean L1 error between predicted and true adjacent-frame differences of
        the clean latents (unit-variance units). Both clipped to [0, 1] and quantized. On a shared
        backbone the ID term is ~1 for every client (docs/results.md): `signal_source=data` separates
        corrupted clients."""
        model, device = self.model, self.model.device
        latents, reference, audio = sample_windows(
            client.train, self.cfg.signal_windows, self.window, generator
        )
        batch, window = latents.shape[:2]
        flat = latents.flatten(0, 1).to(device)
        half = model.scheduler.config.num_train_timesteps // 2
        t = torch.full((flat.shape[0],), half, device=device, dtype=torch.long)
        noise = torch.randn(flat.shape, generator=generator).to(device)
        noisy = model.scheduler.add_noise(flat, noise, t)
        ref = reference.to(device).repeat_interleave(window, dim=0)
        output = model.denoise(noisy, t, ref, audio.flatten(0, 1).to(device))
        predicted = model._predicted_x0(noisy, output, t)
        pixels = torch.as_tensor(model.decode_latents(predicted)).float().permute(0, 3, 1, 2) / 127.5 - 1
        ref_pixels = torch.as_tensor(model.decode_latents(reference)).float().permute(0, 3, 1, 2) / 127.5 - 1
        emb = self.encoder.embed(pixels).view(batch, window, -1)
        ref_emb = self.encoder.embed(ref_pixels).unsqueeze(1)
        identity = float(F.cosine_similarity(emb, ref_emb, dim=-1).mean())
        pred_steps = predicted.view(latents.shape).diff(dim=1).cpu()
        true_steps = latents.diff(dim=1)
        jitter = float((pred_steps - true_steps).abs().mean())
        bits = self.cfg.signal_bits
        return {
            "identity_consistency": quantize_unit_scalar(float(np.clip(identity, 0, 1)), bits),
            "temporal_stability": quantize_unit_scalar(1.0 / (1.0 + jitter), bits),
        }
