"""The ClientApp: a client's side of the round on its Flower node.

Local training (LocalTrainer), the identity-adapter slot (ClientStore) and the privacy step
(PrivacyMechanism's refusal, own weight under DP, clip-weight-noise; privacy/secagg.py's fixed point and
masks) run here. Between two messages a client keeps its raw update, its privatized vector and its
secure-aggregation secrets in its node's Context.state, which stays on the node; what it sends back is
listed in backend.py. A client enforces its own privacy settings: under DP it weighs itself whatever
the server says, and with secure aggregation on it sends its vector only masked.
"""

from __future__ import annotations

import functools
import time

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from privfedtalk.config import load_config
from privfedtalk.errors import MediaError, PrivacyError, PrivFedTalkError
from privfedtalk.federated.client import ClientUpdate, LocalTrainer, get_flat
from privfedtalk.federated.clients import ClientLoader, client_seed, register_clients
from privfedtalk.federated.flower import wire
from privfedtalk.federated.models import build_federated_model
from privfedtalk.federated.store import ClientStore
from privfedtalk.federated.strategy import build_strategy
from privfedtalk.privacy.mechanism import PrivacyMechanism
from privfedtalk.privacy.secagg import MIN_CLIENTS, MaskExpander, SecAggClient
from privfedtalk.runtime import resolve_device, setup_torch

# What a client keeps in Context.state during a round (client-side storage, never in a message).
ROUND_STATE = ("update", "update_info", "vector", "vector_info", "secagg", "secagg_plan")


class ClientSide:
    """Everything a client process needs, built once per process: the model with its adapters (one U-Net
    shared by the virtual clients of a simulation process, as in SequentialBackend), the trainer, the
    data loader, the client slots and the privacy mechanism."""

    def __init__(self, cfg, num_clients: int | None):
        setup_torch(cfg.threads)
        torch.manual_seed(cfg.seed)  # the fresh identity adapter is the in-process run's
        model, encoder = build_federated_model(cfg, resolve_device(cfg.device))
        self.cfg = cfg
        self.store = ClientStore(cfg.out_dir)
        self.trainer = LocalTrainer(cfg, model, encoder, self.store)
        self.loader = ClientLoader(cfg, model, self.store)
        self.specs = register_clients(cfg)[:num_clients]
        self.privacy = PrivacyMechanism(
            cfg, [s.client_id for s in self.specs], len(get_flat(self.trainer.shared))
        )
        self.strategy = build_strategy(cfg)

    def spec_of(self, client_id: str):
        return next(s for s in self.specs if s.client_id == client_id)


_SIDES: dict[tuple, ClientSide] = {}


def config_file_of(context: Context, config_file: str | None) -> str:
    """The run's config: given to build_client_app (simulation), else the node's or the run's `config`."""
    found = config_file or context.node_config.get("config") or context.run_config.get("config")
    if not found:
        raise PrivFedTalkError("flower ClientApp: no config (set node-config or run-config 'config=PATH')")
    return str(found)


def client_side(context: Context, config_file: str | None) -> tuple[ClientSide, str]:
    """(this process's ClientSide, the id of the client this node is)."""
    path = config_file_of(context, config_file)
    num_clients = context.node_config.get("num-partitions") or context.node_config.get("num-clients")
    key = (path, num_clients)
    if key not in _SIDES:
        _SIDES.clear()  # a process serves one run at a time: free the previous run's model
        _SIDES[key] = ClientSide(load_config(path), int(num_clients) if num_clients else None)
    side = _SIDES[key]
    if "client-id" in context.node_config:
        return side, str(context.node_config["client-id"])
    return side, side.specs[int(context.node_config["partition-id"])].client_id


def reply(message: Message, **records) -> Message:
    return Message(RecordDict(records), reply_to=message)


def forget_round(context: Context) -> None:
    for key in ROUND_STATE:
        if key in context.state:
            del context.state[key]


# ------------------------------------------------------------------------------------------ handlers


def identify(side: ClientSide, client_id: str, message: Message, context: Context) -> Message:
    return reply(message, identity=ConfigRecord({"client_id": client_id}))


