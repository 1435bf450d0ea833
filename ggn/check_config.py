"""`ggn check-config FILE...`: check the config `snakemake --configfile FILE...` will read, before it reads it.

Snakemake reads `--configfile` itself, before the workflow starts, and a YAML error there ends in its generic
"Config file is not valid JSON or YAML" without the line. This command reads the files as the workflow will: a YAML
error names its file, line and column; several files are merged in order and laid over the default config when
none names `experiments` (Snakemake's own merge, as the Snakefile has it); every schema error is listed with the
field it is in (`experiments.x.pa.lr`); then every stage's options are parsed as its `ggn <step>` would parse them
(the bounds the command line applies).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ggn.io import InputError, load_yaml
from ggn.recipe import REPO, SCHEMA

DEFAULT_CONFIG = REPO / "config" / "config.yaml"


def field_name(path: Any) -> str:
    """`experiments.x.pa.lr` for jsonschema's deque of keys (list indices as [i])."""
    out = ""
    for key in path:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else str(key))
    return out or "(top level)"


def schema_errors(config: Any) -> list[str]:
    """Every place the config breaks the workflow's schema, one line each, deepest field first."""
    import jsonschema

    schema = load_yaml(SCHEMA)
    validator = jsonschema.Draft202012Validator(schema)
    lines = []
    for error in sorted(validator.iter_errors(config), key=lambda e: [str(k) for k in e.absolute_path]):
        # oneOf/anyOf failures: the best single reason is the most specific one
        best = jsonschema.exceptions.best_match([error]) if error.context else error
        lines.append(f"{field_name(best.absolute_path)}: {best.message}")
    return lines


def read(path: Path) -> dict:
    config = load_yaml(path)  # a YAML error names its line and column
    if config is None:
        raise InputError(f"{path} is empty: a config holds `experiments:` (see config/README.md)")
    if not isinstance(config, dict):
        raise InputError(f"{path}: a config is a mapping of keys (`experiments:`, `results:`...), "
                         f"not a {type(config).__name__}")
    return config


def check(*paths: str | Path) -> dict:
    """The config `snakemake --configfile PATHS...` will see (the files merged in order, laid over the default
    config when none names `experiments`); InputError naming the file(s) and every problem otherwise."""
    from snakemake.utils import update_config, validate

    from ggn.recipe import resolve_experiment

    paths = [Path(p) for p in paths]
    names = " + ".join(str(p) for p in paths)
    config: dict = {}
    for path in paths:
        update_config(config, read(path))  # Snakemake's merge of several --configfile
    if "experiments" not in config:  # the Snakefile then loads the default config, and the files are laid over it
        default = Path("config/config.yaml")  # the Snakefile's, relative to where snakemake runs
        given, config = config, read(default if default.is_file() else DEFAULT_CONFIG)
        update_config(config, given)
    errors = schema_errors(config)
    if errors:
        raise InputError(f"{names} breaks the config schema ({SCHEMA.relative_to(REPO)}) in "
                         f"{len(errors)} place(s):\n  " + "\n  ".join(errors))
    validate(config, str(SCHEMA), set_default=True)  # the defaults the workflow fills in
    for name, exp in config["experiments"].items():
        try:
            resolve_experiment(exp)
        except InputError as e:
            raise InputError(f"{names}, experiment {name}: {str(e).removeprefix('error: ')}") from None
    return config


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("configs", nargs="+", help="the config files as given to `snakemake --configfile` (several are "
                   "merged in order, as Snakemake merges them)")


def run(args: argparse.Namespace) -> int:
    config = check(*args.configs)
    print(f"{' + '.join(args.configs)}: valid; experiments {', '.join(config['experiments'])}; "
          f"results under {config['results']}/, table {config['table']}")
    return 0
