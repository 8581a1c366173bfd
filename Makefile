# make demo: `codemill run recipes/demo.yaml`: curate the embedded default corpus (stdlib + installed
# packages), train a tokenizer, build held-out benchmarks, train the demo model, evaluate it, report.
# make test: the test suite. Both create .venv and install everything they need on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# llama.cpp is compiled for this CPU (GGML_NATIVE) but without AMX: its AMX kernels segfault on q8_0 and
# K-quant matmuls on Sapphire Rapids-class Xeons (ggml-org/llama.cpp#20824; docs/editors.md). GCC's
# explicit -mno-* flags win over -march=native in any order. --no-cache-dir: pip keys its wheel cache by
# the source, not CMAKE_ARGS, so a llama.cpp built earlier with AMX would be reused.
LLAMA_CMAKE_ARGS := -DCMAKE_C_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16' -DCMAKE_CXX_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16'
# slurm-wlm munge: the one-node Slurm that tests/test_slurm.py starts (its daemons, sbatch, srun)
SYSPKGS := git libmagic1 bubblewrap python3 g++ cmake default-jdk-headless nodejs libjavatuples-java mono-mcs pypy3 slurm-wlm munge

.PHONY: demo test lint sysdeps clean

$(STAMP): pyproject.toml
	@$(MAKE) --no-print-directory sysdeps
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	CC=gcc CXX=g++ CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install -q --no-cache-dir -e '.[test,bench]'
	touch $(STAMP)

sysdeps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  missing=$$(for p in $(SYSPKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	  if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi; \
	else echo "not root or no apt-get: make sure these are installed: $(SYSPKGS)"; fi

demo: $(STAMP)
	$(BIN)/codemill run recipes/demo.yaml --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf runs .pytest_cache
