"""The federated model: the pretrained backbone with the shared and identity adapters attached, and the
personalized model a run produces (global shared state + one client's identity adapter)."""

from __future__ import annotations

from pathlib import Path

from privfedtalk.config import Config, Federate
from privfedtalk.errors import PrivFedTalkError
from privfedtalk.federated.client import set_flat, shared_parameters
from privfedtalk.federated.store import ClientStore, RunFolder
from privfedtalk.model import adapters
from privfedtalk.model.generator import TalkingHeadGenerator
from privfedtalk.model.identity import IdentityEncoder
from privfedtalk.runtime import resolve_device, setup_torch


def build_federated_model(cfg: Config, device) -> tuple[TalkingHeadGenerator, IdentityEncoder]:
    """Pretrained backbone + adapters: the shared LoRA (unless the whole U-Net is federated) and identity."""
    checkpoint = Path(cfg.federated.checkpoint)
    model = TalkingHeadGenerator.from_pretrained(checkpoint).to(device)
    encoder = IdentityEncoder.load(checkpoint).to(device)
    model.requires_grad_(False)
    fed = cfg.federated
    if fed.federate == Federate.unet:
        adapters.attach_adapters(model.unet, None, fed.identity)
        for name, param in model.unet.named_parameters():
            if "lora_" not in name:
                param.requires_grad = True  # the backbone itself is what clients train and share
    else:
        adapters.attach_adapters(model.unet, fed.shared, fed.identity)
    return model, encoder


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


def load_personalized_model(run_dir: str | Path, client_id: str | None, use_identity: bool = True):
    """Pretrained backbone + the run's global shared state (+ a client's identity adapter)."""
    folder = RunFolder(run_dir)
    if not folder.exists():
        raise PrivFedTalkError(f"{run_dir}: no completed round to load (train first, or check the path)")
    cfg = folder.load_config()
    setup_torch(cfg.threads)
    model, encoder = build_federated_model(cfg, resolve_device(cfg.device))
    global_state, _, _ = folder.load()
    set_flat(shared_parameters(model.unet, cfg.federated.federate), global_state)
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
