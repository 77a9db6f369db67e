"""FlowerBackend: run_round's backend methods as Flower messages from the ServerApp to the ClientApps.

The round logic stays simulation.run_round's; this class only moves its steps onto the clients. What
each message carries (see wire.py for the types):

  train             -> global state, instructions       <- refusal; without DP count + signals; timings
  train.privatize   -> weight (without DP), roster size <- nothing: the vector stays on the client
  query.plain_vector (no secure aggregation)            <- the clipped, weighted (noised) vector
  secure aggregation, the project's protocol (privacy/secagg.py):
    query.advertise_keys -> fixed-point plan, threshold <- two public keys (mask, share channel)
    query.share_keys     -> roster                      <- Shamir shares, each sealed to its recipient
    query.masked_input   -> the shares sealed to it     <- its masked uint64 vector
    query.unmasking_shares -> survivors, dropped        <- shares for the server to strip the masks
  query.commit      -> (round completed)                <- nothing: the identity adapter stays in the slot

Why not Flower's SecAgg+ (flwr.server.workflow.SecAggPlusWorkflow + secaggplus_mod): the workflow
drives the round itself from a legacy `Strategy.configure_fit`/`aggregate_fit`, so run_round's
sampling, weights, privacy step and release could not be kept; and the mod re-encodes the client's
vector on its own terms: it weighs by num_examples / max_weight, clips each coordinate to
[-clipping_range, clipping_range] and rounds stochastically onto at most 2^22 levels in a 2^32 ring.
The project's vectors are already L2-clipped, weighted by ISFA/DP-capped weights and noised, and its
fixed-point plan (64-bit words, scale from w_max·C plus the noise tail) is what the DP and overflow
analysis assumes; SecAgg+ would change the released sum. So the project's own protocol runs over
Flower messages: clients mask with the project's code, the server sums and unmasks with its code.
"""

from __future__ import annotations

import logging
import statistics
import time

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict

from privfedtalk.errors import ConfigError, PrivacyError, PrivFedTalkError
from privfedtalk.federated.backend import LocalResult, SequentialBackend
from privfedtalk.federated.client import LocalReport
from privfedtalk.federated.flower import wire
from privfedtalk.federated.strategy import ClientReport
from privfedtalk.privacy.fixed_point import FixedPoint
from privfedtalk.privacy.secagg import (
    KeyAdvertisement,
    MaskExpander,
    SecAggServer,
    SecureSumResult,
    check_round,
)

log = logging.getLogger("privfedtalk")


class RemoteUpdate:
    """The server's view of a client's update after local training: never the delta itself.

    `report` (count and signals) is known only without DP; under DP each client weighs itself.
    """

    def __init__(self, client_id: str, refusal: str, report: ClientReport | None):
        self.client_id = client_id
        self.refusal = refusal
        self._report = report

    @property
    def report(self) -> ClientReport:
        if self._report is None:
            raise PrivacyError(f"{self.client_id}: a DP client keeps its count and signals (no report)")
        return self._report

    @property
    def signals(self) -> dict[str, float]:
        return dict(self._report.signals) if self._report is not None else {}


