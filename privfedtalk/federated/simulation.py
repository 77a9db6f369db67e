"""The federated round loop: sample, train, weigh, privatize, sum, apply, in the protocol's order.

One process simulates every client on the single U-Net in memory (SequentialBackend); launched with
WORLD_SIZE > 1 the sampled clients are sharded over processes (parallel.DistributedBackend). Who
weighs and how the server steps is the Strategy's; everything between a raw update and the released
sum, and what it costs, is the PrivacyMechanism's. A run folder (store.RunFolder) holds the config,
the global state after each completed round (atomically written), the client slots, TensorBoard logs
and metrics.jsonl; `--resume` continues from the last completed round.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from privfedtalk.config import Config
from privfedtalk.errors import PrivFedTalkError
from privfedtalk.federated import parallel
from privfedtalk.federated.backend import SequentialBackend
from privfedtalk.federated.client import LocalTrainer, get_flat, set_flat
from privfedtalk.federated.clients import (
    ClientLoader,
    ClientSpec,
    heldout_clips,
    register_clients,
    sample_clients,
)
from privfedtalk.federated.models import build_federated_model, identity_adapter_off
from privfedtalk.federated.store import ClientStore, RunFolder
from privfedtalk.federated.strategy import Strategy, build_strategy
from privfedtalk.model.generator import TalkingHeadGenerator
from privfedtalk.model.identity import IdentityEncoder
from privfedtalk.privacy.mechanism import PrivacyMechanism, Release
from privfedtalk.runtime import peak_memory_mb, resolve_device, setup_torch

log = logging.getLogger("privfedtalk")


@dataclass
class Federation:
    """A run in memory: who takes part, what they train, how rounds are weighed, privatized and applied."""

    cfg: Config
    folder: RunFolder
    model: TalkingHeadGenerator
    encoder: IdentityEncoder
    store: ClientStore
    specs: list[ClientSpec]
    strategy: Strategy
    privacy: PrivacyMechanism
    backend: SequentialBackend
    global_state: torch.Tensor
    on_release: Callable | None = None
    committed: tuple = ()  # the last round's survivors: their staged identity adapters are promoted

    @property
    def trainer(self):
        return self.backend.trainer


def run_round(fed: Federation, round_index: int) -> dict:
    """One round (shared/ARCHITECTURE.md, "The round protocol"); returns its metrics record."""
    started = time.perf_counter()
    cfg, privacy = fed.cfg, fed.privacy
    # 1. The server samples clients with the scheme the accountant assumes (a secret draw under DP).
    source = privacy.sampling_source(round_index)
    sampled = sample_clients(fed.specs, cfg.federated.sampling, cfg.federated.clients_per_round, source)
    # 2. The sampled clients train from the broadcast global state, as the strategy instructs.
    instructions = fed.strategy.configure_round(round_index)
    local = fed.backend.train(sampled, instructions, fed.global_state, round_index)
    # A client whose update fails the checks withholds it; the roster is every client that sends.
    refused = fed.backend.refusals(local, privacy)
    roster = fed.backend.roster([c for c in local if c not in refused])
    updates = {c: local[c].update for c in roster if c in local}
    # 3. Weights: capped on each client under DP, normalised by the server otherwise.
    # 4. Each client clips, weights and noises its update; the raw deltas end here (on the client).
    weights, vectors = fed.backend.privatize(privacy, fed.strategy, updates, len(roster), round_index)
    # 5. The server sums (masked), decodes and applies the strategy's step; the release is charged.
    dropped = simulated_dropouts(roster, cfg.privacy.dropout_rate, cfg.seed, round_index)
    if fed.backend.is_server and privacy.observer is not None:
        fed.folder.mark_pending_release({"round": round_index, "roster": roster})
    release = privacy.release(fed.backend, vectors, roster, dropped, round_index)
    if release.total is not None:
        fed.global_state = fed.strategy.apply(
            fed.global_state, torch.as_tensor(release.total, dtype=torch.float32)
        )
    fed.committed = tuple(release.survivors)
    if fed.on_release is not None:
        fed.on_release(round_index, release, roster)
    return round_record(fed, round_index, sampled, local, refused, roster, weights, release, started)


def simulated_dropouts(client_ids: list[str], rate: float, seed: int, round_index: int) -> list[str]:
    """Clients that share their keys and then vanish before sending their masked vector."""
    if rate <= 0:
        return []
    rng = np.random.default_rng([seed, round_index, 13])
    return [c for c in client_ids if rng.random() < rate]


def upload_bytes(values: int, privacy_cfg) -> int:
    """Bytes a client uploads per round: fixed-point words under secure aggregation, else float32."""
    return values * (privacy_cfg.fixed_point_bits // 8 if privacy_cfg.secure_aggregation else 4)


def round_record(
    fed, round_index, sampled, local, refused, roster, weights, release: Release, started
) -> dict:
    """The round's metrics.jsonl line. A DP run logs no per-client value (who, weight, signal, loss,
    norm): only counts, the released update's norm, timings and ε per adversary."""
    privacy = fed.privacy
    diagnostics = fed.backend.merge({c: r.report for c, r in local.items()})
    record = {
        "round": round_index + 1,
        "clients": len(roster),
        "refused": len(fed.backend.merge(refused)),
        "survivors": len(release.survivors),
        "train_seconds": _median([d.train_seconds for d in diagnostics.values()]),
        "swap_seconds": _median([d.swap_seconds for d in diagnostics.values()]),
        "secagg_seconds": release.secure_sum_seconds,
        "round_seconds": time.perf_counter() - started,
        "upload_bytes": upload_bytes(len(fed.global_state), fed.cfg.privacy),
        "peak_memory_mb": peak_memory_mb(fed.model.device),
        "precision": fed.trainer.precision.label,
        "guarantee": privacy.guarantee,
        **fed.backend.rank_stats(time.perf_counter() - started, peak_memory_mb(fed.model.device)),
    }
    if release.skipped:
        record["skipped"] = release.skipped
    if release.total is not None:
        record["released_norm"] = float(np.linalg.norm(release.total))
    if release.signal_norm is not None:
        record.update(signal_norm=release.signal_norm, noise_norm=release.noise_norm)
        record["noise_to_signal"] = release.noise_norm / release.signal_norm if release.signal_norm else None
    if privacy.observer is not None:
        record.update(noise_multiplier=release.noise_multiplier, noise_only=release.noise_only)
        record.update(clip_norm=release.clip_norm, next_clip_norm=privacy.clip_norm)
        record.update(privacy.epsilons())
        return record
    survivors = release.survivors
    record.update(
        sampled=[s.client_id for s in sampled],
        roster=roster,
        survivor_ids=survivors,
        weights={c: weights[c] for c in survivors if c in weights},
        signals={c: dict(r.update.signals) for c, r in local.items() if r.update.signals},
        loss=_mean([diagnostics[c].loss for c in survivors if c in diagnostics]),
        tdc=_mean([diagnostics[c].tdc for c in survivors if c in diagnostics]),
        update_norm=_mean([diagnostics[c].update_norm for c in survivors if c in diagnostics]),
    )
    return record


