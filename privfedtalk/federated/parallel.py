"""Client-parallel rounds: a round's sampled clients are sharded over torch.distributed processes.

`DistributedBackend` is the round's backend for this case (see backend.py); `RankGroup` holds the
collectives and `distributed_secure_sum` runs the secure-aggregation phases across processes.
Launch: `torchrun --nproc_per_node P -m privfedtalk.federated.launch CONFIG [key=value ...]`.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Collection, Mapping

import numpy as np
import torch
import torch.distributed as dist

from privfedtalk.errors import PrivacyError, PrivFedTalkError
from privfedtalk.federated.backend import SequentialBackend
from privfedtalk.privacy.fixed_point import FixedPoint
from privfedtalk.privacy.secagg import MaskExpander, SecAggClient, SecAggServer, SecureSumResult, check_round

log = logging.getLogger("privfedtalk")

SERVER = 0  # rank 0 plays the aggregation server and writes the run folder


def init_from_env() -> RankGroup | None:
    """A RankGroup when launched with WORLD_SIZE > 1 (torchrun, accelerate launch), else None.

    Starts the default process group unless the caller already did: gloo for CPU tensors and
    object messages, plus nccl for CUDA tensors when a GPU is present.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    created = not dist.is_initialized()
    if created:
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, init_method="env://")
    return RankGroup(created)


