"""Who the clients are (a partition of the private identities), how a round samples them, and how a
client's data is loaded on its turn (latents cached in its slot, so memory stays flat)."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from privfedtalk.config import Config, Sampling, config_signature
from privfedtalk.data.corpus import LoadReport, load_identity, read_split, split_heldout
from privfedtalk.errors import MediaError, PrivFedTalkError
from privfedtalk.federated.client import ClientData
from privfedtalk.federated.signals import raw_data_signals
from privfedtalk.federated.store import ClientStore, atomic_save_tensors, atomic_write_text
from privfedtalk.model.latents import LatentClip
from privfedtalk.privacy.noise import RandomSource

log = logging.getLogger("privfedtalk")


@dataclass
class ClientSpec:
    """A registered client: which private identities it owns and how many of their clips it keeps."""

    client_id: str
    identities: list[str]
    keep_fraction: float = 1.0


def register_clients(cfg: Config) -> list[ClientSpec]:
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


def sample_clients(
    specs: list[ClientSpec], scheme: Sampling, clients_per_round: int, source: RandomSource
) -> list[ClientSpec]:
    """The accountant's sampling scheme: exactly m of N without replacement, or Poisson with q = m/N.

    `source` decides whether anyone else can know the sample (see PrivacyMechanism.sampling_source).
    """
    m = min(clients_per_round, len(specs))
    if scheme == Sampling.poisson:
        chosen = np.flatnonzero(source.uniform(len(specs)) < m / len(specs))
    else:
        chosen = source.choice(len(specs), m)
    return [specs[i] for i in chosen]


def client_seed(seed: int, round_index: int, client_id: str) -> int:
    """The seed of a client's local training randomness (windows, timesteps, noise of the loss).

    Not privacy randomness: the DP guarantee holds whatever a client's training draws are.
    """
    return int(np.random.default_rng([seed, round_index, int(client_id[len("client") :])]).integers(2**62))


class ClientLoader:
    """Loads a client's clips on its turn and caches their latents in its slot (memory stays flat)."""

    def __init__(self, cfg: Config, model, store: ClientStore):
        self.cfg = cfg
        self.model = model
        self.store = store

    def load(self, spec: ClientSpec) -> ClientData:
        if not spec.identities:  # a client without data (an audit's canary): nothing to read or cache
            return ClientData(spec.client_id, [], [], [])
        cached = self.store.load_latents(spec.client_id)
        if cached is None or "data_signals" not in cached[1]:  # a slot cached before the data signals
            cached = self._shared_or_encode(spec)
        tensors, index = cached
        train = [
            LatentClip(
                c["identity"], c["name"], tensors[f"{i}.latents"], tensors[f"{i}.features"], None, None, None
            )
            for i, c in enumerate(index["train"])
        ]
        return ClientData(spec.client_id, spec.identities, train, index["heldout"], index["data_signals"])

    def _shared_or_encode(self, spec: ClientSpec):
        """The client's encoded clips from `data.latent_cache` if another run made them, else encoded
        here (and left there for the next run); either way cached in the client's slot."""
        shared = latent_cache_file(self.cfg, spec)
        if shared is not None and shared.with_suffix(".json").is_file():
            tensors, index = load_file(str(shared)), json.loads(shared.with_suffix(".json").read_text())
            self.store.save_latents(spec.client_id, tensors, index)
            return tensors, index
        tensors, index = self._encode(spec)
        if shared is not None:  # tensors first, index last: the index's presence means both are complete
            atomic_save_tensors(tensors, shared)
            atomic_write_text(json.dumps(index), shared.with_suffix(".json"))
        return tensors, index

    def _encode(self, spec: ClientSpec):
        train_clips, heldout = training_clips(self.cfg, spec)
        # Measured while the frames are in memory: the slot caches latents, not frames.
        signals = raw_data_signals([clip.frames for clip in train_clips])
        tensors, index = {}, {"train": [], "heldout": heldout, "data_signals": signals}
        for i, clip in enumerate(train_clips):
            tensors[f"{i}.latents"] = self.model.encode_frames(clip.frames)
            tensors[f"{i}.features"] = torch.as_tensor(clip.features, dtype=torch.float32)
            index["train"].append({"identity": clip.identity, "name": clip.name})
        self.store.save_latents(spec.client_id, tensors, index)
        return tensors, index


def latent_cache_file(cfg: Config, spec: ClientSpec) -> Path | None:
    """Where `data.latent_cache` keeps this client's encoded clips (None when it is off).

    The name is a digest of everything the latents, features and data signals depend on: the client's
    identities and kept share, the data settings, the VAE's files (size and modification time: a new
    pretraining gives a new name), the identities' media files, and the thread count (float rounding).
    """
    if not cfg.data.latent_cache:
        return None
    vae = Path(cfg.federated.checkpoint) / "vae"
    media = [p for identity in spec.identities for p in sorted((Path(cfg.data.root) / identity).rglob("*"))]
    key = {
        "client": asdict(spec) | {"client_id": None},
        "data": config_signature(cfg)["data"] | {"latent_cache": None},
        "vae": [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(vae.glob("*"))],
        "media": [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in media if p.is_file()],
        "threads": torch.get_num_threads(),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]
    return Path(cfg.data.latent_cache) / f"{digest}.safetensors"


def training_clips(cfg: Config, spec: ClientSpec) -> tuple[list, list[str]]:
    """A client's training clips (corpus.Clip, frames in memory) and its held-out "identity/clip" names."""
    data = cfg.data
    report = LoadReport()
    train_clips, heldout = [], []
    for identity in spec.identities:
        try:
            clips = load_identity(data.root, identity, data.audio, size=data.size, report=report)
        except MediaError as err:
            log.warning("%s", err)
            continue
        keep, held = split_heldout(clips, data.heldout_clips)
        heldout += [f"{identity}/{c.name}" for c in held]
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
    return train_clips, heldout


def heldout_clips(cfg: Config, specs: list[ClientSpec]) -> list:
    """The held-out clips (see split_heldout) of the given clients' identities."""
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
            out += split_heldout(clips, cfg.data.heldout_clips)[1]
    return out
