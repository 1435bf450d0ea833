"""`ggn <step>`: one command per pipeline stage, each importable and runnable without Snakemake."""
from __future__ import annotations

import argparse
import importlib
import sys

from ggn import __version__
from ggn.bounds import check_options
from ggn.images import ImageError
from ggn.io import InputError, check_writable, setup_logging

# Output options of the steps, checked for a writable folder before a step starts its work.
OUTPUT_OPTIONS = ("out", "train_out", "eval_out", "mining_out", "csv", "md", "counts", "store")

# step name -> (module implementing `add_arguments(parser)` and `run(args)`, one-line help).
# Modules are imported only for the step that runs, so `ggn --help` stays fast.
STEPS: dict[str, tuple[str, str]] = {
    "synth": ("ggn.synth", "generate the bundled synthetic open-world dataset (COCO format)"),
    "split": ("ggn.split", "keep seen-class annotations for training, mark seen/unseen for evaluation"),
    "convert-ade20k": ("ggn.convert_ade20k", "ADE20K (ADE20K_2021_17_01) instance annotations -> COCO instances JSON"),
    "video-frames": ("ggn.video_frames", "a video dataset as released (UVO) -> its annotated frames, once, resumable"),
    "list-images": ("ggn.list_images", "a folder tree of images (ImageNet train/) -> COCO image list JSON (no annotations)"),
    "evaluate": ("ggn.evaluate", "cross-category average recall (AR@k) on unseen classes"),
    "train-pa": ("ggn.pa.train", "train the pairwise-affinity network"),
    "eval-pa": ("ggn.pa.evaluate", "affinity BCE/L1 and boundary precision/recall on held-out images"),
    "extract": ("ggn.extract", "PA network + grouping + ranking on one shard of images -> parquet"),
    "rank-oln": ("ggn.rank_oln", "Pseudo-OLN: re-rank a shard's candidates with an OLN detector (GGN-OLN row)"),
    "eval-pseudo": ("ggn.eval_pseudo", "recall of unseen objects among the candidates, their AR, pseudo-GT precision"),
    "merge": ("ggn.merge", "gather extraction shards into pseudo-GT (COCO JSON and per-image parquet store)"),
    "train-detector": ("ggn.detector.train", "train the class-agnostic Mask R-CNN / OLN detector"),
    "predict": ("ggn.detector.predict", "detections on evaluation images (COCO results JSON)"),
    "visualize": ("ggn.visualize", "PNG panels: image, potential, candidates, pseudo-GT, detections, seen/unseen GT"),
    "plot": ("ggn.plots", "AR@k curves of every variant and histograms of candidate scores and gt_iou (PNG)"),
    "table": ("ggn.table", "gather metrics of all experiments into results/table.{csv,md}"),
    "import-reference": ("ggn.import_reference", "the authors' released mmdetection checkpoints (PA, GGN, OLN) -> ours"),
    "import-pseudo": ("ggn.import_pseudo", "the authors' released pseudo-GT (merged COCO file or mask lists) -> a shard"),
    "compare-pseudo": ("ggn.compare_pseudo", "share of the authors' kept pseudo-GT masks our candidates reproduce"),
    "check-resources": ("ggn.check_resources", "before a Slurm run: name every job that no node of its partition can run (sinfo)"),
    "check-config": ("ggn.check_config", "check a config file (YAML line, schema field, stage options) before Snakemake reads it"),
    "recipe": ("ggn.recipe", "print the options each stage of a config's experiments receives (lr, batch, grouping)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ggn", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"ggn {__version__}")
    sub = parser.add_subparsers(dest="step", metavar="STEP")
    for name, (_, help_text) in STEPS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def close_progress_bars() -> None:
    """Close every tqdm bar still drawn (a step stopped inside its loop)."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = build_parser()
    # Split off the step so that only its module is imported and parses the rest.
    verbose = False
    while argv and argv[0] in ("-v", "--verbose"):
        verbose = True
        argv.pop(0)
    if argv and argv[0] == "--version":
        top.parse_args(argv[:1])  # prints `ggn X.Y.Z` and exits
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in STEPS:
        if argv and argv[0] not in ("-h", "--help"):
            top.error(f"unknown step {argv[0]!r}; choose one of: {', '.join(STEPS)}")
        top.print_help()
        return 0 if argv else 2
    step, rest = argv[0], argv[1:]
    module_name, help_text = STEPS[step]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(
        prog=f"ggn {step}", description=(module.__doc__ or help_text).strip(),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    check_options(step, args, parser)  # the bounds the config schema gives the same options
    args._argv = rest  # the step's own arguments, for steps that relaunch themselves as several processes
    setup_logging(verbose or args.verbose)
    for name in OUTPUT_OPTIONS:
        if getattr(args, name, None):
            check_writable(getattr(args, name), f"--{name.replace('_', '-')}")
    try:
        try:
            result = module.run(args)
        except BaseException:
            close_progress_bars()  # the error Python prints next then starts a line of its own, not the bar's
            raise
    except ImageError as e:  # an image that broke after the up-front checks (a training step): no traceback
        message = str(e).strip().splitlines()[-1]  # a DataLoader worker re-raises it with its traceback inside
        raise InputError(f"{message.removeprefix('ggn.images.ImageError: ')}; fix or remove that image, then run "
                         "the same command again (training resumes from its last checkpoint)") from None
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
