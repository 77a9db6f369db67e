"""Every experiments/*.py is a thin script over the installed package: it imports cleanly by path with no
side effects, and reaches other code only through `privfedtalk` (no sys.path edits, no sibling loading)."""

from __future__ import annotations

import ast
import importlib.util
import os
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
SCRIPTS = sorted(EXPERIMENTS.glob("*.py"))


def import_problems(path: Path) -> list[str]:
    """What makes `path` reach code other than through the privfedtalk package."""
    source = path.read_text()
    problems = [text for text in ("spec_from_file_location", "sys.path", "importlib") if text in source]
    siblings = {p.stem for p in path.parent.glob("*.py")}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""] if node.level == 0 else ["." * node.level]
        else:
            continue
        problems += [
            f"import {name}" for name in names if name.split(".")[0] in siblings or name.startswith(".")
        ]
    return problems


def load_by_path(path: Path):
    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_there_are_scripts_to_check():
    assert {"run_benchmark.py", "bench_parallel.py", "bench_memory.py", "personalization.py"} <= {
        p.name for p in SCRIPTS
    }


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_script_imports_only_the_package(path):
    assert import_problems(path) == []


def test_the_check_flags_sibling_imports_and_path_edits(tmp_path):
    (tmp_path / "helper.py").write_text("X = 1\n")
    bad = tmp_path / "bad.py"
    bad.write_text("import sys\nsys.path.insert(0, '.')\nfrom helper import X\nimport helper.sub\n")
    assert import_problems(bad) == ["sys.path", "import helper", "import helper.sub"]


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_script_imports_cleanly_without_side_effects(path, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", [str(path), "--definitely-not-a-flag"])  # main() would exit on it
    module = load_by_path(path)
    assert callable(module.main)
    assert os.listdir(tmp_path) == []  # nothing written
    assert capsys.readouterr() == ("", "")  # nothing printed


def test_run_benchmark_is_the_package_command_line():
    from privfedtalk.benchmark.cli import main

    module = load_by_path(EXPERIMENTS / "run_benchmark.py")
    assert module.main is main
    tree = ast.parse((EXPERIMENTS / "run_benchmark.py").read_text())
    assert not [node for node in tree.body if isinstance(node, ast.FunctionDef | ast.ClassDef)]


def test_round_throughput_reads_round_rates_and_checks_which_tree_it_imports(tmp_path):
    import json

    module = load_by_path(EXPERIMENTS / "bench_round_throughput.py")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("federated:\n  local_steps: 10\n")
    rows = [{"clients": 64, "round_seconds": 32.0}, {"clients": 32, "round_seconds": 8.0}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert module.round_rates(run) == pytest.approx([20.0, 40.0])
    assert module.ratios([10.0, 12.0], [21.0, 24.0]) == pytest.approx([2.1, 2.0])
    # The tree's own package is imported; a folder without one falls through to the installed package.
    assert module.imported_from(module.THIS_TREE).is_relative_to(module.THIS_TREE)
    assert not module.imported_from(tmp_path).is_relative_to(tmp_path)
