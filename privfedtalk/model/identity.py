"""A small identity encoder (trained on public identities, then frozen) for ISFA signals and metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn


class IdentityEncoder(nn.Module):
    """Frames (batch, 3, H, W) in [-1, 1] -> unit-norm identity embeddings (batch, dim).

    Trained as a classifier over the public identities; the penultimate layer is the embedding.
    Also serves as the frozen feature network of the project's Fréchet distance.
    """

    def __init__(self, dim: int = 64, num_identities: int = 1, width: int = 32):
        super().__init__()
        self.config = {"dim": dim, "num_identities": num_identities, "width": width}
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 3, stride=2, padding=1),
            nn.GroupNorm(8, w),
            nn.SiLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1),
            nn.GroupNorm(8, 2 * w),
            nn.SiLU(),
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1),
            nn.GroupNorm(8, 4 * w),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4 * w, dim),
        )
        self.classifier = nn.Linear(dim, num_identities)

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """Unit-norm embeddings of pixels in [-1, 1], computed where the weights are (CPU or GPU)."""
        weight = self.classifier.weight
        return F.normalize(self.features(pixels.to(weight.device, weight.dtype)), dim=-1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(pixels) * 8.0)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(directory / "identity_encoder.safetensors"))
        (directory / "identity_encoder.json").write_text(json.dumps(self.config))

    @classmethod
    def load(cls, directory: str | Path) -> IdentityEncoder:
        directory = Path(directory)
        encoder = cls(**json.loads((directory / "identity_encoder.json").read_text()))
        encoder.load_state_dict(load_file(str(directory / "identity_encoder.safetensors")))
        return encoder.eval().requires_grad_(False)


def train_identity_encoder(
    clips_by_identity: list[np.ndarray],
    steps: int,
    seed: int,
    batch_size: int = 32,
    lr: float = 2e-3,
    progress=None,
) -> IdentityEncoder:
    """Train on frames grouped by identity: clips_by_identity[k] is (frames, H, W, 3) uint8 of identity k."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # layer initialisation draws from the global generator
    encoder = IdentityEncoder(num_identities=len(clips_by_identity))
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=lr)
    pools = [torch.as_tensor(frames) for frames in clips_by_identity]
    for _ in range(steps):
        labels = torch.randint(0, len(pools), (batch_size,), generator=generator)
        picks = [
            pools[k][torch.randint(0, len(pools[k]), (1,), generator=generator)] for k in labels.tolist()
        ]
        pixels = torch.cat(picks).float().permute(0, 3, 1, 2) / 127.5 - 1.0
        # Small random shifts so the embedding keys on the face, not on exact pixel positions.
        shift = torch.randint(-2, 3, (2,), generator=generator).tolist()
        pixels = torch.roll(pixels, shifts=shift, dims=(2, 3))
        loss = F.cross_entropy(encoder(pixels), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if progress is not None:
            progress(float(loss))
    return encoder.eval().requires_grad_(False)


@torch.no_grad()
def identity_similarity(encoder: IdentityEncoder, frames, reference) -> float:
    """Mean cosine similarity between embeddings of frames (T, H, W, 3) and of a reference frame."""
    pixels = torch.as_tensor(np.asarray(frames)).float().permute(0, 3, 1, 2) / 127.5 - 1.0
    ref = torch.as_tensor(np.asarray(reference)[None]).float().permute(0, 3, 1, 2) / 127.5 - 1.0
    return float((encoder.embed(pixels) @ encoder.embed(ref).T).mean())


@torch.no_grad()
def identity_features(encoder: IdentityEncoder, frames) -> np.ndarray:
    """Embeddings (T, dim) of uint8 frames (T, H, W, 3), e.g. for the Fréchet distance."""
    pixels = torch.as_tensor(np.asarray(frames)).float().permute(0, 3, 1, 2) / 127.5 - 1.0
    return encoder.embed(pixels).cpu().numpy()