def _median(values) -> float | None:
    return float(statistics.median(values)) if values else None


def _mean(values) -> float | None:
    """Mean of the finite values (a canary client trains nothing and reports NaN loss)."""
    values = [v for v in values if math.isfinite(v)]
    return float(np.mean(values)) if values else None


# ------------------------------------------------------------------------------------------- the run


def train(
    cfg: Config | None = None,
    resume: str | None = None,
    *,
    clients: list[ClientSpec] | None = None,
    trainer_factory: Callable | None = None,
    on_release: Callable | None = None,
    on_client_done: Callable | None = None,
    backend_factory: Callable | None = None,
) -> Path:
    """Run (or resume) a federated training; returns the run folder.

    Extension points, so callers extend a run without monkeypatching:
      clients: the registered clients (default: `register_clients(cfg)`, one per private identity);
      trainer_factory(cfg, model, encoder, store): a trainer with `LocalTrainer.run`'s signature;
      on_release(round_index, release, roster): after each round's release, with what the server decoded;
      on_client_done(round_index, client_id): after each client's local training (e.g. a simulated kill);
      backend_factory(loader, trainer, seed, on_client_done): the backend that runs the clients
        (default: SequentialBackend; flower/backend.py's FlowerBackend sends them Flower messages).
    Under torchrun / accelerate launch (WORLD_SIZE > 1) every process calls this and trains its share.
    """
    group = parallel.init_from_env()
    try:
        folder, cfg = open_run_folder(cfg, resume, group is None or group.is_server)
        fed = build_federation(
            cfg, folder, group, clients, trainer_factory, on_release, on_client_done, backend_factory
        )
        start = restore(fed) if resume is not None and folder.exists() else 0
        log_plan(fed)
        run_rounds(fed, start)
        return folder.path
    finally:
        if group is not None:
            group.close()


