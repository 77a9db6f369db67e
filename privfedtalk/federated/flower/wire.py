"""What crosses the wire between FlowerBackend and the ClientApp: the message types, and the project's
objects (instructions, rosters, Shamir shares, sealed peer shares, a client's secure-aggregation state)
as Flower records. Pure conversions, no round logic.

Integers wider than 64 bits (Shamir field elements) travel as bytes: Flower's ConfigRecord carries
int64 on the wire.
"""

from __future__ import annotations

import os
import struct

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from privfedtalk.errors import PrivacyError
from privfedtalk.federated.strategy import Instructions
from privfedtalk.privacy.fixed_point import FixedPoint
from privfedtalk.privacy.secagg import ClientSecrets, KeyAdvertisement, PeerShares, Roster, UnmaskingShares
from privfedtalk.privacy.shamir import ShamirShare

# Flower routes "<category>.<action>" to the ClientApp function registered for that action.
IDENTIFY = "query.identify"  # which client a node is
TRAIN = "train"  # local training from the broadcast global state
PRIVATIZE = "train.privatize"  # clip, weight, noise; the vector stays on the client
PLAIN_VECTOR = "query.plain_vector"  # the privatized vector itself (no secure aggregation)
ADVERTISE_KEYS = "query.advertise_keys"  # secure aggregation, phase 0
SHARE_KEYS = "query.share_keys"  # phase 1: Shamir shares, sealed to their recipient
MASKED_INPUT = "query.masked_input"  # phase 2: the client's shares in, its masked vector out
UNMASKING_SHARES = "query.unmasking_shares"  # phase 3
COMMIT = "query.commit"  # the round completed: promote the staged identity adapter

_SHARE_CHANNEL_INFO = b"privfedtalk/flower/v1/share-channel"
_NONCE_BYTES = 12


# ------------------------------------------------------------------------------------------ records


def arrays(**named: np.ndarray) -> ArrayRecord:
    return ArrayRecord({name: Array(np.ascontiguousarray(value)) for name, value in named.items()})


def array_of(content: RecordDict, record: str, name: str | None = None) -> np.ndarray:
    """The array `name` (default: the record's name) of an ArrayRecord in a message or state."""
    return content[record][name or record].numpy()


def config(content: RecordDict, record: str) -> dict:
    return dict(content[record])


def instructions_record(instructions: Instructions, round_index: int) -> ConfigRecord:
    return ConfigRecord(
        {
            "round": round_index,
            "local_steps": instructions.local_steps,
            "mu": float(instructions.mu),
            "compute_signals": instructions.compute_signals,
        }
    )


def instructions_from(record: dict) -> tuple[Instructions, int]:
    instructions = Instructions(
        local_steps=int(record["local_steps"]),
        mu=float(record["mu"]),
        compute_signals=bool(record["compute_signals"]),
    )
    return instructions, int(record["round"])


def signals_record(signals: dict[str, float]) -> dict:
    return {"signal_names": list(signals), "signal_values": [float(v) for v in signals.values()]}


def signals_from(record: dict) -> dict[str, float]:
    return dict(zip(record.get("signal_names", []), record.get("signal_values", [])))


def fixed_point_record(fixed_point: FixedPoint, round_index: int, threshold: int) -> ConfigRecord:
    """Public parameters of a secure-sum round (the bound and client count the plan was made for)."""
    return ConfigRecord(
        {
            "round": round_index,
            "threshold": threshold,
            "bits": fixed_point.bits,
            "scale": fixed_point.scale,
            "max_abs_value": -1.0 if fixed_point.max_abs_value is None else fixed_point.max_abs_value,
            "max_clients": -1 if fixed_point.max_clients is None else fixed_point.max_clients,
        }
    )


def fixed_point_from(record: dict) -> FixedPoint:
    bound, clients = float(record["max_abs_value"]), int(record["max_clients"])
    return FixedPoint(
        bits=int(record["bits"]),
        scale=float(record["scale"]),
        max_abs_value=None if bound < 0 else bound,
        max_clients=None if clients < 0 else clients,
    )


# ------------------------------------------------------------------------------------- Shamir shares


def share_bytes(share: ShamirShare) -> bytes:
    """x, secret length, chunk count, then each field element (< 2^127) as 16 big-endian bytes."""
    head = struct.pack(">HHH", share.x, share.secret_length, len(share.values))
    return head + b"".join(v.to_bytes(16, "big") for v in share.values)


def share_from_bytes(data: bytes) -> ShamirShare:
    x, secret_length, count = struct.unpack(">HHH", data[:6])
    body = data[6:]
    if len(body) != 16 * count:
        raise PrivacyError("malformed Shamir share")
    values = tuple(int.from_bytes(body[i : i + 16], "big") for i in range(0, len(body), 16))
    return ShamirShare(x, values, secret_length)


def _two_shares_bytes(first: ShamirShare, second: ShamirShare) -> bytes:
    a, b = share_bytes(first), share_bytes(second)
    return struct.pack(">H", len(a)) + a + b


def _two_shares_from(data: bytes) -> tuple[ShamirShare, ShamirShare]:
    (length,) = struct.unpack(">H", data[:2])
    return share_from_bytes(data[2 : 2 + length]), share_from_bytes(data[2 + length :])


# ---------------------------------------------------------------------- peer shares, sealed to the peer


