"""What a run keeps on disk, written atomically: the run folder (config, global state after each
completed round, metrics) and the per-client slots (identity adapter, cached latents, as safetensors).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict | None = None) -> None:
    """Write safetensors to a temp file, then rename: a kill never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def atomic_write_text(text: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class ClientStore:
    """One folder per registered client under `root/clients/<client_id>/`.

    Only the client itself reads or writes its slot: the server side of the simulation never
    opens these files (identity adapters never travel).
    """

    def __init__(self, root: str | Path):
        self.root = Path(root) / "clients"

    def slot(self, client_id: str) -> Path:
        return self.root / client_id

    # The identity adapter trained in a round is staged as "pending" and promoted only when the
    # round completes, so a run killed mid-round resumes with the adapters of the last full round.
    def _identity_file(self, client_id: str, pending: bool = False) -> Path:
        name = "identity_adapter.pending.safetensors" if pending else "identity_adapter.safetensors"
        return self.slot(client_id) / name

    def has_identity(self, client_id: str) -> bool:
        return self._identity_file(client_id).is_file()

    def stage_identity(self, client_id: str, state: dict[str, torch.Tensor], round_index: int) -> None:
        atomic_save_tensors(
            state, self._identity_file(client_id, pending=True), metadata={"round": str(round_index)}
        )

    def commit_identity(self, client_id: str) -> None:
        pending = self._identity_file(client_id, pending=True)
        if pending.is_file():
            os.replace(pending, self._identity_file(client_id))

    def discard_pending(self) -> int:
        """Drop adapters staged by a round that never completed (called on resume)."""
        stale = list(self.root.glob("*/identity_adapter.pending.safetensors")) if self.root.is_dir() else []
        for path in stale:
            path.unlink()
        return len(stale)

    def load_identity(self, client_id: str) -> dict[str, torch.Tensor]:
        return load_file(str(self._identity_file(client_id)))

    def save_latents(self, client_id: str, tensors: dict[str, torch.Tensor], index: dict) -> None:
        atomic_save_tensors(tensors, self.slot(client_id) / "latents.safetensors")
        atomic_write_text(json.dumps(index), self.slot(client_id) / "latents.json")

    def load_latents(self, client_id: str) -> tuple[dict[str, torch.Tensor], dict] | None:
        folder = self.slot(client_id)
        if not (folder / "latents.json").is_file():
            return None
        return load_file(str(folder / "latents.safetensors")), json.loads(
            (folder / "latents.json").read_text()
        )


def read_jsonl(path: Path) -> list[dict]:
    """One JSON object per line; [] if the file is absent."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


GLOBAL_KEY = "global_shared"


class RunFolder:
    """A federated run's folder.

    config.yaml; global_shared.safetensors (the global state plus the server optimizer's tensors) and
    state.json (written last: it marks the round complete) after each completed round; metrics.jsonl
    (one record per round); release_pending.json while a round's sum is being released, so that a
    crash after the server could have seen the sum is still charged on resume.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config_file = self.path / "config.yaml"
        self.state_file = self.path / "state.json"
        self.global_file = self.path / "global_shared.safetensors"
        self.metrics_file = self.path / "metrics.jsonl"
        self.pending_file = self.path / "release_pending.json"

    def exists(self) -> bool:
        return self.state_file.is_file() and self.global_file.is_file()

    def completed_rounds(self) -> int:
        return json.loads(self.state_file.read_text())["completed_rounds"] if self.state_file.is_file() else 0

    def write_config(self, cfg) -> None:
        atomic_write_text(OmegaConf.to_yaml(cfg), self.config_file)

    def load_config(self):
        from privfedtalk.config import Config, load_config

        return load_config(self.config_file, schema=Config)

    def signature(self) -> str | None:
        """What makes two runs the same run (see config_signature); None without a config."""
        if not self.config_file.is_file():
            return None
        return run_signature(self.load_config())

    def save(self, global_state: torch.Tensor, info: dict, tensors: dict | None = None) -> None:
        atomic_save_tensors({GLOBAL_KEY: global_state, **(tensors or {})}, self.global_file)
        atomic_write_text(json.dumps(info), self.state_file)  # written last: it marks the round done
        self.pending_file.unlink(missing_ok=True)

    def load(self) -> tuple[torch.Tensor, dict, dict]:
        """(global state, state.json, the other saved tensors)."""
        tensors = load_file(str(self.global_file))
        return tensors.pop(GLOBAL_KEY), json.loads(self.state_file.read_text()), tensors

    def append_record(self, record: dict) -> None:
        with open(self.metrics_file, "a") as f:
            f.write(json.dumps(record) + "\n")

    def records(self) -> list[dict]:
        return read_jsonl(self.metrics_file)

    def mark_pending_release(self, marker: dict) -> None:
        atomic_write_text(json.dumps(marker), self.pending_file)

    def pending_release(self) -> dict | None:
        return json.loads(self.pending_file.read_text()) if self.pending_file.is_file() else None


def run_signature(cfg) -> str:
    """The whole config but its folder, thread count and latent cache folder (where encoded clips are
    kept changes no number), as sorted JSON."""
    from privfedtalk.config import config_signature

    data = config_signature(cfg)
    data.pop("out_dir", None)
    data.pop("threads", None)
    data.get("data", {}).pop("latent_cache", None)
    return json.dumps(data, sort_keys=True)