def open_run_folder(cfg: Config | None, resume: str | None, is_server: bool) -> tuple[RunFolder, Config]:
    if resume is not None:
        folder = RunFolder(resume)
        if not folder.config_file.is_file():
            raise PrivFedTalkError(
                f"{resume}: not a run folder (no config.yaml); start a run with `privfedtalk train`"
            )
        cfg = folder.load_config()
    folder = RunFolder(cfg.out_dir)
    folder.path.mkdir(parents=True, exist_ok=True)
    if resume is None and folder.exists():
        raise PrivFedTalkError(
            f"{folder.path}: already holds a run "
            f"(continue it with --resume {folder.path}, or pick out_dir=...)"
        )
    if is_server:
        folder.write_config(cfg)
    return folder, cfg


def build_federation(
    cfg, folder, group, clients, trainer_factory, on_release, on_client_done, backend_factory=None
) -> Federation:
    setup_torch(cfg.threads if group is None else group.threads(cfg.threads))
    device = resolve_device(cfg.device)
    if group is not None:
        device = group.device(device)
    torch.manual_seed(cfg.seed)  # adapter initialisation uses the global generator
    model, encoder = build_federated_model(cfg, device)
    store = ClientStore(folder.path)
    specs = list(clients) if clients is not None else register_clients(cfg)
    trainer = (trainer_factory or LocalTrainer)(cfg, model, encoder, store)
    loader = ClientLoader(cfg, model, store)
    if group is not None:
        if backend_factory is not None:
            raise PrivFedTalkError("a custom backend runs in one process: unset WORLD_SIZE (no torchrun)")
        backend = parallel.DistributedBackend(group, loader, trainer, cfg.seed, on_client_done)
    else:
        backend = (backend_factory or SequentialBackend)(loader, trainer, cfg.seed, on_client_done)
    initial = get_flat(trainer.shared)
    privacy = PrivacyMechanism(cfg, [s.client_id for s in specs], len(initial))
    return Federation(
        cfg, folder, model, encoder, store, specs, build_strategy(cfg), privacy, backend, initial, on_release
    )


def restore(fed: Federation) -> int:
    """Load the last completed round's state; returns the number of rounds already done.

    A run without DP (or with the seeded test setting) continues exactly as if never stopped. A DP run
    continues with fresh OS randomness, so its remaining rounds differ from an uninterrupted run's; a
    round interrupted after its sum could have been decoded is charged to the ledger as released.
    """
    global_state, info, tensors = fed.folder.load()
    fed.global_state = global_state
    prefix = "server_optimizer."
    fed.strategy.load_state_dict(
        {
            "tensors": {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)},
            "scalars": info["server_optimizer"],
        }
    )
    fed.privacy.load_state_dict(info.get("privacy", {}))
    pending = fed.folder.pending_release()
    if pending is not None and fed.privacy.observer is not None:
        fed.privacy.charge_interrupted(pending)
    dropped = fed.store.discard_pending() if fed.backend.is_server else 0
    fed.backend.barrier()  # stale adapters are gone before any process stages new ones
    log.info(
        "resuming %s after round %d (%d staged adapters of the unfinished round dropped)",
        fed.folder.path,
        info["completed_rounds"],
        dropped,
    )
    return info["completed_rounds"]


