"""Per-client slots on disk: identity adapter and cached latents, as safetensors, written atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
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
