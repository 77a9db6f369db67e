"""Per-clip latent cache and training-window sampling: encode each clip once, not every step."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class LatentClip:
    """One clip in the generator's latent space.

    latents: (frames, C, h, w) scaled VAE latents; features: (frames, tokens, n_mels);
    frames: (frames, H, W, 3) uint8, kept for on-device signals and evaluation.
    """

    identity: str
    name: str
    latents: torch.Tensor
    features: torch.Tensor
    frames: np.ndarray
    loudness: np.ndarray
    truth: dict | None

    def __len__(self) -> int:
        return self.latents.shape[0]


def cache_latents(generator, clips) -> list[LatentClip]:
    """Encode every clip (privfedtalk.data.corpus.Clip) once with the generator's VAE."""
    cached = []
    for clip in clips:
        cached.append(
            LatentClip(
                identity=clip.identity,
                name=clip.name,
                latents=generator.encode_frames(clip.frames),
                features=torch.as_tensor(clip.features, dtype=torch.float32),
                frames=clip.frames,
                loudness=np.asarray(clip.loudness),
                truth=clip.truth,
            )
        )
    return cached


def sample_windows(clips: list[LatentClip], batch: int, window: int, generator: torch.Generator):
    """Random training windows of consecutive frames.

    Returns latents (batch, window, C, h, w), reference latents (batch, C, h, w) from a random
    frame of the same clip, and audio features (batch, window, tokens, n_mels).
    """
    latents, references, features = [], [], []
    for _ in range(batch):
        clip = clips[int(torch.randint(0, len(clips), (1,), generator=generator))]
        start = int(torch.randint(0, max(1, len(clip) - window + 1), (1,), generator=generator))
        ref = int(torch.randint(0, len(clip), (1,), generator=generator))
        latents.append(clip.latents[start : start + window])
        references.append(clip.latents[ref])
        features.append(clip.features[start : start + window])
    return torch.stack(latents), torch.stack(references), torch.stack(features)
