"""adapter_state / load_adapter_state read and write the LoRA parameters directly; they must agree with
peft's own get_peft_model_state_dict / set_peft_model_state_dict (keys and values), so exports and slots
stay loadable by plain peft."""

from __future__ import annotations

import pytest
import torch
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

from privfedtalk.config import load_config
from privfedtalk.model import adapters
from privfedtalk.model.generator import TalkingHeadGenerator


@pytest.fixture(scope="module")
def unet():
    cfg = load_config(None, ["data.size=32", "model.unet.block_out_channels=[32,64]"])
    torch.manual_seed(0)
    model = TalkingHeadGenerator.from_config(cfg)
    adapters.attach_adapters(model.unet, cfg.federated.shared, cfg.federated.identity)
    with torch.no_grad():
        for param in model.unet.parameters():
            if param.requires_grad:
                param.normal_()
    return model.unet


@pytest.mark.parametrize("adapter", [adapters.SHARED, adapters.IDENTITY])
def test_adapter_state_equals_peft_state_dict(unet, adapter):
    ours = adapters.adapter_state(unet, adapter)
    peft = get_peft_model_state_dict(unet, adapter_name=adapter)
    assert list(ours) == list(peft)
    for key in peft:
        assert torch.equal(ours[key], peft[key])


def test_a_loaded_state_is_what_peft_loads_and_a_wrong_state_is_refused(unet):
    state = {k: torch.randn_like(v) for k, v in adapters.adapter_state(unet, adapters.IDENTITY).items()}
    adapters.load_adapter_state(unet, adapters.IDENTITY, state)
    ours = adapters.adapter_state(unet, adapters.IDENTITY)
    set_peft_model_state_dict(unet, {k: v + 1 for k, v in state.items()}, adapter_name=adapters.IDENTITY)
    adapters.load_adapter_state(unet, adapters.IDENTITY, state)  # back to `state` over peft's write
    assert all(torch.equal(ours[k], state[k]) for k in state)
    assert all(torch.equal(v, state[k]) for k, v in adapters.adapter_state(unet, adapters.IDENTITY).items())
    key = next(iter(state))
    with pytest.raises(ValueError, match="lacks keys"):
        adapters.load_adapter_state(unet, adapters.IDENTITY, {k: v for k, v in state.items() if k != key})
    with pytest.raises(ValueError, match="keys the U-Net lacks"):
        adapters.load_adapter_state(unet, adapters.IDENTITY, {**state, "nowhere.lora_A.weight": state[key]})
