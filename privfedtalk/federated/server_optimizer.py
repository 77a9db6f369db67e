"""Server optimizers that turn the released round update into a step of the global shared-adapter vector.

The released update Δ_t is the noised, securely summed, weighted mean of the clients' deltas: a
pseudo-gradient that already points downhill, so every rule here *adds* it (x ← x + η·direction).

Privacy: an optimizer reads only Δ_t, which is already differentially private, and its own state
(built from earlier Δ's). Everything here is post-processing of released DP outputs, so it costs no
privacy: the ε reported by the accountant is the same whichever optimizer runs.

Rules (Reddi et al. 2021, "Adaptive Federated Optimization", Algorithms 1 and 2; products, squares,
square roots and divisions are element-wise):

- sgd (FedAvg):                 x ← x + η·Δ
- momentum (FedAvgM, DP-FedAvgM): m ← β·m + Δ;  x ← x + η·m            (heavy ball, m starts at 0)
- adam (FedAdam):               m ← β1·m + (1 − β1)·Δ;  v ← β2·v + (1 − β2)·Δ²;
                                x ← x + η·m / (√v + τ)
- yogi (FedYogi):               m as in adam;  v ← v − (1 − β2)·Δ²·sign(v − Δ²);
                                x ← x + η·m / (√v + τ)

For adam and yogi, τ is the paper's "adaptivity" (smaller τ: more adaptive; the paper tunes it over
10⁻⁵…10⁻¹), m starts at 0 and v at τ² (the paper asks for v_{-1} ≥ τ²). As in the paper's
Algorithm 2 there is NO bias correction: m and v are used as they are, not divided by (1 − β^t).

Every optimizer works on one flat float32 tensor (the global shared-adapter vector, shape (d,)),
returns the new vector without modifying its input, and saves its state as plain tensors plus
JSON-able scalars (`state_dict`), so a resumed run takes bit-identical steps.
"""

from __future__ import annotations

import math

import torch

from privfedtalk.config import ServerOptimizer as ServerOptimizerName
from privfedtalk.errors import ConfigError


def _check_vector(name: str, vector: torch.Tensor) -> None:
    if not isinstance(vector, torch.Tensor) or vector.dim() != 1 or vector.dtype != torch.float32:
        described = (
            f"{tuple(vector.shape)} {vector.dtype}" if isinstance(vector, torch.Tensor) else type(vector)
        )
        raise ConfigError(f"server optimizer: {name} must be a flat float32 tensor, got {described}")


def _check_range(key: str, value: float, low: float, high: float, high_inclusive: bool = False) -> None:
    inside = low <= value <= high if high_inclusive else low <= value < high
    if not (math.isfinite(value) and inside):
        bracket = "]" if high_inclusive else ")"
        raise ConfigError(f"server optimizer: {key} must be in [{low}, {high}{bracket}, got {value}")


