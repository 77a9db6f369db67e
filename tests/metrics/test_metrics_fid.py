"""True FID from a local TorchScript Inception file; a stand-in network (conftest) plays Inception."""

from __future__ import annotations

import numpy as np
import pytest

from privfedtalk.errors import PrivFedTalkError
from privfedtalk.metrics.fid import fid, inception_features, load_inception


@pytest.fixture
def network(inception_file):
    return load_inception(inception_file)


def test_features_are_the_pool_features_at_299(network):
    frames = np.random.default_rng(0).integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    features = inception_features(network, frames, batch_size=2)
    assert features.shape == (5, 8)  # pool features, not the 3 logits


def test_fid_is_zero_for_the_same_frames_and_grows_with_a_shift(network):
    rng = np.random.default_rng(1)
    real = rng.integers(0, 200, (40, 32, 32, 3), dtype=np.uint8)
    assert fid(network, real, real) == pytest.approx(0.0, abs=1e-6)
    brighter = np.clip(real.astype(int) + 40, 0, 255).astype(np.uint8)
    much_brighter = np.clip(real.astype(int) + 80, 0, 255).astype(np.uint8)
    assert 0 < fid(network, real, brighter) < fid(network, real, much_brighter)


def test_missing_or_bad_file_is_a_one_line_error(tmp_path):
    with pytest.raises(PrivFedTalkError, match="not found"):
        load_inception(tmp_path / "absent.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torchscript archive")
    with pytest.raises(PrivFedTalkError, match="not a TorchScript"):
        load_inception(bad)
