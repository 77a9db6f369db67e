"""Session fixtures shared across test folders: a tiny synthetic corpus and a tiny pretrained backbone."""

from __future__ import annotations

import pytest
import torch

from privfedtalk.config import load_config
from privfedtalk.demo import QUICK

torch.set_num_threads(2)


def tiny_overrides(root, out_dir) -> list[str]:
    return [f"data.root={root}", "data.size=32", f"out_dir={out_dir}"] + QUICK["pretrain"]


@pytest.fixture(scope="session")
def tiny_base_overrides():
    """`tiny_overrides` for test modules in any folder (`from conftest import` is ambiguous: every
    test folder has a conftest module)."""
    return tiny_overrides


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """4 identities (2 public, 2 private) x 2 clips x 1 s at 32x32."""
    from privfedtalk.data.synthetic import synthesize_corpus

    root = tmp_path_factory.mktemp("corpus")
    synthesize_corpus(root, identities=4, clips=2, seconds=1.0, size=32, seed=3)
    return root


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_corpus, tmp_path_factory):
    from privfedtalk.pretrain import pretrain

    out = tmp_path_factory.mktemp("pretrain")
    return pretrain(load_config(None, tiny_overrides(tiny_corpus, out)))


@pytest.fixture()
def tiny_federated_config(tiny_corpus, tiny_checkpoint, tmp_path):
    def make(*extra):
        return load_config(
            None,
            tiny_overrides(tiny_corpus, tmp_path / "run")
            + QUICK["federated"]
            + [
                f"federated.checkpoint={tiny_checkpoint}",
                "federated.rounds=3",
                "federated.clients_per_round=2",
            ]
            + list(extra),
        )

    return make


class InceptionStandIn(torch.nn.Module):
    """Same interface as the TF-FID TorchScript export: [0, 255] NCHW in, pool features on request."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 5, stride=4)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        pooled = torch.relu(self.conv(x / 255.0)).mean(dim=(2, 3))
        return pooled if return_features else self.head(pooled)


@pytest.fixture
def inception_file(tmp_path):
    """A small TorchScript network saved like a local Inception file (8 pool features, 3 logits)."""
    torch.manual_seed(0)
    path = tmp_path / "inception.pt"
    torch.jit.script(InceptionStandIn()).save(str(path))
    return path
