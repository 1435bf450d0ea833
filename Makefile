# Two commands on a fresh machine: `make demo` and `make test`. Everything lives in .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CORES  ?= 2
STAMP  := $(VENV)/.ggn-installed

.PHONY: install demo test test-fast lint bench clean slurm-profile

# Where Snakemake looks for `--profile NAME` (besides the working directory and /etc/xdg/snakemake).
SNAKEMAKE_PROFILES ?= $(or $(XDG_CONFIG_HOME),$(HOME)/.config)/snakemake

install: $(STAMP)

# torch/torchvision are pinned exactly in pyproject.toml. PyPI's build is for CUDA 13 (sm_75 and newer, driver
# >= 580); for V100s (sm_70) or older drivers take the same versions built for CUDA 12.6:
#   make install TORCH_INDEX=https://download.pytorch.org/whl/cu126
TORCH_INDEX ?=
$(STAMP): pyproject.toml setup.py pa_lib/_kernels.pyx
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip setuptools wheel
	$(if $(TORCH_INDEX),$(BIN)/python -m pip install torch==2.14.1 torchvision==0.29.1 --index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --cores $(CORES)
	@echo "Results: results/table.md (metrics under results/*/eval/)"
	@cat results/table.md 2>/dev/null || true

test: $(STAMP)
	$(BIN)/python -m pytest tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest tests -m "not slow"

lint: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --lint

bench: $(STAMP)
	for b in bench/bench_*.py; do $(BIN)/python $$b || exit 1; done

# One set-up step for `snakemake --profile slurm all`: a copy of profiles/slurm in the user's Snakemake
# config folder, to edit with the site's partitions and account (kept out of the repository).
slurm-profile:
	@if [ -e "$(SNAKEMAKE_PROFILES)/slurm" ]; then \
		echo "$(SNAKEMAKE_PROFILES)/slurm exists: left as it is (edit it, or remove it and run make slurm-profile again)"; \
	else \
		mkdir -p "$(SNAKEMAKE_PROFILES)" && cp -r profiles/slurm "$(SNAKEMAKE_PROFILES)/slurm" && \
		echo "installed $(SNAKEMAKE_PROFILES)/slurm: set your partitions and account there, then: snakemake --profile slurm all"; \
	fi

clean:
	rm -rf results .snakemake build pa_lib/*.c pa_lib/*.so
