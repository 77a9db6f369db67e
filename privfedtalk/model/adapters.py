"""LoRA adapters on the one shared U-Net (peft): attach, activate, extract and load adapter state.

Two adapters live on the same U-Net: SHARED (aggregated across clients) and IDENTITY (one per
client, kept in that client's slot on disk and swapped in for its turn).
"""

from __future__ import annotations

import torch
from peft import LoraConfig

SHARED = "shared"
IDENTITY = "identity"


def lora_config(adapter_cfg) -> LoraConfig:
    return LoraConfig(
        r=adapter_cfg.rank,
        lora_alpha=adapter_cfg.alpha,
        target_modules=list(adapter_cfg.target_modules),
        lora_dropout=0.0,
        init_lora_weights=True,  # B = 0: a fresh adapter leaves the backbone's output unchanged
    )


def attach_adapters(unet, shared_cfg=None, identity_cfg=None) -> None:
    """Inject the shared and/or identity LoRA adapters and make them active (base weights frozen)."""
    unet.requires_grad_(False)
    names = []
    if shared_cfg is not None:
        unet.add_adapter(lora_config(shared_cfg), adapter_name=SHARED)
        names.append(SHARED)
    if identity_cfg is not None and identity_cfg.rank > 0:
        unet.add_adapter(lora_config(identity_cfg), adapter_name=IDENTITY)
        names.append(IDENTITY)
    unet.set_adapter(names)
    # set_adapter may freeze inactive ones; make exactly the adapters' LoRA weights trainable.
    for name, param in unet.named_parameters():
        param.requires_grad = any(f".{a}." in name for a in names) and "lora_" in name


def use_shared_only(unet) -> None:
    """Deactivate the identity adapter (the global model without personalization)."""
    names = [n for n in getattr(unet, "peft_config", {}) if n != IDENTITY]
    if names:
        unet.set_adapter(names)
    else:
        unet.disable_adapters()


def use_all(unet) -> None:
    unet.enable_adapters()
    unet.set_adapter(list(unet.peft_config))


def adapter_parameters(unet, adapter: str) -> list[torch.nn.Parameter]:
    """The adapter's LoRA parameters in a fixed order (the order of named_parameters)."""
    return list(adapter_slots(unet, adapter).values())


def adapter_slots(unet, adapter: str) -> dict[str, torch.nn.Parameter]:
    """The adapter's LoRA parameters by state key, in named_parameters order.

    The keys are peft's (get_peft_model_state_dict: the parameter name without ".<adapter>"), so a state
    read here loads with peft's set_peft_model_state_dict and the other way round (tested); reading and
    writing the parameters directly costs a copy per tensor, where peft's functions walk the whole U-Net
    (~20 ms per client swap at the dp-scale size, on one CPU thread).
    """
    return {
        name.replace(f".{adapter}", ""): param
        for name, param in unet.named_parameters()
        if "lora_" in name and f".{adapter}." in name
    }


def adapter_state(unet, adapter: str) -> dict[str, torch.Tensor]:
    """A detached CPU copy of one adapter's weights (keys without the adapter name)."""
    return {k: p.detach().to("cpu", copy=True).contiguous() for k, p in adapter_slots(unet, adapter).items()}


def load_adapter_state(unet, adapter: str, state: dict[str, torch.Tensor]) -> None:
    """Write a state of `adapter_state`'s keys into the adapter; every key, no other."""
    slots = adapter_slots(unet, adapter)
    unexpected = sorted(set(state) - set(slots))
    if unexpected:
        raise ValueError(f"adapter '{adapter}' state has keys the U-Net lacks: {unexpected[:3]}")
    missing = sorted(set(slots) - set(state))
    if missing:
        raise ValueError(f"adapter '{adapter}' state lacks keys the U-Net has: {missing[:3]}")
    with torch.no_grad():
        for key, param in slots.items():
            param.copy_(state[key].to(param.device, param.dtype))


def flatten_state(state: dict[str, torch.Tensor]) -> torch.Tensor:
    """Concatenate an adapter state (sorted keys) into one float32 vector."""
    return torch.cat([state[k].reshape(-1).float() for k in sorted(state)])


def unflatten_state(vector: torch.Tensor, template: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out, offset = {}, 0
    for key in sorted(template):
        size = template[key].numel()
        out[key] = vector[offset : offset + size].view_as(template[key]).to(template[key].dtype).clone()
        offset += size
    if offset != vector.numel():
        raise ValueError(f"vector has {vector.numel()} values, the adapter {offset}")
    return out


def count_parameters(state: dict[str, torch.Tensor]) -> int:
    return sum(v.numel() for v in state.values())
