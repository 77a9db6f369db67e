# PrivFedTalk: every target creates .venv on first use; nothing is installed by hand.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The [flower] extra (flwr + Ray) only for the tests: `make demo` does not wait for it.
FLOWER_STAMP := $(VENV)/.installed-flower
# --no-compile: Python writes the bytecode of what is imported on first use instead of pip compiling
# every file of every package up front (a fresh venv in 64 s instead of 144 s on the 2-core machine).
# A CPU build of torch is installed only where the venv has no torch yet; GPU users who
# pre-install a CUDA torch into .venv keep it (pyproject asks only torch>=2.4).
TORCH_SPEC ?= torch==2.13.0
DEMO_OUT ?= demo_out
PRESET ?= small

.PHONY: venv demo test lint format run-benchmark clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q --no-compile "$(TORCH_SPEC)"
	$(PY) -m pip install -q --no-compile -e ".[dev,faces]"
	touch $(STAMP)

$(FLOWER_STAMP): $(STAMP)
	$(PY) -m pip install -q --no-compile -e ".[flower]"
	touch $(FLOWER_STAMP)

demo: $(STAMP)
	$(PY) -m privfedtalk.cli demo --out $(DEMO_OUT)

test: $(FLOWER_STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check privfedtalk experiments tests
	$(PY) -m ruff format --check privfedtalk experiments tests

format: $(STAMP)
	$(PY) -m ruff format privfedtalk experiments tests

run-benchmark: $(STAMP)
	$(PY) experiments/run_benchmark.py --preset $(PRESET)

clean:
	rm -rf $(VENV) $(DEMO_OUT) runs .pytest_cache
