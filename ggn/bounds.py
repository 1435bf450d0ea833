"""One set of bounds for a step's options: those the config schema gives its block, applied to `ggn <step>` too.

The workflow validates a config against workflow/schemas/config.schema.yaml, which bounds options such as
`merge.gt_iou_max` (at most 1) or `pa.epochs` (at least 1). The same step run by hand used to take any number
(`ggn merge --gt-iou-max 5` turned seen objects into pseudo-GT; `ggn train-pa --epochs -1` wrote an untrained
checkpoint). `check_options` reads the bounds from the schema itself, so the command line and the config
cannot drift apart: a bound changed in the schema changes both.
"""
from __future__ import annotations

import argparse
from functools import lru_cache
from pathlib import Path
from typing import Any

SCHEMA = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"

# ggn step -> the experiment block of the config that holds its options
STEP_BLOCKS = {"train-pa": "pa", "train-detector": "detector", "extract": "extract", "merge": "merge",
               "rank-oln": "rank", "synth": "synthetic", "predict": "predict"}

_LIMITS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


@lru_cache(maxsize=1)
def _schema() -> dict:
    import yaml

    with open(SCHEMA) as f:
        return yaml.safe_load(f)


@lru_cache(maxsize=None)
def option_bounds(step: str) -> dict[str, dict[str, Any]]:
    """{option: {"minimum": .., "maximum": .., "exclusiveMinimum": .., "items": {...}}} of a step's schema block
    (only the options the schema bounds; `items` for list options whose elements are bounded)."""
    block = STEP_BLOCKS.get(step)
    if block is None:
        return {}
    props = _schema()["$defs"]["experiment"]["properties"][block].get("properties", {})
    out: dict[str, dict[str, Any]] = {}
    for key, spec in props.items():
        limits = {k: spec[k] for k in _LIMITS if k in spec}
        items = {k: spec.get("items", {})[k] for k in _LIMITS if k in spec.get("items", {})}
        if items:
            limits["items"] = items
        if limits:
            out[key] = limits
    return out


def _violation(value: float, limits: dict[str, Any]) -> str | None:
    if "minimum" in limits and value < limits["minimum"]:
        return f"below its minimum {limits['minimum']}"
    if "exclusiveMinimum" in limits and value <= limits["exclusiveMinimum"]:
        return f"not above {limits['exclusiveMinimum']}"
    if "maximum" in limits and value > limits["maximum"]:
        return f"above its maximum {limits['maximum']}"
    if "exclusiveMaximum" in limits and value >= limits["exclusiveMaximum"]:
        return f"not below {limits['exclusiveMaximum']}"
    return None


def _range(limits: dict[str, Any]) -> str:
    low = (f">= {limits['minimum']}" if "minimum" in limits else
           f"> {limits['exclusiveMinimum']}" if "exclusiveMinimum" in limits else "")
    high = (f"<= {limits['maximum']}" if "maximum" in limits else
            f"< {limits['exclusiveMaximum']}" if "exclusiveMaximum" in limits else "")
    return " and ".join(p for p in (low, high) if p)


def violations(step: str, args: argparse.Namespace) -> list[str]:
    """A message for each option of `args` outside the bounds the config schema gives it (none: all fine)."""
    block = STEP_BLOCKS.get(step)
    problems = []
    for key, limits in option_bounds(step).items():
        value = getattr(args, key, None)
        if value is None or isinstance(value, bool):
            continue
        flag = "--" + key.replace("_", "-")
        checks = ([(v, limits["items"]) for v in value] if isinstance(value, (list, tuple)) and "items" in limits
                  else [(value, limits)] if isinstance(value, (int, float)) else [])
        for v, lim in checks:
            why = _violation(v, lim)
            if why:
                problems.append(f"{flag} {v} is {why}: choose a value {_range(lim)} (the bound of the config's "
                                f"{block}.{key} in {SCHEMA.relative_to(SCHEMA.parents[2])})")
                break
    return problems


def check_options(step: str, args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """`parser.error` (exit code 2, the usage line) on the first option outside its schema bounds."""
    problems = violations(step, args)
    if problems:
        parser.error("; ".join(problems))
