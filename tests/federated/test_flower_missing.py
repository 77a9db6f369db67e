"""Without the optional Flower extra, `privfedtalk flower-sim` stops with one line naming the fix."""

from __future__ import annotations

import sys

from privfedtalk import cli


def test_flower_sim_without_flwr_names_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "flwr", None)  # `import flwr` now raises ImportError
    assert cli.main(["flower-sim", "fedavg", "--clients", "2"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert 'pip install -e ".[flower]"' in error and "flwr" in error