class FlowerBackend(SequentialBackend):
    """Every sampled client trains and privatizes on its own node; sums are computed here (the server).

    `grid`: the ServerApp's flwr Grid; `privacy_cfg`: the run's privacy settings. `loader` is unused
    here (clients load their own data); `trainer` is the server's idle LocalTrainer (its shared
    parameters hold the global state for evaluation). Agreeing on the round (roster and reports in
    sampled order, no per-process statistics) is SequentialBackend's: the server is one process.
    """

    def __init__(
        self, grid, privacy_cfg, loader, trainer, seed: int, on_client_done=None, reply_timeout: float = 0.0
    ):
        super().__init__(loader, trainer, seed, on_client_done)
        self.grid = grid
        self.reply_timeout = reply_timeout  # seconds per message exchange; 0: wait for every node
        if privacy_cfg.log_signal_norm:
            raise ConfigError(
                "privacy.log_signal_norm=true needs each client's noise-free vector on the server; the "
                "Flower backend keeps vectors on the clients: unset it (or use `privfedtalk train`)"
            )
        self._nodes: dict[str, int] | None = None

    # -- messages ----------------------------------------------------------------------------------
    def nodes(self) -> dict[str, int]:
        """Client id -> Flower node id, asked of every node once."""
        if self._nodes is None:
            node_ids = list(self.grid.get_node_ids())
            self._nodes = {}
            replies = self._send_to_nodes(wire.IDENTIFY, {n: RecordDict() for n in node_ids}, "identify")
            for node_id, content in replies.items():
                self._nodes[str(content["identity"]["client_id"])] = node_id
            log.info("flower: %d nodes answered (%d clients)", len(node_ids), len(self._nodes))
        return self._nodes

    def exchange(self, message_type: str, contents: dict[str, RecordDict], round_index: int) -> dict:
        """Send each client its content; the replies' content by client id (a failed client is left out)."""
        nodes = self.nodes()
        missing = [c for c in contents if c not in nodes]
        if missing:
            raise PrivFedTalkError(f"flower: no node serves {missing[:4]} (start one SuperNode per client)")
        by_node = {nodes[c]: content for c, content in contents.items()}
        clients = {node: c for c, node in nodes.items()}
        replies = self._send_to_nodes(message_type, by_node, str(round_index))
        return {clients[node]: content for node, content in replies.items()}

    def _send_to_nodes(self, message_type: str, contents: dict[int, RecordDict], group: str) -> dict:
        messages = [
            Message(content, dst_node_id=node, message_type=message_type, group_id=group)
            for node, content in contents.items()
        ]
        replies, answered = {}, set()
        for reply in self.grid.send_and_receive(messages, timeout=self.reply_timeout or None):
            node = reply.metadata.src_node_id
            answered.add(node)
            if reply.has_error():
                log.warning("flower: node %s failed %s: %s", node, message_type, reply.error.reason)
                continue
            replies[node] = reply.content
        silent = sorted(set(contents) - answered)
        if silent:
            log.warning(
                "flower: nodes %s did not answer %s within %.0f s: left out (federated.reply_timeout_s)",
                silent[:8],
                message_type,
                self.reply_timeout,
            )
        return replies

    # -- local training ------------------------------------------------------------------------------
    def train(self, sampled: list, instructions, global_state, round_index: int) -> dict[str, LocalResult]:
        """Broadcast the global state and instructions; each client trains on its node and keeps its delta."""
        self._order = {spec.client_id: i for i, spec in enumerate(sampled)}
        broadcast = RecordDict(
            {
                "global_state": wire.arrays(global_state=global_state.numpy()),
                "instructions": wire.instructions_record(instructions, round_index),
            }
        )
        replies = self.exchange(wire.TRAIN, {s.client_id: broadcast for s in sampled}, round_index)
        results = {}
        for spec in sampled:
            content = replies.get(spec.client_id)
            if content is None:
                continue
            outcome = wire.config(content, "outcome")
            if outcome.get("skipped"):
                log.warning("round %d: %s skipped: %s", round_index + 1, spec.client_id, outcome["skipped"])
                continue
            results[spec.client_id] = self._local_result(spec.client_id, outcome, content)
            if self.on_client_done is not None:
                self.on_client_done(round_index, spec.client_id)
        return results

    def _local_result(self, client_id: str, outcome: dict, content: RecordDict) -> LocalResult:
        report = None  # under DP the client keeps its count and signals
        if "num_samples" in outcome:
            report = ClientReport(client_id, int(outcome["num_samples"]), wire.signals_from(outcome))
        timings = dict(content["diagnostics"])
        diagnostics = LocalReport(
            loss=float(timings.get("loss", float("nan"))),
            tdc=float(timings.get("tdc", float("nan"))),
            update_norm=float(timings.get("update_norm", float("nan"))),
            train_seconds=float(timings["train_seconds"]),
            swap_seconds=float(timings["swap_seconds"]),
        )
        return LocalResult(RemoteUpdate(client_id, str(outcome.get("refusal", "")), report), diagnostics)

    # -- the client side of the privacy step -----------------------------------------------------------
    def refusals(self, local: dict[str, LocalResult], privacy) -> dict[str, str]:
        """Each client ran privacy.refusal on its own update and said why it withholds it."""
        return {c: r.update.refusal for c, r in local.items() if r.update.refusal}

    def privatize(self, privacy, strategy, updates: dict, roster_size: int, round_index: int):
        """Send each client its weight (under DP: none, it weighs itself); the vectors stay on the clients.

        Returns (weights the server knows, {client id: None}): a vector is fetched only by a sum.
        """
        reports = [] if privacy.privacy.dp else [u.report for u in updates.values()]
        weights = privacy.weights(strategy, reports, self) if reports else {}
        contents = {}
        for client_id in updates:
            record = {"round": round_index, "roster_size": roster_size}
            if client_id in weights:
                record["weight"] = float(weights[client_id])
            if privacy.clip_norm is not None:
                record["clip_norm"] = float(privacy.clip_norm)
            contents[client_id] = RecordDict({"privatize": ConfigRecord(record)})
        replies = self.exchange(wire.PRIVATIZE, contents, round_index)
        return weights, {c: None for c in updates if c in replies}

    # -- sums ---------------------------------------------------------------------------------------
    def plain_sum(self, vectors: dict, survivors: list[str], size: int) -> np.ndarray:
        """Unmasked sum: the survivors send their privatized vectors (no secure aggregation, or a DP
        round of one client, whose vector carries the full noise)."""
        asks = {c: RecordDict({"ask": ConfigRecord({"size": size})}) for c in survivors}
        replies = self.exchange(wire.PLAIN_VECTOR, asks, -1)
        total = np.zeros(size, dtype=np.float64)
        for client_id in survivors:
            if client_id not in replies:
                raise PrivacyError(f"{client_id} sent no vector: round skipped")
            total += wire.array_of(replies[client_id], "vector")
        return total

    def secure_sum(
        self,
        vectors: dict,
        roster: list[str],
        fixed_point: FixedPoint,
        threshold: int,
        round_index: int,
        dropped: list[str],
        size: int,
    ) -> SecureSumResult:
        """The four phases of privacy/secagg.py with the clients on their nodes; `dropped` share keys, then
        are not asked for their masked vector (as a client that vanished). The server sees public keys,
        sealed shares it cannot open, masked vectors and unmasking shares, never one client's vector."""
        return SecureSumOverFlower(self, roster, fixed_point, threshold, round_index, size).run(dropped)

    # -- after the round ---------------------------------------------------------------------------
    def commit(self, client_ids: list[str], store) -> None:
        """Each survivor promotes the identity adapter it staged (in its own slot; nothing travels)."""
        if client_ids:
            self.exchange(wire.COMMIT, {c: RecordDict() for c in client_ids}, -1)


