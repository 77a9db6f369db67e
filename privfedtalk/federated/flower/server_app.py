"""The ServerApp: simulation.train with a FlowerBackend, so a Flower run writes the same run folder
(config.yaml, global state, metrics.jsonl, TensorBoard logs) as `privfedtalk train`.

`serverapp` and `clientapp` are the objects a Flower deployment (`flwr run`) names in its pyproject
(docs/flower.md); `run_flower_simulation` runs both in Flower's simulation engine on this machine.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation

from privfedtalk.config import Config, load_config
from privfedtalk.errors import PrivFedTalkError
from privfedtalk.federated import simulation
from privfedtalk.federated.clients import register_clients
from privfedtalk.federated.flower.backend import FlowerBackend
from privfedtalk.federated.flower.client_app import build_client_app


def run_federation(grid: Grid, cfg: Config, clients=None, on_release=None) -> Path:
    """The whole run (rounds, checkpoints, metrics) with the clients behind `grid`."""
    backend_factory = functools.partial(
        FlowerBackend, grid, cfg.privacy, reply_timeout=cfg.federated.reply_timeout_s
    )
    return simulation.train(cfg, clients=clients, on_release=on_release, backend_factory=backend_factory)


def build_server_app(cfg: Config, clients=None, on_release=None) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_federation(grid, cfg, clients, on_release)

    return app


def config_from_run_config(context: Context) -> Config:
    """`flwr run`: the run config's `config` (a YAML path) and `overrides` ("key=value key=value")."""
    path = context.run_config.get("config")
    if not path:
        raise PrivFedTalkError("flower ServerApp: set run-config 'config' to a privfedtalk YAML config")
    return load_config(str(path), str(context.run_config.get("overrides", "")).split())


serverapp = ServerApp()


@serverapp.main()
def main(grid: Grid, context: Context) -> None:
    run_federation(grid, config_from_run_config(context))


clientapp = build_client_app()


def client_resources(cfg: Config) -> dict:
    """Each simulated client process gets the run's thread count (and a GPU when the run uses one)."""
    cpus = max(1, min(cfg.threads or os.cpu_count() or 1, os.cpu_count() or 1))
    gpus = 1.0 if cfg.device != "cpu" and torch.cuda.is_available() else 0.0
    return {"num_cpus": cpus, "num_gpus": gpus}


def with_absolute_paths(cfg: Config) -> Config:
    """The config with its folders made absolute: the simulated clients run in other processes."""
    cfg = cfg.copy()
    cfg.out_dir = str(Path(cfg.out_dir).resolve())
    cfg.data.root = str(Path(cfg.data.root).resolve())
    cfg.federated.checkpoint = str(Path(cfg.federated.checkpoint).resolve())
    if cfg.data.latent_cache:
        cfg.data.latent_cache = str(Path(cfg.data.latent_cache).resolve())
    return cfg


def run_flower_simulation(cfg: Config, num_clients: int | None = None, on_release=None) -> Path:
    """Run `cfg` with its first `num_clients` registered clients (default: all), one SuperNode each, in
    Flower's simulation engine (Ray); returns the run folder."""
    cfg = with_absolute_paths(cfg)
    specs = register_clients(cfg)
    count = num_clients or len(specs)
    if not 1 <= count <= len(specs):
        raise PrivFedTalkError(
            f"--clients {count}: the config registers {len(specs)} clients (use 1..{len(specs)})"
        )
    server_app = build_server_app(cfg, specs[:count], on_release)
    client_app = build_client_app(str(Path(cfg.out_dir) / "config.yaml"))
    run_simulation(
        server_app,
        client_app,
        num_supernodes=count,
        backend_config={"client_resources": client_resources(cfg)},
    )
    return Path(cfg.out_dir)