def log_plan(fed: Federation) -> None:
    cfg, privacy = fed.cfg, fed.privacy
    values = len(fed.global_state)
    log.info(
        "%d clients registered, %d per round (%s sampling), method=%s, federate=%s: %d shared values, "
        "upload %.1f KB/client-round; privacy: %s",
        len(fed.specs),
        privacy.expected_clients,
        cfg.federated.sampling,
        cfg.federated.method,
        cfg.federated.federate,
        values,
        upload_bytes(values, cfg.privacy) / 1e3,
        privacy.guarantee,
    )
    if privacy.observer is not None:
        # The noise vector's norm is σ·√d whatever the updates are, while the weighted sum of clipped
        # updates has norm <= m·w_max·C: with few clients per round the noise dominates for any C.
        sigma = privacy.noise_std()
        log.info(
            "DP: z = %.3f, clip C = %.3g, w_max = %.3g: noise std %.3g per value on the sum; noise norm "
            "~%.3g vs at most %.3g of clipped signal (%d clients x w_max x C)",
            privacy.update_noise_multiplier,
            privacy.clip_norm,
            privacy.weight_cap,
            sigma,
            sigma * math.sqrt(values),
            privacy.expected_clients * privacy.weight_cap * privacy.clip_norm,
            privacy.expected_clients,
        )


def run_rounds(fed: Federation, start: int) -> None:
    from torch.utils.tensorboard import SummaryWriter

    fed_cfg = fed.cfg.federated
    writer = SummaryWriter(str(fed.folder.path / "tensorboard")) if fed.backend.is_server else None
    try:
        for round_index in tqdm(
            range(start, fed_cfg.rounds),
            desc="rounds",
            initial=start,
            total=fed_cfg.rounds,
            disable=not fed.backend.is_server,
        ):
            record = run_round(fed, round_index)
            last = round_index + 1 == fed_cfg.rounds
            if fed.backend.is_server and fed_cfg.eval_every > 0 and fed_cfg.eval_clips > 0:
                if (round_index + 1) % fed_cfg.eval_every == 0 or last:
                    record["eval"] = evaluate_round(fed)
            finish_round(fed, round_index, record, writer)
    finally:
        if writer is not None:
            writer.close()


def finish_round(fed: Federation, round_index: int, record: dict, writer) -> None:
    """Promote the survivors' identity adapters, then (server) save the state and log the record."""
    fed.backend.commit(list(fed.committed), fed.store)
    fed.backend.barrier()  # every slot is committed before any process starts the next round
    if not fed.backend.is_server:
        return
    strategy_state = fed.strategy.state_dict()
    tensors = {f"server_optimizer.{k}": v for k, v in strategy_state["tensors"].items()}
    info = {
        "completed_rounds": round_index + 1,
        "server_optimizer": strategy_state["scalars"],
        "privacy": fed.privacy.state_dict(),
    }
    fed.folder.save(fed.global_state, info, tensors)
    fed.folder.append_record(record)
    log_to_tensorboard(writer, record)


def log_to_tensorboard(writer, record: dict) -> None:
    step = record["round"]
    for key, value in record.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            writer.add_scalar(f"round/{key}", value, step)
    for client_id, weight in record.get("weights", {}).items():  # runs without DP only
        writer.add_scalar(f"weights/{client_id}", weight, step)
    for client_id, signals in record.get("signals", {}).items():
        for name, value in signals.items():
            writer.add_scalar(f"signals/{name}/{client_id}", value, step)
    for key, value in (record.get("eval") or {}).items():
        if isinstance(value, float):
            writer.add_scalar(f"eval/{key}", value, step)


def evaluate_round(fed: Federation) -> dict:
    """Quick held-out check of the current global state (identity adapters off), by the experimenter.

    It reads private clients' held-out clips: a measurement of the simulation, not part of what the
    protocol releases (the benchmark evaluates at the end instead, with eval_every=0).
    """
    from privfedtalk.evaluate import evaluate_clips

    clips = heldout_clips(fed.cfg, fed.specs[: fed.cfg.federated.eval_clips])
    if not clips:
        return {}
    saved = get_flat(fed.trainer.shared)
    set_flat(fed.trainer.shared, fed.global_state)
    with identity_adapter_off(fed.model):
        result = evaluate_clips(fed.model, fed.encoder, clips, seed=fed.cfg.seed, controls=False)
    set_flat(fed.trainer.shared, saved)
    result.pop("per_clip", None)
    return result
