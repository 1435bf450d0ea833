"""What the workflow checks in a config before any job starts, beyond its JSON schema: stage options known to
their step, files and folders that exist, a results folder that can be written.

Stage blocks (`pa`, `extract`, `detector`, `predict`) hold the options of a `ggn <step>` command, so the schema
cannot list them all; each key is checked against the step's own parser (a typo such as `pa: {epochz: 1}` is
refused with the nearest option named) and every value is parsed as the job will parse it (a wrong type is
refused with the step's own message). Paths (data, pseudo_data, pa_checkpoint, pretrained files, @class files)
must exist: a job would otherwise fail after its upstream compute, or Snakemake would only name the file.
"""
from __future__ import annotations

import argparse
import difflib
import importlib
import os
import shlex
from pathlib import Path

from ggn.io import InputError, check_writable


class ConfigError(ValueError):
    """A config value the workflow refuses before any job: the message names the experiment, the key and the fix."""


# Experiment keys that name files or folders, by block.
DATA_KEYS = {"data": ("train_annotations", "train_images", "eval_annotations", "eval_images", "eval_videos"),
             "pseudo_data": ("annotations", "images")}
# Keys of a stage block that the workflow turns into other flags itself, never passed as `--key`.
WORKFLOW_KEYS = {"extract": {"num_shards"}}


def _options(step: str) -> set[str]:
    from ggn.cli import STEPS

    parser = argparse.ArgumentParser(prog=f"ggn {step}")
    importlib.import_module(STEPS[step][0]).add_arguments(parser)
    return {s[2:].replace("-", "_") for s in parser._option_string_actions if s.startswith("--")}


def check_stage_keys(name: str, exp: dict) -> None:
    """Each key of a stage block is an option of its step, and its value parses as the job will parse it."""
    from ggn.recipe import STAGES, parse_step, to_flags

    for block, (step, required, skip) in STAGES.items():
        options = exp.get(block) or {}
        if not options:
            continue
        known = _options(step) | WORKFLOW_KEYS.get(block, set()) | set(skip)
        for key in options:
            if key not in known:
                near = difflib.get_close_matches(key, sorted(known), n=1)
                hint = f"did you mean {near[0]!r}? " if near else ""
                raise ConfigError(f"experiment {name!r}: {block}.{key} is not an option of `ggn {step}`; {hint}"
                                  f"`ggn {step} --help` lists them (underscores for dashes)")
        try:
            parse_step(step, required + shlex.split(to_flags(options, skip=tuple(skip) + tuple(WORKFLOW_KEYS.get(block, ())))))
        except InputError as e:
            raise ConfigError(f"experiment {name!r}: block {block}: {str(e).removeprefix('error: ')}") from None


def check_seeds(name: str, exp: dict) -> None:
    """A replicate's seed comes from the experiment's `seeds` list alone: a `seed` in a stage block would make
    every replicate the same run, or pair GGN's seed with another seed of its PA network."""
    for block in ("pa", "detector"):
        if "seed" in (exp.get(block) or {}):
            raise ConfigError(f"experiment {name!r}: {block}.seed is set per replicate by the experiment's `seeds` "
                              f"list (e.g. `seeds: [{exp[block]['seed']}]`); remove {block}.seed")


def _must_exist(name: str, key: str, path: str, folder: bool | None = None) -> None:
    p = Path(path)
    where = "" if p.is_absolute() else f" (relative to {os.getcwd()}, where snakemake runs)"
    if not p.exists():
        raise ConfigError(f"experiment {name!r}: {key} {path} does not exist{where}; fix the path in the config")
    if folder is True and not p.is_dir():
        raise ConfigError(f"experiment {name!r}: {key} {path} is a file; it must be the image folder")
    if folder is False and not p.is_file():
        raise ConfigError(f"experiment {name!r}: {key} {path} is a folder; it must be a file")


def _class_files(spec) -> list[str]:
    items = [spec] if isinstance(spec, str) else list(spec or [])
    return [i.strip().lstrip("~").strip()[1:] for i in items if isinstance(i, str) and i.strip().lstrip("~").strip().startswith("@")]


def check_paths(name: str, exp: dict) -> None:
    """Data files and folders, pseudo_data, pa_checkpoint, pretrained weight files and @class files exist."""
    for block, keys in DATA_KEYS.items():
        for key in keys:
            value = (exp.get(block) or {}).get(key)
            if key == "eval_images" and (exp.get(block) or {}).get("eval_videos"):
                continue  # the frames are made from eval_videos by the workflow (`ggn video-frames`)
            if value:
                _must_exist(name, f"{block}.{key}", value, folder=key.endswith(("images", "videos")))
    if exp.get("pa_checkpoint"):
        _must_exist(name, "pa_checkpoint", exp["pa_checkpoint"], folder=False)
    for block in ("pa", "detector"):
        pretrained = (exp.get(block) or {}).get("pretrained")
        if pretrained and pretrained != "imagenet":
            _must_exist(name, f"{block}.pretrained", pretrained, folder=False)
    for key in ("seen", "unseen", "eval_seen", "eval_unseen"):
        for path in _class_files(exp.get(key)):
            _must_exist(name, key, path, folder=False)


def check_config(config: dict, experiments: list[str]) -> None:
    """Everything above for `experiments` (those a run builds, with the ones they take work from), and a writable
    results folder; raises ConfigError with the experiment, the key and the fix."""
    wanted = list(experiments)
    for name in list(wanted):
        for key in ("pa_from", "pseudo_from", "init_from"):
            source = config["experiments"][name].get(key)
            if source and source not in wanted:
                wanted.append(source)
    for name in wanted:
        exp = config["experiments"][name]
        check_seeds(name, exp)
        check_stage_keys(name, exp)
        check_paths(name, exp)
    try:
        check_writable(Path(config["results"]) / "table.csv", "results folder")
    except InputError as e:
        raise ConfigError(str(e).removeprefix("error: ")) from None
