"""True FID: Fréchet distance on Inception-v3 pool features, only from a local weights file.

Nothing is downloaded. The user points at a TorchScript Inception feature extractor on disk (e.g. a
TorchScript export of the TensorFlow FID network). Contract: `forward(images)` takes float NCHW RGB in
[0, 255]; if it accepts `return_features=True` it is called that way (pool features rather than
logits), otherwise its output is taken as the features. Without such a file, tables say "n/a". No
real Inception file was available where this was written: the contract is tested with a stand-in.

torch.jit.load reads the archive with torch's own C++ loader, which rebuilds TorchScript modules and
tensors only, not arbitrary Python classes. Load only files you trust all the same.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from privfedtalk.errors import PrivFedTalkError
from privfedtalk.metrics.frechet import frechet_distance

INCEPTION_SIZE = 299


def load_inception(path: str | Path) -> torch.jit.ScriptModule:
    path = Path(path)
    if not path.is_file():
        raise PrivFedTalkError(
            f"{path}: Inception weights file not found (give a local TorchScript .pt file)"
        )
    try:
        model = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as err:
        raise PrivFedTalkError(
            f"{path}: not a TorchScript Inception feature extractor ({str(err).splitlines()[0]})"
        ) from None
    return model.eval()


@torch.no_grad()
def inception_features(model, frames, batch_size: int = 32) -> np.ndarray:
    """(N, D) features of uint8 frames (N, H, W, 3), resized to 299x299 (bilinear)."""
    frames = np.asarray(frames)
    out = []
    for start in range(0, len(frames), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(frames[start : start + batch_size])).permute(0, 3, 1, 2)
        x = F.interpolate(
            x.float(), size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False
        )
        try:
            features = model(x, return_features=True)
        except (RuntimeError, TypeError):  # a module whose forward has no return_features argument
            features = model(x)
        out.append(features.reshape(len(x), -1).float().cpu().numpy())
    return np.concatenate(out)


def fid(model, real_frames, fake_frames) -> float:
    """FID between two frame sets (uint8, (N, H, W, 3) each) with the given Inception extractor."""
    return frechet_distance(inception_features(model, real_frames), inception_features(model, fake_frames))
