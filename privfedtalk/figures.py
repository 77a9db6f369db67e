"""Figures on the file-only matplotlib backend: the report's conventions and the demo's side-by-side."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from privfedtalk.metrics import mouth_opening


def pyplot():
    """matplotlib's pyplot on the file-only backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path) -> None:
    """Every figure: tight layout, 120 dpi, closed after writing."""
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot().close(fig)


def write_side_by_side(path: Path, clip, videos: dict, frames_shown: int = 6) -> None:
    """One picture to look at without a video player: the reference frame, each generated video and
    the ground truth at a few frames, and the mouth-opening curves (generated and true) over time.

    videos: label -> uint8 (frames, H, W, 3) generated from `clip`'s first frame.
    """
    plt = pyplot()
    shown = np.linspace(0, len(clip.frames) - 1, frames_shown).round().astype(int)
    lines = [*videos.items(), ("ground truth", clip.frames)]
    box = None
    if clip.truth is not None and "mouth_box" in clip.truth:
        box = np.asarray(clip.truth["mouth_box"]).reshape(-1)[:4]
    rows = len(lines) + (box is not None)
    fig = plt.figure(figsize=(1.5 * (frames_shown + 1), 1.5 * len(lines) + 2.0 * (box is not None)))
    grid = fig.add_gridspec(
        rows, frames_shown + 1, height_ratios=[1] * len(lines) + [1.4] * (box is not None)
    )
    reference = fig.add_subplot(grid[0, 0])
    reference.imshow(clip.frames[0], interpolation="nearest")
    reference.set_title("reference (input)", fontsize=7)
    reference.set_xticks([]), reference.set_yticks([])
    for i, (label, frames) in enumerate(lines):
        for j, t in enumerate(shown):
            ax = fig.add_subplot(grid[i, j + 1])
            ax.imshow(frames[t], interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(f"frame {t}", fontsize=7)
            if j == 0:
                ax.set_ylabel(label, fontsize=6)
    if box is not None:
        curves = fig.add_subplot(grid[len(lines), :])
        seconds = np.arange(len(clip.frames)) / clip.fps
        for label, frames in lines:
            curves.plot(
                seconds, mouth_opening(frames, box), label=label, lw=1.2 if label == "ground truth" else 1
            )
        curves.set_xlabel("seconds", fontsize=7)
        curves.set_ylabel("mouth opening", fontsize=7)
        curves.tick_params(labelsize=6)
        curves.legend(fontsize=6, loc="upper right")
    fig.suptitle(f"held-out clip {clip.identity}/{clip.name}, driven by its own audio", fontsize=8)
    save_figure(fig, path)