def train(side: ClientSide, client_id: str, message: Message, context: Context) -> Message:
    """Local training from the broadcast state; the delta stays in the node's state."""
    instructions, round_index = wire.instructions_from(wire.config(message.content, "instructions"))
    global_state = torch.from_numpy(wire.array_of(message.content, "global_state").copy())
    forget_round(context)
    try:
        data = side.loader.load(side.spec_of(client_id))
    except MediaError as err:
        return reply(message, outcome=ConfigRecord({"skipped": str(err)}))
    seed = client_seed(side.cfg.seed, round_index, client_id)
    update, report = side.trainer.run_many([data], global_state, round_index, [seed], instructions)[0]
    context.state["update"] = wire.arrays(update=update.delta.numpy())
    context.state["update_info"] = ConfigRecord(
        {"round": round_index, "num_samples": update.num_samples, **wire.signals_record(update.signals)}
    )
    outcome = {"refusal": side.privacy.refusal(update) or ""}
    timings = {"train_seconds": report.train_seconds, "swap_seconds": report.swap_seconds}
    if not side.cfg.privacy.dp:  # under DP count, signals, loss and norm stay here
        outcome |= {"num_samples": update.num_samples, **wire.signals_record(update.signals)}
        timings |= {"loss": report.loss, "tdc": report.tdc, "update_norm": report.update_norm}
    return reply(message, outcome=ConfigRecord(outcome), diagnostics=MetricRecord(timings))


def saved_update(context: Context, client_id: str, round_index: int) -> ClientUpdate:
    info = wire.config(context.state, "update_info")
    if int(info["round"]) != round_index:
        raise PrivacyError(f"{client_id}: asked to privatize round {round_index}, trained {info['round']}")
    delta = torch.from_numpy(wire.array_of(context.state, "update").copy())
    return ClientUpdate(client_id, int(info["num_samples"]), delta, wire.signals_from(info))


def privatize(side: ClientSide, client_id: str, message: Message, context: Context) -> Message:
    """Clip, weight and noise the update (PrivacyMechanism.privatize); the raw delta ends here."""
    ask = wire.config(message.content, "privatize")
    round_index, roster_size = int(ask["round"]), int(ask["roster_size"])
    update = saved_update(context, client_id, round_index)
    privacy = side.privacy
    if privacy.adaptive:
        privacy.clip_state.clip_norm = float(ask["clip_norm"])
    if privacy.privacy.dp:  # the client weighs itself (capped): a server-sent weight is never used
        weight = privacy.weights(side.strategy, [update.report], None)[client_id]
    elif "weight" in ask:
        weight = float(ask["weight"])
    else:
        raise PrivacyError(f"{client_id}: no weight for round {round_index}")
    vector = privacy.privatize(update, weight, roster_size, round_index)
    del context.state["update"]
    context.state["vector"] = wire.arrays(vector=vector)
    context.state["vector_info"] = ConfigRecord({"round": round_index, "roster_size": roster_size})
    return reply(message)


def plain_vector(side: ClientSide, client_id: str, message: Message, context: Context) -> Message:
    """The privatized vector itself, only where it would go unmasked in the in-process run too."""
    roster_size = int(wire.config(context.state, "vector_info")["roster_size"])
    if side.cfg.privacy.secure_aggregation and roster_size >= MIN_CLIENTS:
        raise PrivacyError(f"{client_id}: secure aggregation is on; this client sends its vector masked only")
    return reply(message, vector=wire.arrays(vector=wire.array_of(context.state, "vector")))


# -- secure aggregation (privacy/secagg.py's client, its state in Context.state between messages) --


def restore_secagg(context: Context, client_id: str) -> tuple[SecAggClient, bytes, dict]:
    """(the client, its share-channel key, its peers' channel public keys)."""
    plan = wire.config(context.state, "secagg_plan")
    secrets, channel_key, peer_channel_keys = wire.secrets_from(
        wire.config(context.state, "secagg"), client_id
    )
    return secagg_client(context, client_id, plan, secrets), channel_key, peer_channel_keys


def secagg_client(context: Context, client_id: str, plan, secrets=None) -> SecAggClient:
    """privacy/secagg.py's client over this node's privatized vector, for the round's plan; `secrets`
    restore the one an earlier message of the round created (none: fresh keys from OS entropy)."""
    return SecAggClient(
        client_id,
        wire.array_of(context.state, "vector"),
        round_id=int(plan["round"]),
        threshold=int(plan["threshold"]),
        fixed_point=wire.fixed_point_from(plan),
        secrets=secrets,
    )