class ServerOptimizer:
    """Base class: holds the learning rate η and the step count; subclasses hold their moments."""

    name: ServerOptimizerName

    def __init__(self, lr: float):
        if not (math.isfinite(lr) and lr >= 0):
            raise ConfigError(f"server optimizer: lr must be >= 0 and finite, got {lr} (0: local-only)")
        self.lr = float(lr)
        self.steps = 0

    def step(self, params: torch.Tensor, released_update: torch.Tensor) -> torch.Tensor:
        """Return the new global vector after applying the released update Δ_t; shapes (d,), float32."""
        _check_vector("params", params)
        _check_vector("released_update", released_update)
        if params.shape != released_update.shape:
            raise ConfigError(
                f"server optimizer: params {tuple(params.shape)} and released_update "
                f"{tuple(released_update.shape)} differ in shape"
            )
        with torch.no_grad():
            direction = self._direction(released_update.to(params.device))
            self.steps += 1
            return params + self.lr * direction

    def _direction(self, update: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -- state --------------------------------------------------------------------------------
    def _hyperparameters(self) -> dict[str, float]:
        return {"lr": self.lr}

    def _moments(self) -> dict[str, torch.Tensor | None]:
        return {}

    def state_dict(self) -> dict:
        """{"tensors": {name: float32 CPU tensor}, "scalars": {JSON-able}}; save as safetensors + JSON.

        Moments not yet created (before the first step) are left out of "tensors".
        """
        tensors = {
            key: value.detach().cpu().clone() for key, value in self._moments().items() if value is not None
        }
        scalars = {"optimizer": self.name.value, "steps": self.steps, **self._hyperparameters()}
        return {"tensors": tensors, "scalars": scalars}

    def load_state_dict(self, state: dict) -> None:
        """Restore a `state_dict`; the optimizer and its hyperparameters must match this one's."""
        scalars = state.get("scalars", {})
        tensors = state.get("tensors", {})
        if scalars.get("optimizer") != self.name.value:
            raise ConfigError(
                f"server optimizer state is for {scalars.get('optimizer')!r}, but this run uses "
                f"{self.name.value!r}; resume with the optimizer the run started with"
            )
        for key, value in self._hyperparameters().items():
            if key not in scalars or float(scalars[key]) != value:
                raise ConfigError(
                    f"server optimizer state has {key}={scalars.get(key)!r}, but this run uses {value!r}; "
                    "resume with the same server optimizer settings"
                )
        expected = set(self._moments())
        unknown = set(tensors) - expected
        if unknown:
            raise ConfigError(f"server optimizer state has unexpected tensors {sorted(unknown)}")
        for key, value in tensors.items():
            _check_vector(f"saved state tensor {key!r}", value)
        self.steps = int(scalars.get("steps", 0))
        self._set_moments({key: tensors[key].clone() if key in tensors else None for key in expected})

    def _set_moments(self, moments: dict[str, torch.Tensor | None]) -> None:
        pass


class ServerSGD(ServerOptimizer):
    """FedAvg: x ← x + η·Δ (η = 1 adds the released mean delta as it is)."""

    name = ServerOptimizerName.sgd

    def _direction(self, update: torch.Tensor) -> torch.Tensor:
        return update


class ServerMomentum(ServerOptimizer):
    """FedAvgM / DP-FedAvgM: m ← β·m + Δ; x ← x + η·m (m starts at 0)."""

    name = ServerOptimizerName.momentum

    def __init__(self, lr: float, momentum: float = 0.9):
        super().__init__(lr)
        _check_range("momentum", momentum, 0.0, 1.0)
        self.momentum = float(momentum)
        self.velocity: torch.Tensor | None = None

    def _direction(self, update: torch.Tensor) -> torch.Tensor:
        if self.velocity is None:
            self.velocity = torch.zeros_like(update)
        self._check_state_shape(update)
        self.velocity = self.velocity.to(update.device)
        self.velocity = self.momentum * self.velocity + update
        return self.velocity

    def _check_state_shape(self, update: torch.Tensor) -> None:
        if self.velocity.shape != update.shape:
            raise ConfigError(
                f"server optimizer: saved momentum has shape {tuple(self.velocity.shape)}, "
                f"but the update has {tuple(update.shape)}"
            )

    def _hyperparameters(self) -> dict[str, float]:
        return {"lr": self.lr, "momentum": self.momentum}

    def _moments(self) -> dict[str, torch.Tensor | None]:
        return {"velocity": self.velocity}

    def _set_moments(self, moments: dict[str, torch.Tensor | None]) -> None:
        self.velocity = moments["velocity"]


class ServerAdaptive(ServerOptimizer):
    """FedAdam and FedYogi share m, the step x ← x + η·m / (√v + τ), and v's start at τ²."""

    def __init__(self, lr: float, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3):
        super().__init__(lr)
        _check_range("beta1", beta1, 0.0, 1.0)
        _check_range("beta2", beta2, 0.0, 1.0)
        if not (math.isfinite(tau) and tau > 0):
            raise ConfigError(f"server optimizer: tau must be positive and finite, got {tau}")
        self.beta1 = float(beta1)
        self.beta2 = float(beta2)
        self.tau = float(tau)
        self.first_moment: torch.Tensor | None = None
        self.second_moment: torch.Tensor | None = None

    def _second_moment(self, previous: torch.Tensor, squared_update: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _direction(self, update: torch.Tensor) -> torch.Tensor:
        if self.first_moment is None or self.second_moment is None:
            self.first_moment = torch.zeros_like(update)
            self.second_moment = torch.full_like(update, self.tau**2)
        for key, moment in (("first_moment", self.first_moment), ("second_moment", self.second_moment)):
            if moment.shape != update.shape:
                raise ConfigError(
                    f"server optimizer: saved {key} has shape {tuple(moment.shape)}, "
                    f"but the update has {tuple(update.shape)}"
                )
        self.first_moment = self.first_moment.to(update.device)
        self.second_moment = self.second_moment.to(update.device)
        self.first_moment = self.beta1 * self.first_moment + (1.0 - self.beta1) * update
        self.second_moment = self._second_moment(self.second_moment, update * update)
        return self.first_moment / (torch.sqrt(self.second_moment) + self.tau)

    def _hyperparameters(self) -> dict[str, float]:
        return {"lr": self.lr, "beta1": self.beta1, "beta2": self.beta2, "tau": self.tau}

    def _moments(self) -> dict[str, torch.Tensor | None]:
        return {"first_moment": self.first_moment, "second_moment": self.second_moment}

    def _set_moments(self, moments: dict[str, torch.Tensor | None]) -> None:
        if (moments["first_moment"] is None) != (moments["second_moment"] is None):
            raise ConfigError(
                "server optimizer state must hold both first_moment and second_moment, or neither"
            )
        self.first_moment = moments["first_moment"]
        self.second_moment = moments["second_moment"]


class ServerAdam(ServerAdaptive):
    """FedAdam: v ← β2·v + (1 − β2)·Δ²."""

    name = ServerOptimizerName.adam

    def _second_moment(self, previous: torch.Tensor, squared_update: torch.Tensor) -> torch.Tensor:
        return self.beta2 * previous + (1.0 - self.beta2) * squared_update


class ServerYogi(ServerAdaptive):
    """FedYogi: v ← v − (1 − β2)·Δ²·sign(v − Δ²); v moves towards Δ² by at most (1 − β2)·Δ² a step."""

    name = ServerOptimizerName.yogi

    def _second_moment(self, previous: torch.Tensor, squared_update: torch.Tensor) -> torch.Tensor:
        return previous - (1.0 - self.beta2) * squared_update * torch.sign(previous - squared_update)


def make_server_optimizer(
    name: str | ServerOptimizerName,
    lr: float = 1.0,
    *,
    momentum: float = 0.9,
    beta1: float = 0.9,
    beta2: float = 0.99,
    tau: float = 1e-3,
) -> ServerOptimizer:
    """Build a server optimizer by name; hyperparameters a rule does not use are ignored."""
    try:
        kind = ServerOptimizerName(name)
    except ValueError:
        options = ", ".join(option.value for option in ServerOptimizerName)
        raise ConfigError(f"server optimizer {name!r} is unknown; use one of: {options}") from None
    if kind is ServerOptimizerName.sgd:
        return ServerSGD(lr)
    if kind is ServerOptimizerName.momentum:
        return ServerMomentum(lr, momentum=momentum)
    if kind is ServerOptimizerName.adam:
        return ServerAdam(lr, beta1=beta1, beta2=beta2, tau=tau)
    return ServerYogi(lr, beta1=beta1, beta2=beta2, tau=tau)


def build_server_optimizer(fed_cfg) -> ServerOptimizer:
    """The run's server optimizer from its `federated.server_*` keys."""
    return make_server_optimizer(
        fed_cfg.server_optimizer,
        fed_cfg.server_lr,
        momentum=fed_cfg.server_momentum,
        beta1=fed_cfg.server_momentum,
        beta2=fed_cfg.server_beta2,
        tau=fed_cfg.server_tau,
    )