class RankGroup:
    """This process's place in a client-parallel run and the collectives a round needs."""

    def __init__(self, owns_process_group: bool = False):
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", self.rank))
        self.local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", self.world_size))
        self.owns_process_group = owns_process_group
        self.trained: set[str] = set()
        if self.rank != SERVER:
            log.setLevel(logging.WARNING)  # one copy of the run's log, from the server rank

    @property
    def is_server(self) -> bool:
        return self.rank == SERVER

    def close(self) -> None:
        if self.owns_process_group and dist.is_initialized():
            dist.destroy_process_group()

    # -- placement ------------------------------------------------------------------------------
    def threads(self, threads: int) -> int:
        """Split the configured CPU threads over the processes of this node (at least 1 each).

        Also exported as OMP_NUM_THREADS (unless set): in a multi-process run accelerate otherwise
        resets torch's thread count to cores / processes when the trainer creates its Accelerator.
        """
        per_process = max(1, threads // self.local_world_size) if threads > 0 else threads
        if per_process > 0:
            os.environ.setdefault("OMP_NUM_THREADS", str(per_process))
        return per_process

    def device(self, device: torch.device) -> torch.device:
        """One GPU per process (LOCAL_RANK); CPU processes share the host."""
        if device.type != "cuda":
            return device
        if self.local_rank >= torch.cuda.device_count():
            raise PrivFedTalkError(
                f"process {self.local_rank} of this node has no GPU of its own ({torch.cuda.device_count()} "
                "visible): launch at most one process per GPU, or set device=cpu"
            )
        torch.cuda.set_device(self.local_rank)
        return torch.device("cuda", self.local_rank)

    def shard(self, sampled: list) -> list:
        """Round-robin by position in the (identical) sampled list: this rank's clients."""
        mine = sampled[self.rank :: self.world_size]
        self.trained = {spec.client_id for spec in mine}
        return mine

    def trained_here(self, client_ids: Collection[str]) -> list[str]:
        """Of `client_ids`, those this rank trained in the current round (it owns their slots)."""
        return [c for c in client_ids if c in self.trained]

    # -- collectives ----------------------------------------------------------------------------
    def all_gather(self, obj) -> list:
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def gather_to_server(self, obj) -> list | None:
        out = [None] * self.world_size if self.is_server else None
        dist.gather_object(obj, out, dst=SERVER)
        return out

    def broadcast_from_server(self, obj=None):
        box = [obj]
        dist.broadcast_object_list(box, src=SERVER)
        return box[0]

    def exchange(self, buckets: list[list]) -> list:
        """Point-to-point delivery: buckets[r] goes to rank r only; returns what was sent to us."""
        received = []
        for src in range(self.world_size):
            box = [None]
            dist.scatter_object_list(box, buckets if src == self.rank else None, src=src)
            received += box[0]
        return received

    def barrier(self) -> None:
        dist.barrier()

    def merge(self, mapping: Mapping) -> dict:
        """Union of every rank's dict (client ids are disjoint across ranks)."""
        merged = {}
        for part in self.all_gather(dict(mapping)):
            merged.update(part)
        return merged

    def sum(self, vectors: Mapping[str, np.ndarray], survivors: list[str], size: int) -> np.ndarray:
        """Plain (unmasked) sum of the survivors' float64 vectors over all ranks."""
        partial = np.zeros(size, dtype=np.float64)
        for client_id in survivors:
            if client_id in vectors:
                partial += vectors[client_id]
        total = torch.from_numpy(partial)
        dist.all_reduce(total)
        return total.numpy()

    def reduce_words(self, words: np.ndarray) -> np.ndarray | None:
        """Sum uint64 words mod 2^64 over all ranks onto the server (None elsewhere)."""
        halves = torch.from_numpy(split_words(words))
        dist.reduce(halves, dst=SERVER)
        return join_words(halves.numpy()) if self.is_server else None


def split_words(words: np.ndarray) -> np.ndarray:
    """uint64 words as [low 32 bits, high 32 bits] int64 rows: sums of fewer than 2^31 ranks never overflow.

    (A signed int64 SUM would wrap in practice, but C++ leaves signed overflow undefined.)
    """
    words = np.asarray(words, dtype=np.uint64)
    low = (words & np.uint64(0xFFFFFFFF)).astype(np.int64)
    high = (words >> np.uint64(32)).astype(np.int64)
    return np.stack([low, high])


def join_words(halves: np.ndarray) -> np.ndarray:
    """Inverse of split_words after summing: low + 2^32 * high, mod 2^64."""
    low = halves[0].astype(np.uint64)
    high = halves[1].astype(np.uint64)
    return low + (high << np.uint64(32))  # uint64 arithmetic wraps mod 2^64


def _attempt(fn, *args):
    """(result, None) or (None, message): a local PrivacyError travels to the server, not stuck here."""
    try:
        return fn(*args), None
    except PrivacyError as err:
        return None, str(err)


def _raise_if(error: str | None) -> None:
    if error:
        raise PrivacyError(error)


def distributed_secure_sum(
    group: RankGroup,
    vectors: Mapping[str, np.ndarray],
    client_ids: list,
    *,
    size: int,
    round_id: int,
    threshold: int,
    fixed_point: FixedPoint,
    dropped: Collection = (),
) -> SecureSumResult:
    """The four secure-aggregation phases with this rank's clients in `vectors` and all ids in `client_ids`.

    Keys go to the server rank and the roster comes back; Shamir shares travel rank to rank (each
    bucket only to the rank that holds its recipient); masked inputs are summed mod 2^64 by a
    reduce onto the server; surviving clients send unmasking shares to the server, which decodes
    the total and broadcasts it. Dropped clients (any rank) share keys, then send nothing, and are
    recovered from their peers' shares exactly as in the one-process simulation. A PrivacyError on
    any rank is carried to the server and raised on every rank, so no rank waits forever.
    """
    started = time.perf_counter()
    check_round(client_ids, threshold, fixed_point)
    server = SecAggServer(round_id=round_id, threshold=threshold, fixed_point=fixed_point)
    server = server if group.is_server else None
    clients = {
        c: SecAggClient(c, vectors[c], round_id=round_id, threshold=threshold, fixed_point=fixed_point)
        for c in sorted(vectors)
    }
    expander = MaskExpander(size)
    phase_seconds = {}
    roster, owner = _advertise_keys(group, server, clients)
    mark = _lap(phase_seconds, "advertise_keys", started)
    error = _share_keys(group, clients, roster, owner)
    mark = _lap(phase_seconds, "share_keys", mark)
    survivors, gone, mask_seconds = _masked_input(group, server, clients, dropped, expander, error)
    mark = _lap(phase_seconds, "masked_input", mark)
    total = _unmask(group, server, clients, survivors, gone, expander)
    _lap(phase_seconds, "unmasking", mark)
    return SecureSumResult(
        total=total,
        survivors=tuple(survivors),
        dropped=tuple(gone),
        seconds=time.perf_counter() - started,
        phase_seconds=phase_seconds,
        client_mask_seconds_median=statistics.median(mask_seconds),
        max_rounding_error=fixed_point.max_rounding_error(len(survivors)),
    )


def _advertise_keys(group: RankGroup, server: SecAggServer | None, clients: dict):
    """Phase 0: public keys to the server; the roster (and which rank holds whom) back to everyone."""
    keys = group.gather_to_server([(c.advertise_keys(), group.rank) for c in clients.values()])
    roster = owner = error = None
    if server is not None:
        owner = {ad.client_id: rank for part in keys for ad, rank in part}
        for part in keys:
            for ad, _ in part:
                server.receive_key(ad)
        roster, error = _attempt(server.broadcast_roster)
    roster, owner, error = group.broadcast_from_server((roster, owner, error))
    _raise_if(error)
    return roster, owner


def _share_keys(group: RankGroup, clients: dict, roster, owner: dict) -> str | None:
    """Phase 1: each client's Shamir shares go to the rank of their recipient only."""
    buckets = [[] for _ in range(group.world_size)]
    first_error = None
    for client in clients.values():
        messages, error = _attempt(client.share_keys, roster)
        first_error = first_error or error
        for message in messages or []:
            buckets[owner[message.recipient]].append(message)
    for message in group.exchange(buckets):
        clients[message.recipient].receive_shares(message)
    return first_error  # reported with the masked inputs, where the server can stop the round


def _masked_input(group, server, clients: dict, dropped: Collection, expander, error: str | None):
    """Phase 2: clients that did not drop mask their vectors; ranks add theirs, then reduce to the server."""
    local_sum = np.zeros(expander.size, dtype=np.uint64)
    senders, seconds = [], []
    for client_id, client in clients.items():
        if client_id in dropped or error:
            continue
        client_started = time.perf_counter()
        masked, error = _attempt(client.masked_input, expander)
        if masked is not None:
            np.add(local_sum, masked, out=local_sum)
            senders.append(client_id)
            seconds.append(time.perf_counter() - client_started)
    masked_sum = group.reduce_words(local_sum)
    reports = group.gather_to_server((senders, seconds, error))
    survivors = gone = all_seconds = None
    if server is not None:
        error = next((e for _, _, e in reports if e), None)
        if error is None:
            _, error = _attempt(server.receive_masked_sum, [c for s, _, _ in reports for c in s], masked_sum)
        if error is None:
            outcome, error = _attempt(server.request_unmasking)
            survivors, gone = outcome or (None, None)
        all_seconds = [t for _, times, _ in reports for t in times]
    survivors, gone, all_seconds, error = group.broadcast_from_server((survivors, gone, all_seconds, error))
    _raise_if(error)
    return survivors, gone, all_seconds


def _unmask(group, server, clients: dict, survivors, gone, expander) -> np.ndarray:
    """Phase 3: unmasking shares to the server, which decodes the total and broadcasts it."""
    shares, first_error = [], None
    for client_id in survivors:
        if client_id in clients:
            message, error = _attempt(clients[client_id].unmasking_shares, survivors, gone)
            shares.append(message)
            first_error = first_error or error
    replies = group.gather_to_server((shares, first_error))
    total = error = None
    if server is not None:
        error = next((e for _, e in replies if e), None)
        if error is None:
            total, error = _attempt(_finalize, server, [m for part, _ in replies for m in part], expander)
    total, error = group.broadcast_from_server((total, error))
    _raise_if(error)
    return total


def _finalize(server: SecAggServer, messages: list, expander: MaskExpander) -> np.ndarray:
    for message in messages:
        server.receive_unmasking_shares(message)
    return server.finalize(expander)


def _lap(phase_seconds: dict, name: str, since: float) -> float:
    now = time.perf_counter()
    phase_seconds[name] = now - since
    return now


class DistributedBackend(SequentialBackend):
    """The round's clients sharded over processes; reports, roster and sums go through collectives.

    Every process runs the same round code; rank 0 plays the server and writes the run folder.
    """

    def __init__(self, group: RankGroup, loader, trainer, seed: int, on_client_done=None):
        super().__init__(loader, trainer, seed, on_client_done)
        self.group = group

    @property
    def is_server(self) -> bool:
        return self.group.is_server

    def clients_here(self, sampled: list) -> list:
        return self.group.shard(sampled)

    def roster(self, accepted: list[str]) -> list[str]:
        return self._in_sampled_order([c for part in self.group.all_gather(list(accepted)) for c in part])

    def gather_reports(self, reports: list) -> list:
        return super().gather_reports([r for part in self.group.all_gather(list(reports)) for r in part])

    def merge(self, mapping: dict) -> dict:
        return self.group.merge(mapping)

    def secure_sum(
        self, vectors, roster, fixed_point, threshold, round_index, dropped, size
    ) -> SecureSumResult:
        mine = {c: v for c, v in vectors.items() if c in roster}
        return distributed_secure_sum(
            self.group,
            mine,
            list(roster),
            size=size,
            round_id=round_index,
            threshold=threshold,
            fixed_point=fixed_point,
            dropped=dropped,
        )

    def plain_sum(self, vectors, survivors, size) -> np.ndarray:
        return self.group.sum(vectors, survivors, size)

    def rank_stats(self, seconds: float, peak_mb: float) -> dict:
        parts = self.group.all_gather((seconds, peak_mb))
        return {"rank_seconds": [p[0] for p in parts], "rank_peak_memory_mb": [p[1] for p in parts]}

    def commit(self, client_ids, store) -> None:
        super().commit(self.group.trained_here(client_ids), store)

    def barrier(self) -> None:
        self.group.barrier()
