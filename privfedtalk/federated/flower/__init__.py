"""The Flower backend: the federated round of simulation.run_round over Flower messages.

backend.FlowerBackend (server side) implements the backend methods by messaging client_app's ClientApp,
which runs local training, the identity slot and the privacy step on the client; server_app builds the
ServerApp and runs Flower's simulation engine. Secure aggregation is the project's own protocol carried
in Flower messages (backend.py says why not Flower's SecAgg+). Needs the optional extra:
pip install -e ".[flower]". This module imports without it; its submodules need flwr.
"""

from __future__ import annotations

from privfedtalk.errors import MissingExtraError


def require_flower() -> None:
    """Raise MissingExtraError (one line, naming the fix) when flwr is not installed."""
    try:
        import flwr  # noqa: F401
    except ImportError:
        raise MissingExtraError("flwr", "flower", "the Flower backend") from None
