"""ISFA's reliability signals, measured on a client's own training frames and calibrated to [0, 1].

Both signals describe the client's *data*, not the model: a client whose clips show another person or
a covered face (identity consistency), or that flicker and jitter from frame to frame (temporal
stability), is the client whose update ISFA should trust less. They are computed once, on the client,
when it first reads its clips (no network is involved, so they do not depend on how well the backbone
or the identity encoder is trained), then calibrated by an affine range and quantized each round.

Raw values (both near 1 for clean video, lower when damaged):
  identity similarity  1 − mean over frames of the relative L1 distance between the frame's coarse,
                       brightness-normalised appearance grid and the clip's first frame (the clip's
                       reference identity, as an enrolment image would be);
  temporal smoothness  1 − mean absolute second difference of the frames (pixel values in [0, 1]):
                       smooth head and mouth motion has a small second difference, frame-to-frame
                       jitter and flicker a large one.
"""

from __future__ import annotations

import numpy as np

from privfedtalk.privacy.dp import quantize_unit_scalar

IDENTITY = "identity_consistency"
TEMPORAL = "temporal_stability"

# Cells per side of the appearance grid: coarse enough that head motion and the mouth barely move a
# cell's mean colour, fine enough that another face or a box over the eyes and mouth does.
APPEARANCE_CELLS = 8


def _unit_frames(frames: np.ndarray) -> np.ndarray:
    """(frames, H, W, 3) uint8 -> float64 in [0, 1]."""
    return np.asarray(frames, dtype=np.float64) / 255.0


def appearance_grid(frames: np.ndarray, cells: int = APPEARANCE_CELLS) -> np.ndarray:
    """(frames, H, W, 3) in [0, 1] -> (frames, cells, cells, 3) cell means, each frame divided by its
    mean intensity so that a global brightness change (flicker) is not read as another identity."""
    count, height, width, channels = frames.shape
    cells = max(1, min(cells, height, width))
    h, w = height // cells, width // cells
    cropped = frames[:, : h * cells, : w * cells]
    grid = cropped.reshape(count, cells, h, cells, w, channels).mean(axis=(2, 4))
    return grid / np.maximum(grid.mean(axis=(1, 2, 3), keepdims=True), 1e-6)


def identity_distances(frames: np.ndarray) -> np.ndarray:
    """(frames,) relative L1 distance of each frame's appearance grid to the first frame's."""
    grid = appearance_grid(_unit_frames(frames))
    return np.abs(grid - grid[:1]).mean(axis=(1, 2, 3))


def frame_jerk(frames: np.ndarray) -> np.ndarray:
    """(frames − 2,) mean absolute second difference of consecutive frames, in [0, 1] pixel units."""
    unit = _unit_frames(frames)
    if len(unit) < 3:
        return np.zeros(0)
    return np.abs(unit[2:] - 2.0 * unit[1:-1] + unit[:-2]).mean(axis=(1, 2, 3))


def raw_data_signals(clips: list[np.ndarray]) -> dict[str, float]:
    """Raw identity similarity and temporal smoothness over all of a client's training clips.

    clips: each (frames, H, W, 3) uint8. Every frame counts once (long clips weigh more). A client
    without frames gets 1.0 for both (nothing to distrust; e.g. an audit canary).
    """
    distances = [identity_distances(c) for c in clips if len(c)]
    jerks = [frame_jerk(c) for c in clips if len(c)]
    distance = np.concatenate(distances) if distances else np.zeros(0)
    jerk = np.concatenate(jerks) if jerks else np.zeros(0)
    return {
        IDENTITY: float(1.0 - distance.mean()) if distance.size else 1.0,
        TEMPORAL: float(1.0 - jerk.mean()) if jerk.size else 1.0,
    }


def calibrate(value: float, value_range) -> float:
    """(value − lo)/(hi − lo) clipped to [0, 1]: lo is the raw value that counts as fully unreliable,
    hi the value that clean video reaches."""
    lo, hi = (float(v) for v in value_range)
    return float(np.clip((value - lo) / (hi - lo), 0.0, 1.0))


def quantized_signals(raw: dict[str, float], fed_cfg) -> dict[str, float]:
    """What leaves the client: each raw signal calibrated by its configured range, then quantized to
    `signal_bits` bits. A missing raw signal counts as clean (1.0 before calibration)."""
    ranges = {IDENTITY: fed_cfg.signal_identity_range, TEMPORAL: fed_cfg.signal_temporal_range}
    return {
        name: quantize_unit_scalar(calibrate(raw.get(name, 1.0), value_range), fed_cfg.signal_bits)
        for name, value_range in ranges.items()
    }
