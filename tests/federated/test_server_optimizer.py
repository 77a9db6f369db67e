"""Server optimizers on the released update: hand-computed steps, carried state, exact resume."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from privfedtalk.errors import ConfigError
from privfedtalk.federated.server_optimizer import (
    ServerAdam,
    ServerMomentum,
    ServerOptimizerName,
    ServerSGD,
    ServerYogi,
    make_server_optimizer,
)

START = torch.tensor([1.0, -1.0, 0.5])
FIRST = torch.tensor([0.5, -2.0, 0.0])
SECOND = torch.tensor([0.1, 1.0, -1.0])
# Distinct β1, β2 and a large τ so that swapping them, dropping τ² as v's start, or Adam's rule in
# place of Yogi's each moves the numbers well beyond the tolerance.
ADAPTIVE = {"lr": 0.1, "beta1": 0.8, "beta2": 0.5, "tau": 0.5}


def two_steps(optimizer):
    after_first = optimizer.step(START, FIRST)
    return after_first, optimizer.step(after_first, SECOND)


def test_sgd_with_unit_lr_adds_the_released_update():
    assert torch.equal(ServerSGD(1.0).step(START, FIRST), START + FIRST)


def test_sgd_steps_match_hand_computation():
    after_first, after_second = two_steps(ServerSGD(0.5))
    assert after_first.tolist() == [1.25, -2.0, 0.5]
    # 1.25 + 0.05, -2 + 0.5, 0.5 - 0.5
    assert after_second.tolist() == pytest.approx([1.3, -1.5, 0.0], abs=1e-7)


def test_momentum_steps_match_hand_computation():
    after_first, after_second = two_steps(ServerMomentum(0.5, momentum=0.9))
    # m1 = Δ1; x1 = x0 + 0.5·Δ1
    assert after_first.tolist() == [1.25, -2.0, 0.5]
    # m2 = 0.9·(0.5, -2, 0) + (0.1, 1, -1) = (0.55, -0.8, -1); x2 = x1 + 0.5·m2
    assert after_second.tolist() == pytest.approx([1.525, -2.4, 0.0], abs=1e-6)
    # Without the carried momentum the second step would be x1 + 0.5·Δ2 = (1.3, -1.5, 0).
    assert abs(after_second[1].item() - (-1.5)) > 0.5


def test_adam_steps_match_hand_computation():
    after_first, after_second = two_steps(ServerAdam(**ADAPTIVE))
    # v0 = τ² = 0.25, m0 = 0.
    # m1 = 0.2·Δ1 = (0.1, -0.4, 0); v1 = 0.5·0.25 + 0.5·Δ1² = (0.25, 2.125, 0.125)
    # x1 = x0 + 0.1·m1/(√v1 + 0.5) = (1 + 0.01/1, -1 - 0.04/1.957738, 0.5)
    assert after_first.tolist() == pytest.approx([1.01, -1.02043174, 0.5], rel=1e-6)
    # m2 = 0.8·m1 + 0.2·Δ2 = (0.1, -0.12, -0.2); v2 = 0.5·v1 + 0.5·Δ2² = (0.13, 1.5625, 0.5625)
    # x2 = x1 + 0.1·(0.1/0.860555, -0.12/1.75, -0.2/1.25)
    assert after_second.tolist() == pytest.approx([1.02162041, -1.02728889, 0.484], rel=1e-6)


def test_yogi_steps_match_hand_computation():
    after_first, after_second = two_steps(ServerYogi(**ADAPTIVE))
    # v1 = v0 − 0.5·Δ1²·sign(v0 − Δ1²) = (0.25 − 0 [sign 0], 0.25 + 2, 0.25 − 0) = (0.25, 2.25, 0.25)
    # x1 = x0 + 0.1·(0.1/1, -0.4/2, 0)
    assert after_first.tolist() == pytest.approx([1.01, -1.02, 0.5], rel=1e-6)
    # v2 = (0.25 − 0.005, 2.25 − 0.5, 0.25 + 0.5) = (0.245, 1.75, 0.75); m2 as for Adam
    # x2 = x1 + 0.1·(0.1/0.994975, -0.12/1.822876, -0.2/1.366025)
    assert after_second.tolist() == pytest.approx([1.02005051, -1.02658301, 0.485358984], rel=1e-6)


def test_step_leaves_its_inputs_unchanged():
    params, update = START.clone(), FIRST.clone()
    for name in ServerOptimizerName:
        make_server_optimizer(name, 0.1).step(params, update)
    assert torch.equal(params, START) and torch.equal(update, FIRST)


@pytest.mark.parametrize("name", [option.value for option in ServerOptimizerName])
def test_state_dict_round_trip_through_safetensors_and_json_resumes_exactly(name, tmp_path):
    generator = torch.Generator().manual_seed(0)
    updates = [torch.randn(64, generator=generator) for _ in range(5)]
    settings = {"lr": 0.3, "momentum": 0.7, "beta1": 0.85, "beta2": 0.95, "tau": 1e-2}

    reference = make_server_optimizer(name, **settings)
    params = torch.randn(64, generator=generator)
    for update in updates[:3]:
        params = reference.step(params, update)

    state = reference.state_dict()
    assert all(isinstance(t, torch.Tensor) for t in state["tensors"].values())
    save_file(state["tensors"], str(tmp_path / "optimizer.safetensors"))
    (tmp_path / "optimizer.json").write_text(json.dumps(state["scalars"]))
    resumed = make_server_optimizer(name, **settings)
    resumed.load_state_dict(
        {
            "tensors": load_file(str(tmp_path / "optimizer.safetensors")),
            "scalars": json.loads((tmp_path / "optimizer.json").read_text()),
        }
    )

    continued, restarted = params, params.clone()
    for update in updates[3:]:
        continued = reference.step(continued, update)
        restarted = resumed.step(restarted, update)
    assert torch.equal(continued, restarted)
    if name != "sgd":
        # A fresh optimizer (state lost) takes different steps, so the round trip above is not vacuous.
        fresh = make_server_optimizer(name, **settings)
        unresumed = params.clone()
        for update in updates[3:]:
            unresumed = fresh.step(unresumed, update)
        assert not torch.allclose(continued, unresumed, atol=1e-3)


def test_state_from_other_settings_is_refused():
    adam = ServerAdam(0.1)
    adam.step(START, FIRST)
    with pytest.raises(ConfigError, match="beta2"):
        ServerAdam(0.1, beta2=0.999).load_state_dict(adam.state_dict())
    with pytest.raises(ConfigError, match="'adam'"):
        ServerYogi(0.1).load_state_dict(adam.state_dict())


def test_factory_builds_each_rule_and_rejects_unknown_names():
    assert isinstance(make_server_optimizer("sgd", 1.0), ServerSGD)
    momentum = make_server_optimizer("momentum", 1.0, momentum=0.5)
    assert isinstance(momentum, ServerMomentum) and momentum.momentum == 0.5
    yogi = make_server_optimizer(ServerOptimizerName.yogi, 0.01, beta1=0.5, beta2=0.9, tau=1e-4)
    assert isinstance(yogi, ServerYogi) and (yogi.beta1, yogi.beta2, yogi.tau) == (0.5, 0.9, 1e-4)
    with pytest.raises(ConfigError, match="fedadam"):
        make_server_optimizer("fedadam", 0.1)
    with pytest.raises(ConfigError, match="beta1"):
        make_server_optimizer("adam", 0.1, beta1=1.0)
    with pytest.raises(ConfigError, match="float32"):
        ServerSGD(1.0).step(START.double(), FIRST.double())
