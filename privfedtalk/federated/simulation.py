"""The federated round loop: sample clients, train each in turn, privatize, securely sum, apply.

One process simulates every client on the single U-Net in memory; launched with WORLD_SIZE > 1 the
sampled clients are sharded over processes (see parallel.py). A run folder holds the config,
the global state after each completed round (atomically written), the client slots, TensorBoard
logs and metrics.jsonl; `--resume` continues from the last completed round.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file
from tqdm import tqdm

from privfedtalk.config import Config, load_config
from privfedtalk.data.corpus import LoadReport, load_identity, read_split
from privfedtalk.errors import MediaError, PrivacyError, PrivFedTalkError
from privfedtalk.federated import parallel
from privfedtalk.federated.client import (
    ClientData,
    LocalTrainer,
    get_flat,
    privatize,
    set_flat,
    shared_parameters,
)
from privfedtalk.federated.server import ClientReport, Server
from privfedtalk.federated.store import ClientStore, atomic_save_tensors, atomic_write_text
from privfedtalk.model import adapters
from privfedtalk.model.generator import TalkingHeadGenerator
from privfedtalk.model.identity import IdentityEncoder
from privfedtalk.model.latents import LatentClip
from privfedtalk.runtime import peak_memory_mb, resolve_device, setup_torch

log = logging.getLogger("privfedtalk")


@dataclass
class ClientSpec:
    """A registered client: which private identities it owns and how many of their clips it keeps."""

    client_id: str
    identities: list[str]
    keep_fraction: float = 1.0


def register_clients(cfg) -> list[ClientSpec]:
    """Partition the private identities into clients (seeded); cheap: no media is read here."""
    split = read_split(cfg.data.root)
    if split is None:
        raise PrivFedTalkError(f"{cfg.data.root}: no split.json naming the private identities (see README)")
    identities = list(split["private"])
    if not identities:
        raise PrivFedTalkError(f"{cfg.data.root}/split.json: 'private' is empty (clients need identities)")
    part = cfg.federated.partition
    rng = np.random.default_rng(cfg.seed)
    order = (
        list(rng.permutation(len(identities))) if part.identities_per_client > 1 else range(len(identities))
    )
    groups = [
        [identities[i] for i in list(order)[k : k + part.identities_per_client]]
        for k in range(0, len(identities), part.identities_per_client)
    ]
    specs = []
    for index, group in enumerate(groups):
        keep = float(rng.uniform(0.25, 1.0)) if part.unequal else 1.0
        specs.append(ClientSpec(f"client{index:04d}", group, keep))
    return specs


def sample_clients(specs: list[ClientSpec], fed_cfg, seed: int, round_index: int) -> list[ClientSpec]:
    """The accountant's sampling scheme: exactly m of N without replacement, or Poisson with q = m/N."""
    rng = np.random.default_rng([seed, round_index, 7])
    m = min(fed_cfg.clients_per_round, len(specs))
    if fed_cfg.sampling == "poisson":
        chosen = np.flatnonzero(rng.random(len(specs)) < m / len(specs))
    else:
        chosen = np.sort(rng.choice(len(specs), size=m, replace=False))
    return [specs[i] for i in chosen]


def client_seed(seed: int, round_index: int, client_id: str) -> int:
    return int(np.random.default_rng([seed, round_index, int(client_id[len("client") :])]).integers(2**62))


class ClientLoader:
    """Loads a client's clips on its turn and caches their latents in its slot (memory stays flat)."""

    def __init__(self, cfg, model: TalkingHeadGenerator, store: ClientStore):
        self.cfg = cfg
        self.model = model
        self.store = store

    def load(self, spec: ClientSpec) -> ClientData:
        cached = self.store.load_latents(spec.client_id)
        if cached is None:
            cached = self._encode(spec)
        tensors, index = cached
        train = [
            LatentClip(
                c["identity"], c["name"], tensors[f"{i}.latents"], tensors[f"{i}.features"], None, None, None
            )
            for i, c in enumerate(index["train"])
        ]
        return ClientData(spec.client_id, spec.identities, train, index["heldout"])

    def _encode(self, spec: ClientSpec):
        data = self.cfg.data
        report = LoadReport()
        train_clips, heldout = [], []
        for identity in spec.identities:
            try:
                clips = load_identity(data.root, identity, data.audio, size=data.size, report=report)
            except MediaError as err:
                log.warning("%s", err)
                continue
            keep = clips[: max(1, len(clips) - data.heldout_clips)] if len(clips) > 1 else clips
            heldout += [f"{identity}/{c.name}" for c in clips[len(keep) :]]
            n_keep = max(1, int(round(len(keep) * spec.keep_fraction)))
            train_clips += keep[:n_keep]
        if report.skipped:
            log.warning("%s: %s", spec.client_id, report.summary())
        if not train_clips:
            raise MediaError(
                f"{data.root}/{','.join(spec.identities)}",
                "client has no usable training clips",
                "add clips with audio to its identity folders",
            )
        tensors, index = {}, {"train": [], "heldout": heldout}
        for i, clip in enumerate(train_clips):
            tensors[f"{i}.latents"] = self.model.encode_frames(clip.frames)
            tensors[f"{i}.features"] = torch.as_tensor(clip.features, dtype=torch.float32)
            index["train"].append({"identity": clip.identity, "name": clip.name})
        self.store.save_latents(spec.client_id, tensors, index)
        return tensors, index


