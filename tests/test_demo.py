"""`make demo`'s path at smoke-test sizes: every phase runs, the summary has the documented fields,
and a second call reuses every finished phase."""

from __future__ import annotations

import json
import math

from PIL import Image

from privfedtalk.data.media import read_audio, read_video
from privfedtalk.demo import run_demo


def test_quick_demo_runs_end_to_end_and_resumes(tmp_path, capsys):
    summary = run_demo(tmp_path / "demo", quick=True)
    assert json.loads((tmp_path / "demo" / "demo_summary.json").read_text()) == summary
    backbone = summary["heldout_identities_backbone"]
    assert backbone["clips"] >= 1 and math.isfinite(backbone["psnr"])
    run = summary["privfedtalk_run"]
    assert run["rounds"] >= 1 and run["epsilon_observer"] > 0
    assert run["epsilon_server_worst"] >= run["epsilon_server_median"] > 0
    frames, _ = read_video(summary["sample_video"])
    assert len(frames) > 1 and read_audio(summary["sample_video"]).size > 0  # the driving audio is muxed in
    with Image.open(summary["side_by_side"]) as picture:  # reference | frames | truth | mouth curves
        assert picture.format == "PNG" and picture.width > 400 and picture.height > 300
    again = run_demo(tmp_path / "demo", quick=True)
    assert again["seconds"]["pretrain_s"] < 5 and again["seconds"]["synth_s"] < 5  # reused, not rebuilt
    assert again["privfedtalk_run"]["rounds"] == run["rounds"]
