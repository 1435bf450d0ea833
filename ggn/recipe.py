"""What each stage of an experiment receives: config blocks -> command flags -> the options the step parses.

The workflow's rules build their `ggn <step>` flags with `to_flags`; `resolve_experiment` parses those same
flags with each step's own parser and adds the values a step derives at run time (effective learning rate
and total batch, the grouping settings, frozen BN when pretrained). The parity test checks paper-row configs
against docs/parity.md through it, and `ggn recipe` prints it.
"""
from __future__ import annotations

import argparse
import importlib
import json
import shlex
from pathlib import Path
from typing import Any

from ggn.bounds import check_options
from ggn.io import InputError, atomic_write_json, load_yaml

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"

# Config block -> (ggn step, its required path arguments with stand-in values, flag keys the rule passes itself)
STAGES = {
    "pa": ("train-pa", ["--train-json", "TRAIN.json", "--images", "IMAGES", "--out", "OUT.pt"], ()),
    "extract": ("extract", ["--checkpoint", "PA.pt", "--annotations", "TRAIN.json", "--images", "IMAGES",
                            "--out", "SHARD.parquet"], ("num_shards",)),
    "merge": ("merge", ["--shards", "SHARD.parquet", "--annotations", "TRAIN.json", "--out", "PSEUDO.json"],
              ("store",)),
    "detector": ("train-detector", ["--train-json", "TRAIN.json", "--images", "IMAGES", "--out", "OUT.pt"], ()),
    "predict": ("predict", ["--checkpoint", "DET.pt", "--annotations", "EVAL.json", "--images", "IMAGES",
                            "--out", "DETS.json"], ()),
}


def grouping_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The `pa_lib.propose` settings a parsed `ggn extract` runs with: its grouping's, then --propose-params."""
    import pa_lib
    from ggn.extract import parse_propose_params

    return {**pa_lib.GROUPINGS[args.grouping], **parse_propose_params(args.propose_params)}


def unsuppressed_extract_flags() -> str:
    """What Pseudo-OLN adds to extraction: every candidate, none suppressed (the ranker re-scores them first)."""
    return "--top-k 0 --propose-params nms=0"


def stage_flags(exp: dict, block: str) -> str:
    """The flags the workflow passes to the `extract` or `rank` stage of an experiment.

    With `rank.by: oln` (Pseudo-OLN), extraction keeps every candidate unsuppressed and `ggn rank-oln` applies
    the grouping's own NMS threshold and top_k after re-scoring, as oln_ranker.py applies pa_to_masks' `nms`.
    """
    extract = to_flags(exp.get("extract") or {}, skip=STAGES["extract"][2])
    oln = (exp.get("rank") or {}).get("by") == "oln"
    if block == "extract":
        return f"{extract} {unsuppressed_extract_flags()}" if oln else extract
    if block == "rank":
        args = parse_step("extract", STAGES["extract"][1] + shlex.split(extract))
        nms = grouping_settings(args)["nms"] or 0
        rank = {k: v for k, v in (exp.get("rank") or {}).items() if k != "by"}
        return to_flags({"nms": nms, "top_k": args.top_k, **rank})
    raise ValueError(f"no derived flags for stage {block!r}")


def to_flags(options: dict, skip=()) -> str:
    """{'lr_steps': [6, 7], 'amp': False} -> '--lr-steps 6 7 --no-amp' for a `ggn <step>` command."""
    parts = []
    for key, value in options.items():
        if key in skip or value is None:
            continue
        name = key.replace("_", "-")
        flag = f"--{name}"
        if isinstance(value, bool):
            parts.append(flag if value else f"--no-{name}")
        elif isinstance(value, dict):
            parts.append(f"{flag} {shlex.quote(json.dumps(value))}")
        elif isinstance(value, (list, tuple)):
            parts.append(f"{flag} {' '.join(shlex.quote(str(v)) for v in value)}")
        else:
            parts.append(f"{flag} {shlex.quote(str(value))}")
    return " ".join(parts)


def validated_config(path: str | Path) -> dict:
    """A config file validated against the workflow's schema with its defaults filled in (as the workflow does)."""
    from snakemake.utils import validate

    config = load_yaml(path)
    validate(config, str(SCHEMA), set_default=True)
    return config


def parse_step(step: str, argv: list[str]) -> argparse.Namespace:
    """The Namespace `ggn STEP ARGV` would run with; a bad flag is an InputError naming the step."""
    from ggn.cli import STEPS

    module = importlib.import_module(STEPS[step][0])
    parser = argparse.ArgumentParser(prog=f"ggn {step}", exit_on_error=False)
    module.add_arguments(parser)
    try:
        args = parser.parse_args(argv)
        check_options(step, args, parser)
        return args
    except (argparse.ArgumentError, SystemExit) as e:
        raise InputError(f"ggn {step} refuses the flags {' '.join(argv)!r}: {e}") from None