class SecureSumOverFlower:
    """One secure-aggregation round: the server's half here (SecAggServer), the clients' on their nodes."""

    def __init__(self, backend: FlowerBackend, roster, fixed_point, threshold, round_index, size):
        check_round(roster, threshold, fixed_point)
        self.backend = backend
        self.roster = list(roster)
        self.round_index = round_index
        self.size = size
        self.plan = wire.fixed_point_record(fixed_point, round_index, threshold)
        self.server = SecAggServer(round_id=round_index, threshold=threshold, fixed_point=fixed_point)
        self.phase_seconds: dict[str, float] = {}

    def run(self, dropped: list[str]) -> SecureSumResult:
        started = mark = time.perf_counter()
        channel_keys = self.advertise_keys()
        mark = self._lap("advertise_keys", mark)
        sealed = self.share_keys(channel_keys)
        mark = self._lap("share_keys", mark)
        mask_seconds = self.masked_input(sealed, dropped)
        mark = self._lap("masked_input", mark)
        survivors, gone = self.server.request_unmasking()
        total = self.unmask(survivors, gone)
        self._lap("unmasking", mark)
        return SecureSumResult(
            total=total,
            survivors=tuple(survivors),
            dropped=tuple(gone),
            seconds=time.perf_counter() - started,
            phase_seconds=self.phase_seconds,
            client_mask_seconds_median=statistics.median(mask_seconds) if mask_seconds else 0.0,
            max_rounding_error=self.server.fixed_point.max_rounding_error(len(survivors)),
        )

    def _ask(self, message_type: str, contents: dict) -> dict:
        return self.backend.exchange(message_type, contents, self.round_index)

    def advertise_keys(self) -> dict[str, bytes]:
        """Phase 0: each client draws its keys for the masks and for sealing shares; returns channel keys."""
        replies = self._ask(wire.ADVERTISE_KEYS, {c: RecordDict({"plan": self.plan}) for c in self.roster})
        channel_keys = {}
        for client_id, content in replies.items():
            keys = wire.config(content, "keys")
            self.server.receive_key(KeyAdvertisement(client_id, keys["mask_key"]))
            channel_keys[client_id] = keys["channel_key"]
        return channel_keys

    def share_keys(self, channel_keys: dict[str, bytes]) -> dict[str, dict[str, bytes]]:
        """Phase 1: the roster out, sealed shares back; returns {recipient: {sender: sealed}}."""
        roster = self.server.broadcast_roster()
        record = wire.roster_record(roster, channel_keys)
        replies = self._ask(wire.SHARE_KEYS, {c: RecordDict({"roster": record}) for c in roster.client_ids})
        if len(replies) < len(roster.client_ids):
            raise PrivacyError(f"secure aggregation round {self.round_index}: a client failed to share keys")
        inbox: dict[str, dict[str, bytes]] = {c: {} for c in roster.client_ids}
        for sender, content in replies.items():
            shares = wire.config(content, "shares")
            for recipient, sealed in zip(shares["recipients"], shares["sealed"]):
                inbox[recipient][sender] = sealed
        return inbox

    def masked_input(self, inbox: dict, dropped: list[str]) -> list[float]:
        """Phase 2: each remaining client gets the shares sealed to it and sends its masked vector."""
        contents = {
            c: RecordDict({"inbox": ConfigRecord({"senders": list(box), "sealed": list(box.values())})})
            for c, box in inbox.items()
            if c not in dropped
        }
        replies = self._ask(wire.MASKED_INPUT, contents)
        seconds = []
        for client_id in self.roster:
            if client_id in replies:
                self.server.receive_masked_input(client_id, wire.array_of(replies[client_id], "masked"))
                seconds.append(float(replies[client_id]["timing"]["mask_seconds"]))
        return seconds

    def unmask(self, survivors, gone) -> np.ndarray:
        """Phase 3: survivors reveal what strips the masks of the sum (never both seeds of one peer)."""
        request = ConfigRecord({"survivors": list(survivors), "dropped": list(gone)})
        replies = self._ask(wire.UNMASKING_SHARES, {c: RecordDict({"request": request}) for c in survivors})
        for content in replies.values():
            self.server.receive_unmasking_shares(wire.unmasking_from(wire.config(content, "unmasking")))
        return self.server.finalize(MaskExpander(self.size))

    def _lap(self, name: str, since: float) -> float:
        now = time.perf_counter()
        self.phase_seconds[name] = now - since
        return now