def save_secagg(context: Context, client: SecAggClient, channel_key: bytes, peer_channel_keys: dict) -> None:
    context.state["secagg"] = wire.secrets_record(client.secrets(), channel_key, peer_channel_keys)


def advertise_keys(side: ClientSide, client_id: str, message: Message, context: Context) -> Message:
    """Phase 0: fresh keys (OS entropy) for the masks and for sealing shares to peers."""
    plan = wire.config(message.content, "plan")
    if int(wire.config(context.state, "vector_info")["round"]) != int(plan["round"]):
        raise PrivacyError(f"{client_id}: secure sum for round {plan['round']} without its vector")
    context.state["secagg_plan"] = ConfigRecord(plan)
    client = secagg_client(context, client_id, plan)
    channel_key, channel_public = wire.new_channel_key()
    save_secagg(context, client, channel_key, {})
    keys = {"mask_key": client.advertise_keys().public_key, "channel_key": channel_public}
    return reply(message, keys=ConfigRecord(keys))


def share_keys(side: ClientSide, client_id: str, message: Message, context: Context) -> Message:
    """Phase 1: Shamir shares of both seeds, each sealed to its recipient (the server only relays)."""
    client, channel_key, _ = restore_secagg(context, client_id)
    roster, peer_channel_keys = wire.roster_from(wire.config(message.content, "roster"))
    shares = client.share_keys(roster)
    sealed = [wire.seal(s, channel_key, peer_channel_keys[s.recipient], roster.round_id) for s in shares]
    save_secagg(context, client, channel_key, peer_channel_keys)
    record = ConfigRecord({"recipients": [str(s.recipient) for s in shares], "sealed": sealed})
    return reply(message, shares=record)


def masked_input(side: ClientSide, client_id: str, message: Message, context: Context) -> Message:
    """Phase 2: open the shares peers sealed to this client, then send the masked vector."""
    client, channel_key, peer_channel_keys = restore_secagg(context, client_id)
    inbox = wire.config(message.content, "inbox")
    round_id = int(wire.config(context.state, "secagg_plan")["round"])
    for sender, sealed in zip(inbox["senders"], inbox["sealed"]):
        opened = wire.open_sealed(sealed, sender, client_id, channel_key, peer_channel_keys[sender], round_id)
        client.receive_shares(opened)
    started = time.perf_counter()
    masked = client.masked_input(MaskExpander(client.size))
    seconds = time.perf_counter() - started
    save_secagg(context, client, channel_key, peer_channel_keys)
    return reply(message, masked=wire.arrays(masked=masked), timing=MetricRecord({"mask_seconds": seconds}))


def unmasking_shares(side: ClientSide, client_id: str, message: Message, context: Context) -> Message:
    """Phase 3: shares that strip the sum's masks; SecAggClient refuses to reveal both seeds of a peer."""
    client, channel_key, peer_channel_keys = restore_secagg(context, client_id)
    request = wire.config(message.content, "request")
    shares = client.unmasking_shares(request["survivors"], request["dropped"])
    save_secagg(context, client, channel_key, peer_channel_keys)
    return reply(message, unmasking=wire.unmasking_record(shares))


def commit(side: ClientSide, client_id: str, message: Message, context: Context) -> Message:
    """The round completed with this client's update: promote its staged identity adapter."""
    side.store.commit_identity(client_id)
    forget_round(context)
    return reply(message)


HANDLERS = {
    wire.IDENTIFY: identify,
    wire.TRAIN: train,
    wire.PRIVATIZE: privatize,
    wire.PLAIN_VECTOR: plain_vector,
    wire.ADVERTISE_KEYS: advertise_keys,
    wire.SHARE_KEYS: share_keys,
    wire.MASKED_INPUT: masked_input,
    wire.UNMASKING_SHARES: unmasking_shares,
    wire.COMMIT: commit,
}


def _handle(handler, config_file: str | None, message: Message, context: Context) -> Message:
    side, client_id = client_side(context, config_file)
    return handler(side, client_id, message, context)


def build_client_app(config_file: str | None = None) -> ClientApp:
    """A ClientApp answering every message type of wire.py. `config_file`: the run's config.yaml (the
    simulation passes it); without it each node reads `config` from its node config or the run config."""
    app = ClientApp()
    for message_type, handler in HANDLERS.items():
        category, _, action = message_type.partition(".")
        register = app.train if category == "train" else app.query
        register(action or "default")(functools.partial(_handle, handler, config_file))
    return app