def resolve_experiment(exp: dict) -> dict[str, dict[str, Any]]:
    """{block: options} as each stage receives them, plus what the stage derives from them at run time."""
    from ggn.detector.train import resolve_freezing
    from ggn.dist import effective_lr

    out: dict[str, dict[str, Any]] = {}
    for block, (step, required, skip) in STAGES.items():
        if block in ("detector", "predict") and exp.get("targets") == "pseudo":
            continue  # the experiment stops at the pseudo-GT
        if block in ("pa", "extract", "merge", "detector") and "models_from" in exp:
            continue  # evaluates another experiment's detectors: its recipe is resolved, and checked, there
        if block == "pa" and "pa_from" in exp:
            continue  # another experiment's PA network (resolved, and checked, there)
        if block in ("extract", "merge") and "pseudo_from" in exp:
            continue  # another experiment's pseudo-GT
        args = parse_step(step, required + shlex.split(to_flags(exp.get(block) or {}, skip=skip)))
        options = {k: v for k, v in vars(args).items() if not k.startswith("_")}
        if block == "pa":
            options["total_batch"] = args.batch_size * args.gpus
            options["effective_lr"] = effective_lr(args.lr, args.batch_size, args.gpus, args.lr_batch)
        elif block == "detector":
            if "init_from" in exp:  # the workflow passes that experiment's ggn detector as --pretrained
                args.pretrained = f"{exp['init_from']}/detector/ggn/checkpoint.pt"
                options["init_from"] = options["pretrained"] = exp["init_from"]
            resolve_freezing(args)
            options.update(norm=args.norm, frozen_stages=args.frozen_stages,
                           total_batch=args.batch_size * args.gpus,
                           effective_lr=effective_lr(args.lr, args.batch_size, args.gpus, args.lr_batch))
        elif block == "extract":
            options["propose"] = grouping_settings(args)
            options["num_shards"] = (exp.get("extract") or {}).get("num_shards", 1)  # the rule's shard count
        elif block == "merge":
            options["store"] = bool((exp.get("merge") or {}).get("store", False))  # the rule's --store
        out[block] = options
    if (exp.get("rank") or {}).get("by") == "oln" and "pseudo_from" not in exp:
        args = parse_step("rank-oln", ["--shard", "SHARD.parquet", "--checkpoint", "OLN.pt", "--annotations",
                                       "TRAIN.json", "--images", "IMAGES", "--out", "RANKED.parquet"]
                          + shlex.split(stage_flags(exp, "rank")))
        out["rank"] = {"by": "oln", **{k: v for k, v in vars(args).items() if not k.startswith("_")},
                       "extract_flags": unsuppressed_extract_flags()}
    return out


def resolve_config(path: str | Path) -> dict[str, dict[str, dict[str, Any]]]:
    config = validated_config(path)
    return {name: resolve_experiment(exp) for name, exp in config["experiments"].items()}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("configs", nargs="+", help="config files (e.g. config/coco_voc_to_nonvoc.yaml)")
    p.add_argument("--out", help="also write the resolved options as JSON here")


def run(args: argparse.Namespace) -> int:
    resolved = {str(path): resolve_config(path) for path in args.configs}
    for path, experiments in resolved.items():
        for name, stages in experiments.items():
            print(f"{path} :: {name}")
            for block in ("pa", "detector"):
                if block in stages:
                    s = stages[block]
                    print(f"  {block:9s} total batch {s['total_batch']} ({s['batch_size']} x {s['gpus']} processes), "
                          f"effective lr {s['effective_lr']:.4g} (lr {s['lr']:g} for {s['lr_batch']} images), "
                          f"pretrained {s['pretrained']}")
            if "extract" in stages:
                print(f"  extract   grouping {stages['extract']['grouping']}, top-{stages['extract']['top_k']} "
                      f"candidates, input size {stages['extract']['input_size'] or 'of the PA checkpoint'}")
            if "rank" in stages:
                r = stages["rank"]
                print(f"  rank      Pseudo-OLN: extraction runs with {r['extract_flags']}, then the baseline OLN "
                      f"detector re-scores (pa x {r['pa_weight']:g} + box + box x centerness), NMS {r['nms']:g}, "
                      f"top-{r['top_k']}")
    if args.out:
        atomic_write_json(args.out, resolved, indent=1)
    return 0
