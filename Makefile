# One-command set-up: every target creates the environment first if it is missing.
#
# What `make venv` installs: first torch, as given by TORCH_SPEC (default `torch==2.13.0`), in its own pip command,
# then this package with its [dev] extras (`pip install -e ".[dev]"`). Which torch *build* `torch==2.13.0` gives
# depends on the package index pip uses: this project's machines serve the CPU wheel from their local index; a stock
# PyPI index on Linux x86-64 serves the CUDA build (several GB). Choose explicitly with TORCH_SPEC, e.g.
#   make venv TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"     # CPU build anywhere
#   make venv TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"   # CUDA 12.8 build
# The spec is recorded in $(VENV)/.torch-spec: running `make venv` with another TORCH_SPEC on an existing venv
# reinstalls torch from that spec (and only then); the same spec does nothing.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_STAMP := $(VENV)/.torch-spec

.PHONY: venv test test-all demo demo-quick benchmarks clean FORCE

venv: $(STAMP)

# Always visited; rewritten (so newer than the stamp) only when TORCH_SPEC differs from the recorded spec.
# --force-reinstall --no-deps swaps the build even when the version number is the same (CPU <-> CUDA); the second
# command installs torch's dependencies.
$(TORCH_STAMP): FORCE
	@test -x $(PY) || { echo "make venv: creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }
	@if [ "$$(cat $@ 2>/dev/null)" != '$(TORCH_SPEC)' ]; then \
	  echo "make venv: installing torch from TORCH_SPEC='$(TORCH_SPEC)' (recorded: '$$(cat $@ 2>/dev/null)')"; \
	  echo "make venv: the build (CPU or CUDA) is whatever your package index serves for it; see the Makefile header"; \
	  $(PY) -m pip install --quiet --upgrade pip && \
	  $(PY) -m pip install --quiet --force-reinstall --no-deps $(TORCH_SPEC) && \
	  $(PY) -m pip install --quiet $(TORCH_SPEC) && \
	  $(PY) -c "import torch; print('make venv: installed torch', torch.__version__, '- CUDA', torch.version.cuda or 'none (CPU build)')" && \
	  printf '%s\n' '$(TORCH_SPEC)' > $@; \
	fi

$(STAMP): pyproject.toml $(TORCH_STAMP)
	@echo "make venv: installing this package and its [dev] extras into $(VENV) (pip install -e \".[dev]\")"
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

FORCE:

# Test files run in TEST_WORKERS processes (pytest-xdist; each test process keeps torch to one thread, see
# tests/conftest.py), a whole file per worker so module fixtures are built once. TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2
test: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-all: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "slow or not slow"

demo: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m examples.demo $(DEMO_ARGS)

demo-quick: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m examples.demo --quick

clean:
	rm -rf $(VENV) outputs .pytest_cache

# ----------------------------------------------------------------------------------------------- benchmarks (issue 20)
# Every table records its command, machine, threads and load average before/after, and flags a run whose load
# exceeded the core count. `bench-perf` regenerates only issue 20's tables (exact search, token galleries, memory
# bank, feature cache: ~15 minutes on 2 quiet cores, peak RSS ~4 GiB); `bench` runs every benchmark (hours).
BENCH_ENV := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONPATH=.
.PHONY: bench bench-perf

bench-perf: $(STAMP)
	$(BENCH_ENV) $(PY) benchmarks/bench_gallery_search.py --sections exact --output benchmarks/results/exact_search.md
	$(BENCH_ENV) $(PY) benchmarks/bench_token_gallery.py
	$(BENCH_ENV) $(PY) benchmarks/bench_memory_bank.py
	$(BENCH_ENV) $(PY) benchmarks/bench_feature_cache.py

bench: bench-perf
	$(BENCH_ENV) $(PY) benchmarks/bench_gallery_search.py
	$(BENCH_ENV) $(PY) benchmarks/bench_ivfpq.py
	$(BENCH_ENV) $(PY) benchmarks/bench_query_encoding.py
	$(BENCH_ENV) $(PY) benchmarks/bench_mmaps_model.py
	$(BENCH_ENV) $(PY) benchmarks/bench_mmaps_pipeline.py
	$(BENCH_ENV) $(PY) benchmarks/mcot_captioning.py
	$(BENCH_ENV) $(PY) benchmarks/synthetic_cir_difficulty.py
	$(BENCH_ENV) $(PY) -m benchmarks.mmaps_synthetic --num_products 300 --max_steps 800
	$(BENCH_ENV) $(PY) benchmarks/ablation_csmcir.py
	$(BENCH_ENV) $(PY) benchmarks/ablation_mmaps.py
	$(BENCH_ENV) $(PY) benchmarks/finetune_csmcir.py