def _channel(own_channel_key: bytes, peer_channel_public: bytes, round_id: int) -> AESGCM:
    """AES-GCM keyed by HKDF over the X25519 secret of the two clients' channel keys (Bonawitz et al.'s
    second key pair): the relaying server cannot read the shares it forwards."""
    own = X25519PrivateKey.from_private_bytes(own_channel_key)
    secret = own.exchange(X25519PublicKey.from_public_bytes(peer_channel_public))
    info = _SHARE_CHANNEL_INFO + f"|round={round_id}".encode()
    return AESGCM(HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret))


def _route(round_id: int, sender: str, recipient: str) -> bytes:
    return f"round={round_id}|from={sender}|to={recipient}".encode()


def seal(shares: PeerShares, own_channel_key: bytes, peer_channel_public: bytes, round_id: int) -> bytes:
    """The two Shamir shares a client gives a peer, encrypted to it (the route is the associated data)."""
    nonce = os.urandom(_NONCE_BYTES)
    route = _route(round_id, shares.sender, shares.recipient)
    plaintext = _two_shares_bytes(shares.pairwise_key_share, shares.self_mask_share)
    return nonce + _channel(own_channel_key, peer_channel_public, round_id).encrypt(nonce, plaintext, route)


def open_sealed(
    sealed: bytes, sender: str, recipient: str, own_channel_key: bytes, sender_channel_public: bytes, round_id
) -> PeerShares:
    """The shares `sender` sealed for `recipient`; a tampered or misrouted message is refused."""
    nonce, body = sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:]
    try:
        plaintext = _channel(own_channel_key, sender_channel_public, round_id).decrypt(
            nonce, body, _route(round_id, sender, recipient)
        )
    except Exception as err:  # cryptography's InvalidTag: the relay changed or misrouted the message
        raise PrivacyError(f"sealed shares from {sender!r} do not open for {recipient!r}") from err
    pairwise, self_mask = _two_shares_from(plaintext)
    return PeerShares(sender, recipient, pairwise, self_mask)


def new_channel_key() -> tuple[bytes, bytes]:
    """(private, public) raw bytes of a fresh X25519 key for sealing this round's shares."""
    key = X25519PrivateKey.generate()
    return key.private_bytes_raw(), key.public_key().public_bytes_raw()


# ------------------------------------------------------------------------------ rosters and unmasking


def roster_record(roster: Roster, channel_keys: dict[str, bytes]) -> ConfigRecord:
    return ConfigRecord(
        {
            "round": roster.round_id,
            "threshold": roster.threshold,
            "clients": [str(e.client_id) for e in roster.entries],
            "mask_keys": [e.public_key for e in roster.entries],
            "channel_keys": [channel_keys[e.client_id] for e in roster.entries],
        }
    )


def roster_from(record: dict) -> tuple[Roster, dict[str, bytes]]:
    entries = tuple(KeyAdvertisement(c, k) for c, k in zip(record["clients"], record["mask_keys"]))
    roster = Roster(int(record["round"]), int(record["threshold"]), entries)
    return roster, dict(zip(record["clients"], record["channel_keys"]))


def unmasking_record(message: UnmaskingShares) -> ConfigRecord:
    pairwise, self_masks = message.pairwise_key_shares, message.self_mask_shares
    return ConfigRecord(
        {
            "sender": str(message.sender),
            "pairwise_peers": list(pairwise),
            "pairwise_shares": [share_bytes(s) for s in pairwise.values()],
            "self_peers": list(self_masks),
            "self_shares": [share_bytes(s) for s in self_masks.values()],
        }
    )


def unmasking_from(record: dict) -> UnmaskingShares:
    return UnmaskingShares(
        sender=record["sender"],
        pairwise_key_shares={
            p: share_from_bytes(s) for p, s in zip(record["pairwise_peers"], record["pairwise_shares"])
        },
        self_mask_shares={
            p: share_from_bytes(s) for p, s in zip(record["self_peers"], record["self_shares"])
        },
    )


# ------------------------------------------------------------------ a client's state between messages


def secrets_record(secrets: ClientSecrets, channel_key: bytes, peer_channel_keys: dict) -> ConfigRecord:
    """A SecAggClient's state in its node's Context.state (client-side storage; never in a message)."""
    record = {
        "pairwise_key_seed": secrets.pairwise_key_seed,
        "self_mask_seed": secrets.self_mask_seed,
        "channel_key": channel_key,
        "held_from": [str(s.sender) for s in secrets.held_shares],
        "held_shares": [
            _two_shares_bytes(s.pairwise_key_share, s.self_mask_share) for s in secrets.held_shares
        ],
        "revealed_peers": list(secrets.revealed),
        "revealed_kinds": list(secrets.revealed.values()),
    }
    if secrets.roster is not None:
        record |= {f"roster_{k}": v for k, v in roster_record(secrets.roster, peer_channel_keys).items()}
    return ConfigRecord(record)


def secrets_from(record: dict, client_id: str) -> tuple[ClientSecrets, bytes, dict[str, bytes]]:
    """(secrets, own channel key, peers' channel public keys) saved by `secrets_record`."""
    roster, peer_channel_keys = None, {}
    if "roster_clients" in record:
        roster, peer_channel_keys = roster_from(
            {k[len("roster_") :]: v for k, v in record.items() if k.startswith("roster_")}
        )
    held = []
    for sender, data in zip(record["held_from"], record["held_shares"]):
        pairwise, self_mask = _two_shares_from(data)
        held.append(PeerShares(sender, client_id, pairwise, self_mask))
    secrets = ClientSecrets(
        record["pairwise_key_seed"],
        record["self_mask_seed"],
        roster,
        tuple(held),
        dict(zip(record["revealed_peers"], record["revealed_kinds"])),
    )
    return secrets, record["channel_key"], peer_channel_keys
