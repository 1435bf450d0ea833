# Two commands on a fresh machine: `make demo` and `make test`. Everything lives in .venv.
# Variables (docs/install.md): PYTHON (a Python >= 3.11), CORES (cores `make demo` uses), TORCH=cpu (CPU-only
# torch, a much smaller download) or TORCH_INDEX=URL (any other torch build, e.g. CUDA 12.6 for V100s).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CORES  ?= 2
STAMP  := $(VENV)/.ggn-installed

.PHONY: install lock demo test test-fast test-all lint bench clean distclean slurm-profile

# Where Snakemake looks for `--profile NAME` (besides the working directory and /etc/xdg/snakemake).
SNAKEMAKE_PROFILES ?= $(or $(XDG_CONFIG_HOME),$(HOME)/.config)/snakemake

install: $(STAMP)

# Every Python package is installed from LOCK: exact versions with their sha256 hashes, for Linux x86-64 and
# CPython 3.11 (made by `make lock`). pyproject.toml keeps the ranges, for installing the package into an
# environment of one's own. pip's hash-checking mode refuses an editable requirement, so the project itself
# goes in afterwards with --no-deps (its build still fetches setuptools, Cython and numpy to compile pa_lib).
LOCK := requirements.lock

# PyPI's torch 2.14.1 (the one in LOCK, with its nvidia-*/cuda-* libraries) is built for CUDA 13: sm_75 and
# newer, driver >= 580. For V100s (sm_70) or older drivers take the same versions built for CUDA 12.6:
#   make install TORCH_INDEX=https://download.pytorch.org/whl/cu126
# Then everything in LOCK except torch, torchvision and the CUDA 13 libraries (TORCH_FAMILY: the lines it
# matches are cut out into build/lock-no-torch.txt) is installed hash-checked as usual, and torch==2.14.1 and
# torchvision==0.29.1 come from TORCH_INDEX with their own CUDA 12.6 libraries, checked by version, not hash.
# Either build of 2.14.1 satisfies the pins, so a venv keeps the one it has: to switch, rm -rf $(VENV) first.
# TORCH=cpu is the short name for PyTorch's CPU-only index (no CUDA libraries: ~200 MB of torch instead of
# several GB); TORCH=cu126 likewise for the CUDA 12.6 build. An explicit TORCH_INDEX wins.
TORCH        ?=
TORCH_INDEX  ?= $(if $(TORCH),https://download.pytorch.org/whl/$(TORCH))
TORCH_FAMILY := ^(torch|torchvision|triton|nvidia-|cuda-)
TORCH_PINS   := torch==2.14.1 torchvision==0.29.1

# A venv of an older Python (made here earlier, or by hand) is removed; PYTHON is checked before a venv is made
# from it (only then: an existing good venv needs no PYTHON), so a first `make` with the wrong python3 is not a
# dead end.
PY_OK := import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY_VERSION = $(PYTHON) -c 'import platform; print(platform.python_version())'
NEED_PYTHON := this project needs 3.11 or newer (Snakemake 9); name one: make $(or $(MAKECMDGOALS),install) PYTHON=python3.11
$(STAMP): $(LOCK) pyproject.toml setup.py pa_lib/_kernels.pyx
	@if [ -x $(BIN)/python ] && ! $(BIN)/python -c '$(PY_OK)' 2>/dev/null; then \
		echo "$(VENV) was made with Python $$($(BIN)/python -c 'import platform; print(platform.python_version())' \
			2>/dev/null || echo '(broken)'): removing it and making it again with $(PYTHON)"; rm -rf $(VENV); fi
	@if [ ! -x $(BIN)/python ]; then \
		$(PYTHON) -c '$(PY_OK)' 2>/dev/null || { echo "$(PYTHON) is Python $$($(PY_VERSION) 2>/dev/null || \
			echo '(not found)'): $(NEED_PYTHON)" >&2; exit 1; }; \
		echo "$(PYTHON) -m venv $(VENV)"; $(PYTHON) -m venv $(VENV); fi
	$(BIN)/python -m pip install --upgrade pip setuptools wheel
ifeq ($(TORCH_INDEX),)
	$(BIN)/python -m pip install --require-hashes -r $(LOCK)
else
	mkdir -p build
	awk '/^[^ #]/ { skip = ($$0 ~ /$(TORCH_FAMILY)/) } !skip' $(LOCK) > build/lock-no-torch.txt
	$(BIN)/python -m pip install --require-hashes -r build/lock-no-torch.txt
	$(BIN)/python -m pip install $(TORCH_PINS) --index-url $(TORCH_INDEX)
endif
	$(BIN)/python -m pip install --no-deps -e .
	touch $(STAMP)

# Writes LOCK again from pyproject.toml's dependencies and its `test` extra, with pip-tools in a venv of its own
# (build/lock-tools) and the Python of LOCK_PYTHON; run it on Linux x86-64. Pins already in LOCK are kept where
# they still fit; `make lock LOCK_ARGS=--upgrade` moves every package to its newest fitting release. Hashes come
# from PyPI's JSON API (every file of each pinned release, so wheels of any platform and Python) and from hashing
# files in local indexes, which are left out of LOCK itself; where the index publishes wheel metadata on its own
# (PyPI does), no torch or CUDA wheel is downloaded.
LOCK_PYTHON ?= python3.11
LOCK_TOOLS  := build/lock-tools
LOCK_ARGS   ?=
LOCK_CMD    := pip-compile --generate-hashes --allow-unsafe --strip-extras --extra=test --no-emit-index-url \
	--no-emit-find-links --output-file=$(LOCK) pyproject.toml
lock:
	test -x $(LOCK_TOOLS)/bin/pip-compile || { $(LOCK_PYTHON) -m venv $(LOCK_TOOLS) && \
		$(LOCK_TOOLS)/bin/python -m pip install pip-tools==7.7.0; }
	CUSTOM_COMPILE_COMMAND="make lock, which runs: $(LOCK_CMD)" $(LOCK_TOOLS)/bin/$(LOCK_CMD) $(LOCK_ARGS)

demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --cores $(CORES)
	@echo "Results: results/table.md (per-seed metrics under results/*/seed*/eval/, figures under results/*/figures/)"
	@cat results/table.md 2>/dev/null || true

# Test tiers (docs/testing.md). test: the fast tier plus the one end-to-end workflow test (marked `smoke`; 3 min 32 s
# on 2 idle cores); test-fast: the fast tier only; test-all: everything, the slow tier and the Slurm
# test too (.ci/run). Tests run in TEST_WORKERS processes (pytest-xdist), each test file in one process so that
# the tests of a file share its module-scoped runs, in the order tests/conftest.py collects them (longest files
# first); most end-to-end steps use one core, so two processes keep both of a 2-core machine's cores busy.
# TEST_WORKERS=0 runs them in this process, one after the other.
TEST_WORKERS ?= 2
XDIST := -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder
test: $(STAMP)
	$(BIN)/python -m pytest tests -m "not slow or smoke" $(XDIST)

test-fast: $(STAMP)
	$(BIN)/python -m pytest tests -m "not slow" $(XDIST)

test-all: $(STAMP)
	$(BIN)/python -m pytest tests $(XDIST)

lint: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --lint

bench: $(STAMP)
	@# every bench that runs without arguments; those with a required option (a run's folder: bench_demo,
	@# bench_gpu, bench_pseudo_oracle) are run by hand, as docs/benchmarks.md shows
	for b in $$(grep -L "required=True" bench/bench_*.py); do $(BIN)/python $$b || exit 1; done

# One set-up step for `snakemake --profile slurm all`: a copy of profiles/slurm in the user's Snakemake
# config folder, to edit with the site's partitions and account (kept out of the repository).
slurm-profile:
	@if [ -e "$(SNAKEMAKE_PROFILES)/slurm" ]; then \
		echo "$(SNAKEMAKE_PROFILES)/slurm exists: left as it is (edit it, or remove it and run make slurm-profile again)"; \
	else \
		mkdir -p "$(SNAKEMAKE_PROFILES)" && cp -r profiles/slurm "$(SNAKEMAKE_PROFILES)/slurm" && \
		echo "installed $(SNAKEMAKE_PROFILES)/slurm: set your partitions and account there, then: snakemake --profile slurm all"; \
	fi

# clean leaves .venv alone but drops its stamp, since the compiled pa_lib it removes comes back with the next
# install; distclean removes .venv too.
clean:
	rm -rf results .snakemake build pa_lib/*.c pa_lib/*.so $(STAMP)

distclean: clean
	rm -rf $(VENV)