def build_federated_model(cfg, device) -> tuple[TalkingHeadGenerator, IdentityEncoder]:
    """Pretrained backbone + adapters: the shared LoRA (unless the whole U-Net is federated) and identity."""
    checkpoint = Path(cfg.federated.checkpoint)
    model = TalkingHeadGenerator.from_pretrained(checkpoint).to(device)
    encoder = IdentityEncoder.load(checkpoint).to(device)
    model.requires_grad_(False)
    fed = cfg.federated
    if fed.federate not in ("shared_adapter", "unet"):
        raise PrivFedTalkError(f"federated.federate={fed.federate!r}: use shared_adapter or unet")
    if fed.federate == "unet":
        adapters.attach_adapters(model.unet, None, fed.identity)
        for name, param in model.unet.named_parameters():
            if "lora_" not in name:
                param.requires_grad = True  # the backbone itself is what clients train and share
    else:
        adapters.attach_adapters(model.unet, fed.shared, fed.identity)
    return model, encoder


class RunState:
    """Global state after the last completed round: shared vector + JSON (round, accountant, ...)."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.state_file = run_dir / "state.json"
        self.global_file = run_dir / "global_shared.safetensors"

    def exists(self) -> bool:
        return self.state_file.is_file() and self.global_file.is_file()

    def save(self, global_shared: torch.Tensor, info: dict) -> None:
        atomic_save_tensors({"global_shared": global_shared}, self.global_file)
        atomic_write_text(json.dumps(info), self.state_file)  # written last: it marks the round done

    def load(self) -> tuple[torch.Tensor, dict]:
        info = json.loads(self.state_file.read_text())
        return load_file(str(self.global_file))["global_shared"], info


def train(cfg=None, resume: str | None = None, on_client_done=None) -> Path:
    """Run (or resume) a federated training; returns the run folder.

    on_client_done(round_index, client_id) is a hook for tests (e.g. to simulate a kill). Under
    torchrun / accelerate launch (WORLD_SIZE > 1) every process calls this and trains its share.
    """
    group = parallel.init_from_env()
    try:
        return _train(cfg, resume, on_client_done, group)
    finally:
        if group is not None:
            group.close()


def _train(cfg, resume, on_client_done, group) -> Path:
    is_server = group is None or group.is_server  # only the server process writes the run folder
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "config.yaml").is_file():
            raise PrivFedTalkError(
                f"{run_dir}: not a run folder (no config.yaml); start a run with `privfedtalk train`"
            )
        cfg = load_config(run_dir / "config.yaml", schema=Config)
    run_dir = Path(cfg.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    state = RunState(run_dir)
    if resume is None and state.exists():
        raise PrivFedTalkError(
            f"{run_dir}: already holds a run (continue it with --resume {run_dir}, or pick out_dir=...)"
        )
    if is_server:
        atomic_write_text(OmegaConf.to_yaml(cfg), run_dir / "config.yaml")

    setup_torch(cfg.threads if group is None else group.threads(cfg.threads))
    device = resolve_device(cfg.device)
    if group is not None:
        device = group.device(device)
    torch.manual_seed(cfg.seed)
    model, encoder = build_federated_model(cfg, device)
    fed = cfg.federated
    store = ClientStore(run_dir)
    specs = register_clients(cfg)
    loader = ClientLoader(cfg, model, store)
    trainer = LocalTrainer(model, encoder, store, fed, cfg.data.window, cfg.model.diffusion.condition_dropout)
    initial = get_flat(trainer.shared)
    server = Server(initial, fed, cfg.privacy, len(specs), fed.rounds)

    start_round = 0
    if resume is not None and state.exists():
        global_shared, info = state.load()
        server.global_shared = global_shared
        start_round = info["completed_rounds"]
        if server.accountant is not None:
            server.accountant.load_state_dict(info["accountant"])
        dropped = store.discard_pending() if is_server else 0
        if group is not None:
            group.barrier()  # stale adapters are gone before any process stages new ones
        log.info(
            "resuming %s after round %d (%d staged adapters of the unfinished round dropped)",
            run_dir,
            start_round,
            dropped,
        )

    upload_values = initial.numel()
    log.info(
        "%d clients registered (%s), %d per round, federate=%s: %d shared values, "
        "upload %.1f KB/client-round",
        len(specs),
        ", ".join(f"{s.client_id}:{'+'.join(s.identities)}" for s in specs[:4])
        + (" ..." if len(specs) > 4 else ""),
        server.expected_clients,
        fed.federate,
        upload_values,
        upload_bytes(upload_values, cfg.privacy) / 1e3,
    )
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run_dir / "tensorboard")) if is_server else None
    if server.accountant is not None:
        # The noise vector's norm is std * sqrt(d) whatever the updates are, while the weighted sum of
        # clipped updates has norm <= expected_clients * w_max * C: with few clients per round the
        # noise dominates for any C, and C only sets how far it moves the shared adapter.
        std, dims = server.noise_std_total(), len(server.global_shared)
        log.info(
            "DP: z = %.3f, clip C = %.3g, w_max = %.3g: noise std %.3g per value on the sum; "
            "noise norm ~%.3g vs at most %.3g of clipped signal (%d clients x w_max x C)",
            server.noise_multiplier,
            cfg.privacy.clip_norm,
            server.weight_cap,
            std,
            std * math.sqrt(dims),
            server.expected_clients * server.weight_cap * cfg.privacy.clip_norm,
            server.expected_clients,
        )
    for round_index in tqdm(
        range(start_round, fed.rounds),
        desc="rounds",
        initial=start_round,
        total=fed.rounds,
        disable=not is_server,
    ):
        record = run_round(cfg, round_index, specs, loader, trainer, server, on_client_done, group)
        if (
            is_server
            and fed.eval_every > 0
            and fed.eval_clips > 0
            and ((round_index + 1) % fed.eval_every == 0 or round_index + 1 == fed.rounds)
        ):
            record["eval"] = evaluate_round(cfg, model, encoder, trainer, store, specs, server)
        committed = record.get("committed", [])
        for spec_id in committed if group is None else group.trained_here(committed):
            store.commit_identity(spec_id)  # by the process that staged it (it owns the slot)
        if group is not None:
            group.barrier()  # every slot is committed before any process starts the next round
        if is_server:
            info = {"completed_rounds": round_index + 1, "epsilon": record.get("epsilon")}
            if server.accountant is not None:
                info["accountant"] = server.accountant.state_dict()
            state.save(server.global_shared, info)
            log_round(writer, run_dir, record)
    if writer is not None:
        writer.close()
    return run_dir


def upload_bytes(values: int, privacy_cfg) -> int:
    """Bytes a client uploads per round: fixed-point words under secure aggregation, else float32."""
    return values * (privacy_cfg.fixed_point_bits // 8 if privacy_cfg.secure_aggregation else 4)


def run_round(cfg, round_index, specs, loader, trainer, server, on_client_done=None, group=None) -> dict:
    """One round, as the protocol orders it (see docs/architecture.md).

    With `group` (a parallel.RankGroup) this process trains only its shard of the sampled clients;
    reports, norms and the sum go through the group so every process ends with the same state.
    """
    fed, privacy = cfg.federated, cfg.privacy
    started = time.perf_counter()
    # 1. The server samples clients with the scheme the accountant assumes.
    sampled = sample_clients(specs, fed, cfg.seed, round_index)
    # 2. Each client trains locally from the broadcast global state and computes its signals.
    mine = sampled if group is None else group.shard(sampled)
    updates, local = train_clients(cfg, round_index, mine, loader, trainer, server, on_client_done, group)
    reports = [ClientReport(u.client_id, u.num_samples, u.signals) for u in updates.values()]
    if group is not None:
        local_seconds, peak = time.perf_counter() - started, peak_memory_mb(trainer.model.device)
        order = [s.client_id for s in sampled]
        reports, local, rank_stats = group.gather_reports(reports, local, order, local_seconds, peak)
    client_ids = [r.client_id for r in reports]
    record = {"round": round_index + 1, "sampled": [s.client_id for s in sampled], "clients": client_ids}
    if group is not None:
        record.update(rank_stats)
    if not reports:
        log.warning("round %d: no client produced an update; global state unchanged", round_index + 1)
        record["epsilon"] = server.epsilon()
        return record
    # 3. The server turns (count, quantized signals) into capped weights and sends each its own.
    weights = server.weights(reports)
    # 4. Each client clips, weights, adds its noise share (distributed DP) and masks.
    clip = privacy.clip_norm if (privacy.dp or privacy.secure_aggregation) else None
    share_std = 0.0
    if privacy.dp and privacy.noise == "distributed":
        # Shares are sized by the round's roster (public once sampling is done), so the sum carries
        # the full z·w_max·C whatever Poisson sampling drew; only dropouts after sharing lower it.
        share_std = server.noise_std_total() / np.sqrt(len(client_ids))
    vectors, norms = {}, {}
    for client_id, update in updates.items():
        rng = np.random.default_rng(client_seed(cfg.seed, round_index, client_id) + 1)
        vectors[client_id], norms[client_id] = privatize(update, weights[client_id], clip, share_std, rng)
    del updates  # the raw deltas end here, on the clients
    if group is not None:
        norms = group.merge(norms)  # diagnostics for the record (the server never needs them)
    dropped = simulated_dropouts(client_ids, privacy.dropout_rate, cfg.seed, round_index)
    # 5. The server sums (masked), decodes, applies with the server learning rate; ε is recorded.
    secagg_seconds = 0.0
    try:
        if privacy.secure_aggregation:
            if len(client_ids) < 2:
                # A one-client "sum" is that client's update: never hand it to the server.
                raise PrivacyError(
                    f"secure aggregation needs at least 2 clients, round has {len(client_ids)}"
                )
            if group is None:
                result = server.secure_sum(vectors, round_index, dropped=dropped)
            else:
                result = group.secure_sum(server, vectors, client_ids, round_index, dropped=dropped)
            total, survivors, secagg_seconds = result.total, list(result.survivors), result.seconds
        else:
            survivors = [c for c in client_ids if c not in dropped]
            if group is None:
                total = np.sum([vectors[c] for c in survivors], axis=0)
            else:
                total = group.sum(vectors, survivors, len(server.global_shared))
    except PrivacyError as err:
        # Nothing was released in a skipped round, so the accountant records nothing.
        log.warning("round %d skipped, global state untouched: %s", round_index + 1, err)
        record.update(skipped=str(err), epsilon=server.epsilon())
        return record
    if privacy.dp and privacy.noise == "trusted":
        rng = np.random.default_rng([cfg.seed, round_index, 99])
        total = total + rng.normal(0.0, server.noise_std_total(), size=total.shape)
    server.apply(total)
    z_used = server.account(len(client_ids), len(survivors))
    record.update(
        survivors=survivors,
        committed=survivors,
        weights={c: weights[c] for c in survivors},
        signals={c: reports[i].signals for i, c in enumerate(weights)},
        loss=float(np.mean([local[c].loss for c in survivors])),
        tdc=float(np.mean([local[c].tdc for c in survivors])),
        update_norm=float(np.mean([norms[c] for c in survivors])),
        train_seconds=float(np.median([local[c].train_seconds for c in survivors])),
        swap_seconds=float(np.median([local[c].swap_seconds for c in survivors])),
        secagg_seconds=secagg_seconds,
        round_seconds=time.perf_counter() - started,
        upload_bytes=upload_bytes(len(server.global_shared), privacy),
        noise_multiplier=z_used,
        epsilon=server.epsilon(),
        peak_memory_mb=peak_memory_mb(trainer.model.device),
    )
    return record


def train_clients(cfg, round_index, specs, loader, trainer, server, on_client_done=None, group=None):
    """The local phase: each client in `specs` trains from the global state; (updates, reports) by id."""
    updates, local = {}, {}
    quiet = group is not None and not group.is_server
    for spec in tqdm(specs, desc=f"round {round_index + 1} clients", leave=False, disable=quiet):
        try:
            data = loader.load(spec)
        except MediaError as err:
            log.warning("round %d: %s skipped: %s", round_index + 1, spec.client_id, err)
            continue
        seed = client_seed(cfg.seed, round_index, spec.client_id)
        update, report = trainer.run(data, server.global_shared, round_index, seed)
        updates[spec.client_id], local[spec.client_id] = update, report
        if on_client_done is not None:
            on_client_done(round_index, spec.client_id)
    return updates, local


def simulated_dropouts(client_ids: list[str], rate: float, seed: int, round_index: int) -> list[str]:
    """Clients that share their keys and then vanish before sending their masked vector."""
    if rate <= 0:
        return []
    rng = np.random.default_rng([seed, round_index, 13])
    return [c for c in client_ids if rng.random() < rate]


def log_round(writer, run_dir: Path, record: dict) -> None:
    step = record["round"]
    for key in (
        "loss",
        "tdc",
        "update_norm",
        "round_seconds",
        "train_seconds",
        "swap_seconds",
        "secagg_seconds",
        "upload_bytes",
        "epsilon",
        "peak_memory_mb",
    ):
        if record.get(key) is not None:
            writer.add_scalar(f"round/{key}", record[key], step)
    for client_id, weight in record.get("weights", {}).items():
        writer.add_scalar(f"weights/{client_id}", weight, step)
    for client_id, signals in record.get("signals", {}).items():
        for name, value in signals.items():
            writer.add_scalar(f"signals/{name}/{client_id}", value, step)
    for key, value in (record.get("eval") or {}).items():
        if isinstance(value, float):
            writer.add_scalar(f"eval/{key}", value, step)
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def evaluate_round(cfg, model, encoder, trainer, store, specs, server) -> dict:
    """Quick held-out check with the current global state (client identity adapters off)."""
    from privfedtalk.evaluate import evaluate_clips

    clips = heldout_clips(cfg, specs[: cfg.federated.eval_clips])
    if not clips:
        return {}
    saved = get_flat(trainer.shared)
    set_flat(trainer.shared, server.global_shared)
    with identity_adapter_off(model):
        result = evaluate_clips(model, encoder, clips, seed=cfg.seed, controls=False)
    set_flat(trainer.shared, saved)
    result.pop("per_clip", None)
    return result


class identity_adapter_off:
    """Context: only the shared adapter is active (the global model without personalization)."""

    def __init__(self, model):
        self.unet = model.unet
        self.had_identity = adapters.IDENTITY in getattr(self.unet, "peft_config", {})

    def __enter__(self):
        if self.had_identity:
            adapters.use_shared_only(self.unet)
        return self

    def __exit__(self, *exc):
        if self.had_identity:
            adapters.use_all(self.unet)


def heldout_clips(cfg, specs: list[ClientSpec]) -> list:
    """The held-out clips (last `heldout_clips` of each identity) of the given clients."""
    report = LoadReport()
    out = []
    for spec in specs:
        for identity in spec.identities:
            try:
                clips = load_identity(
                    cfg.data.root, identity, cfg.data.audio, size=cfg.data.size, report=report
                )
            except MediaError:
                continue
            if len(clips) > 1:
                out += clips[max(1, len(clips) - cfg.data.heldout_clips) :]
    return out


def load_personalized_model(run_dir: str | Path, client_id: str | None, use_identity: bool = True):
    """Pretrained backbone + the run's global shared state (+ a client's identity adapter)."""
    run_dir = Path(run_dir)
    state = RunState(run_dir)
    if not state.exists():
        raise PrivFedTalkError(f"{run_dir}: no completed round to load (train first, or check the path)")
    cfg = load_config(run_dir / "config.yaml", schema=Config)
    setup_torch(cfg.threads)
    model, encoder = build_federated_model(cfg, resolve_device(cfg.device))
    global_shared, _ = state.load()
    set_flat(shared_parameters(model.unet, cfg.federated.federate), global_shared)
    store = ClientStore(run_dir)
    if client_id and use_identity and adapters.IDENTITY in model.unet.peft_config:
        if not store.has_identity(client_id):
            known = sorted(
                p.name for p in store.root.glob("client*") if (p / "identity_adapter.safetensors").is_file()
            )
            raise PrivFedTalkError(
                f"{run_dir}: client {client_id!r} has no identity adapter (trained: {known[:8]})"
            )
        adapters.load_adapter_state(model.unet, adapters.IDENTITY, store.load_identity(client_id))
    elif adapters.IDENTITY in model.unet.peft_config:
        adapters.use_shared_only(model.unet)
    model.eval()
    return model, encoder
