#!/usr/bin/env bash
# Run by Snakemake inside the environment of ggn.yaml right after creating it, from its copy in .snakemake/conda/:
# two levels up is the repository root (as for the lock in ggn.yaml). The dependencies are in from the lock.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
if [ ! -f "$root/pyproject.toml" ]; then
    echo "no pyproject.toml in $root: run snakemake from the repository root, with the default --conda-prefix" >&2
    exit 1
fi
# --no-build-isolation: setuptools, wheel and Cython come from ggn.yaml and numpy from the lock, so the compiled
# kernels are built against the numpy they run with, and nothing more is downloaded here.
python -m pip install --no-deps --no-build-isolation -e "$root"
