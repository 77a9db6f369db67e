"""Server optimizers applied to the released update (post-processing of the DP sum: no privacy cost)."""

from __future__ import annotations

import torch

from privfedtalk.config import ServerOptimizer


class SGD:
    """global += lr · Δ (FedAvg's server step; lr = 0 keeps the global state fixed)."""

    def __init__(self, lr: float):
        self.lr = lr

    def step(self, global_state: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
        return global_state + self.lr * update.to(global_state.dtype)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def build_server_optimizer(fed_cfg):
    if fed_cfg.server_optimizer == ServerOptimizer.sgd:
        return SGD(fed_cfg.server_lr)
    raise NotImplementedError(f"federated.server_optimizer={fed_cfg.server_optimizer} is not available yet")
