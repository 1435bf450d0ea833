# Config validation and every helper the rules use; rules themselves only wire files together.
import os
import re
import shlex
import types

from snakemake.utils import validate

from ggn.recipe import stage_flags, to_flags  # the same flags `ggn recipe` and the parity test resolve
from ggn.config_check import ConfigError, check_config


validate(config, "../schemas/config.schema.yaml", set_default=True)

RESULTS = config["results"]
TABLE = config["table"]
EXPERIMENTS = config["run"] or list(config["experiments"])
for _name in EXPERIMENTS:
    if _name not in config["experiments"]:
        raise ValueError(
            f"config 'run' names experiment {_name!r}, which is not under 'experiments' "
            f"(have: {', '.join(config['experiments'])})"
        )
    _exp = config["experiments"][_name]
    if _exp["rank"]["by"] == "oln" and _exp["detector"]["kind"] != "oln":
        raise ValueError(
            f"experiment {_name!r}: rank.by oln (Pseudo-OLN) re-ranks with the row's baseline OLN detector; "
            f"set detector.kind: oln (it is {_exp['detector']['kind']!r}) or rank.by: grouping"
        )
    for _key in ("pa_from", "pseudo_from", "init_from", "models_from"):
        if _key in _exp and _exp[_key] not in config["experiments"]:
            raise ValueError(
                f"experiment {_name!r}: {_key} names {_exp[_key]!r}, which is not under 'experiments' "
                f"(have: {', '.join(config['experiments'])}); add that experiment's block to this config"
            )
    if "models_from" in _exp:
        _missing = set(_exp["variants"]) - set(config["experiments"][_exp["models_from"]]["variants"])
        if _missing:
            raise ValueError(f"experiment {_name!r}: models_from {_exp['models_from']!r} trains no "
                             f"{', '.join(sorted(_missing))} detector; set variants to what it trains")
    if "init_from" in _exp and "ggn" not in config["experiments"][_exp["init_from"]]["variants"]:
        raise ValueError(f"experiment {_name!r}: init_from {_exp['init_from']!r} builds no ggn detector")
    if not _exp["detector"]["ground_truth"] and _exp["variants"] != ["ggn"]:
        raise ValueError(
            f"experiment {_name!r}: detector.ground_truth false trains on pseudo-GT alone, which only the ggn "
            "detector has; set variants: [ggn]"
        )
    if "data" not in _exp and "synthetic" not in _exp:
        raise ValueError(
            f"experiment {_name!r} needs a 'data' block (annotation files and image folders) "
            "or a 'synthetic' block; see config/README.md"
        )
    if _exp["targets"] == "table" and "data" in _exp:
        _missing = [k for k in ("eval_annotations", "eval_images") if k not in _exp["data"]]
        if _missing:
            raise ValueError(
                f"experiment {_name!r}: a table row is evaluated; set data.{' and data.'.join(_missing)} "
                "(or `targets: pseudo` for pseudo-GT only)"
            )
    if "pa_checkpoint" in _exp and "pa_from" in _exp:
        raise ValueError(f"experiment {_name!r}: give pa_checkpoint (a file) or pa_from (an experiment), not both")
    for _key, _path in _exp.get("reference", {}).items():
        if not os.path.isfile(_path):
            raise ValueError(f"experiment {_name!r}: reference.{_key} {_path} does not exist; download the authors' "
                             "file and, for a checkpoint, convert it with `ggn import-reference` (docs/parity_ladder.md)")
# Before any job: stage options known to their step, data paths that exist, a writable results folder.
try:
    check_config(config, EXPERIMENTS)
except ConfigError as _error:
    raise ValueError(f"config: {_error}") from None


wildcard_constraints:
    exp="|".join(map(re.escape, config["experiments"])),
    variant="baseline|control|ggn|authors",
    seed=r"\d+",
    # A pseudo-GT folder: seed{s}/pseudo (the PA network of seed s), pseudo_control (the image gradient: no seed),
    # or, where no seed changes them, pseudo (a given pa_checkpoint); seed{s}/pseudo_control under Pseudo-OLN,
    # whose ranker is seed s's baseline detector.
    # pseudo_reference: the authors' released pseudo-GT (reference.pseudo_gt), imported, never extracted.
    pdir=r"(seed\d+/)?pseudo(_control|_reference)?",
    padir=r"(seed\d+/)?pa",  # seed{s}/pa: a trained PA network; pa: a given pa_checkpoint (evaluated once)
    shard=r"\d+",
    nshards=r"\d+",


def seeds_of(name):
    """The replicate seeds of an experiment (`seeds`, default [0])."""
    return config["experiments"][name]["seeds"]


def pdir_seed(pdir):
    """The seed of a seeded pseudo-GT folder (seed3/pseudo -> 3), None for a seedless one."""
    head, _, _ = pdir.partition(os.sep)
    return int(head.removeprefix("seed")) if head.startswith("seed") else None


def experiment(wildcards):
    return config["experiments"][wildcards.exp]


def data_path(wildcards, key):
    """Dataset files of an experiment; a synthetic experiment's live under results/{exp}/synthetic."""
    exp = experiment(wildcards)
    if "synthetic" in exp:
        root = f"{RESULTS}/{wildcards.exp}/synthetic"
        return {
            "train_annotations": f"{root}/annotations/instances_train.json",
            "train_images": f"{root}/train",
            "eval_annotations": f"{root}/annotations/instances_val.json",
            "eval_images": f"{root}/val",
        }[key]
    if key.startswith("eval_") and key not in exp["data"]:  # `targets: pseudo` needs no evaluation set
        return exp["data"][key.replace("eval_", "train_")]
    return exp["data"][key]


def train_source(wildcards):
    return data_path(wildcards, "train_annotations")


def eval_source(wildcards):
    return data_path(wildcards, "eval_annotations")


def train_images(wildcards):
    return data_path(wildcards, "train_images")


def eval_images(wildcards):
    return data_path(wildcards, "eval_images")


def synth_flags(wildcards):
    return to_flags(experiment(wildcards)["synthetic"])


def split_flags(wildcards):
    exp = experiment(wildcards)
    shared = ([train_images(wildcards), eval_images(wildcards)]
              if (exp.get("data") or {}).get("exclude_eval_images") else None)  # a synthetic experiment has no data
    return to_flags({"seen": exp["seen"], "unseen": exp["unseen"], "exclude_eval_images": shared,
                     "eval_seen": exp["eval_seen"], "eval_unseen": exp["eval_unseen"],
                     # pseudo-GT only: an evaluation set without unseen objects is no error (nothing is evaluated)
                     "allow_no_unseen": True if exp["targets"] == "pseudo" else None})


FRAMES_MANIFEST = "ggn_frames.json"  # written by `ggn video-frames` into the frames folder once every frame is there


def eval_frames(wildcards):
    """The frames manifest of an evaluation set made from videos (UVO), so that the split waits for the frames."""
    data = experiment(wildcards).get("data") or {}  # a synthetic experiment has none
    return [f"{os.path.normpath(data['eval_images'])}/{FRAMES_MANIFEST}"] if data.get("eval_videos") else []


def video_frames_source(wildcards):
    """Evaluation file and videos of the frames folder `wildcards.frames` (any experiment that names it)."""
    for exp in config["experiments"].values():
        data = exp.get("data") or {}
        if data.get("eval_videos") and os.path.normpath(data["eval_images"]) == os.path.normpath(wildcards.frames):
            return {"annotations": data["eval_annotations"], "videos": data["eval_videos"]}
    raise ValueError(f"no experiment has eval_images {wildcards.frames} with eval_videos")


def seen_flags(wildcards):
    return to_flags({"seen": experiment(wildcards)["seen"]})


def pseudo_annotations(wildcards):
    """Images the pseudo-GT is mined from: the training set unless `pseudo_data` names others (its image list,
    or, without one, the list `ggn list-images` makes of its folder)."""
    return _pseudo_images_list(wildcards.exp)


def pseudo_images(wildcards):
    exp = experiment(wildcards)
    if "pseudo_data" in exp:
        return exp["pseudo_data"]["images"]
    return train_images(wildcards)


def pa_gpus(wildcards):
    """GPUs (training processes) of the PA training job, all on one node."""
    return experiment(wildcards)["pa"]["gpus"]


def detector_gpus(wildcards):
    return experiment(wildcards)["detector"]["gpus"]


def pa_flags(wildcards):
    return to_flags({**experiment(wildcards)["pa"], "seed": int(wildcards.seed)})


def num_shards(name):
    return config["num_shards"] or config["experiments"][name]["extract"]["num_shards"]


def extract_flags(wildcards):
    return stage_flags(experiment(wildcards), "extract")


def rank_flags(wildcards):
    return stage_flags(experiment(wildcards), "rank")


REFERENCE_PSEUDO = "pseudo_reference"


def reference_pseudo(name):
    """The authors' released pseudo-GT file an experiment's ggn variant trains on, or None."""
    return config["experiments"][name].get("reference", {}).get("pseudo_gt")


def _shards(name, pdir):
    """An experiment's shards in its pseudo-GT folder `pdir` as merge reads them: the extracted ones, or their
    Pseudo-OLN re-ranking (rank.by: oln), or the one `ggn import-pseudo` makes of the authors' file."""
    if pdir == REFERENCE_PSEUDO:
        return [f"{RESULTS}/{name}/{pdir}/shards/0-of-1.parquet"]
    n = num_shards(name)
    folder = "ranked" if config["experiments"][name]["rank"]["by"] == "oln" else "shards"
    return [f"{RESULTS}/{name}/{pdir}/{folder}/{i}-of-{n}.parquet" for i in range(n)]


def shard_files(wildcards):
    return _shards(wildcards.exp, wildcards.pdir)


# The pseudo-GT folder of each detector variant that trains on pseudo-GT: GGN's (PA network) and the control's
# (the same grouping on the image gradient, no learning).
PSEUDO_FOLDERS = {"ggn": "pseudo", "control": "pseudo_control"}


def _pa_name(name):
    """The experiment whose PA network `name` uses: itself, `pa_from`, or that of `models_from`."""
    exp = config["experiments"][name]
    return exp.get("pa_from") or exp.get("models_from") or name


def pa_trained(name):
    """Whether `name`'s PA network is trained here (one per seed) rather than given as a pa_checkpoint file."""
    return not config["experiments"][_pa_name(name)].get("pa_checkpoint")


def pseudo_dir(name, variant, seed):
    """The pseudo-GT folder (under results/{name}/) of a variant's seed: seeded where a seed changes it (a trained
    PA network, or Pseudo-OLN's ranking by the seed's baseline detector), shared by all seeds otherwise."""
    if variant == "ggn" and reference_pseudo(name):  # the authors' file: one for every seed
        return REFERENCE_PSEUDO
    seeded = config["experiments"][name]["rank"]["by"] == "oln" or (variant == "ggn" and pa_trained(name))
    return f"seed{seed}/{PSEUDO_FOLDERS[variant]}" if seeded else PSEUDO_FOLDERS[variant]


def pseudo_dirs(name, variant):
    """The distinct pseudo-GT folders of a variant over the experiment's seeds, in seed order."""
    return list(dict.fromkeys(pseudo_dir(name, variant, s) for s in seeds_of(name)))


def is_control(pdir):
    return pdir.endswith("_control")


def extract_inputs(wildcards):
    """The image list, and the PA checkpoint unless the shard is the control's (affinity from the image)."""
    inputs = {"images_list": pseudo_annotations(wildcards)}
    if not is_control(wildcards.pdir):
        inputs["checkpoint"] = pa_checkpoint_file(wildcards.exp, pdir_seed(wildcards.pdir))
    return inputs


def affinity_flags(wildcards, input):
    return "--affinity gradient" if is_control(wildcards.pdir) else f"--checkpoint {shlex.quote(input.checkpoint)}"


def quality_source(name):
    """The experiment whose mined images `ggn eval-pseudo` scores for this one's row, or None when the mined
    images have no annotation of unseen classes (ImageNet, `pseudo_data`; `seen: all`)."""
    source = mining_source(name)
    mined = config["experiments"][source]
    if "pseudo_data" in mined or mined["seen"].strip() == "all":
        return None
    return source


def merge_flags(wildcards):
    return to_flags(experiment(wildcards)["merge"], skip=("store",))


def merge_store(wildcards):
    if experiment(wildcards)["merge"]["store"]:
        store = f"{RESULTS}/{wildcards.exp}/{wildcards.pdir}/store"
        return f"--store {shlex.quote(store)}"
    return ""


def models_source(name):
    """The experiment whose detectors a row evaluates: itself, or `models_from`."""
    return config["experiments"][name].get("models_from", name)


def detector_path(name, seed, variant, file="checkpoint.pt"):
    return f"{RESULTS}/{name}/seed{seed}/detector/{variant}/{file}"


def detector_checkpoint(wildcards):
    if wildcards.variant == AUTHORS:
        return authors_detector(wildcards.exp)
    return detector_path(models_source(wildcards.exp), wildcards.seed, wildcards.variant)


# The evaluation-only variant: the authors' released detector (reference.detector, converted), predicted and
# evaluated here once, in the folder of the experiment's first seed.
AUTHORS = "authors"


def authors_detector(name):
    return config["experiments"][name].get("reference", {}).get("detector")


def evaluate_flags(wildcards):
    """`--iou-types bbox` for the authors' box-only detector (OLN-Box: `mask_head: false`), nothing otherwise."""
    if wildcards.variant != AUTHORS:
        return ""
    from ggn.io import load_checkpoint

    config = load_checkpoint(authors_detector(wildcards.exp), mmap=True).get("config", {})  # tensors never read
    return "" if config.get("mask_head", True) else "--iou-types bbox"


def uses_pa(name):
    """Whether a row has a PA network (and its `ggn eval-pa` metrics): not when its pseudo-GT is the authors'."""
    return not reference_pseudo(mining_source(name))


def reference_pseudo_file(wildcards):
    return reference_pseudo(wildcards.exp)


def compare_reference_inputs(wildcards):
    """Ladder rung (c): the first extraction shard of the given PA network (the authors', converted) and their
    released pseudo-GT, on the same image list."""
    exp = experiment(wildcards)
    if not exp.get("pa_checkpoint") or not reference_pseudo(wildcards.exp):
        raise ValueError(f"experiment {wildcards.exp!r}: comparing with the authors' pseudo-GT needs pa_checkpoint "
                         "(their PA network, converted) and reference.pseudo_gt (their file); docs/parity_ladder.md")
    n = num_shards(wildcards.exp)
    return {"shard": f"{RESULTS}/{wildcards.exp}/pseudo/shards/0-of-{n}.parquet",
            "released": reference_pseudo(wildcards.exp), "images_list": pseudo_annotations(wildcards)}


def compare_reference_flags(wildcards):
    merge = experiment(wildcards)["merge"]
    return to_flags({"top_k": merge["top_k"], "gt_iou_max": merge["gt_iou_max"]})


def pa_checkpoint_file(name, seed):
    """The PA network extraction of `name` uses at a seed: the config's `pa_checkpoint` file (no PA training, the
    same for every seed), else seed{s}/pa/checkpoint.pt of this experiment or of the one it takes its PA from."""
    source = _pa_name(name)
    return config["experiments"][source].get("pa_checkpoint") or f"{RESULTS}/{source}/seed{seed}/pa/checkpoint.pt"


def pa_dir(name, seed):
    """The folder (under results/{source}/) of the PA network `name` uses at a seed, and of its metrics."""
    return f"seed{seed}/pa" if pa_trained(name) else "pa"


def eval_pa_checkpoint(wildcards):
    seed = pdir_seed(wildcards.padir)
    if seed is None:  # a given pa_checkpoint, evaluated once
        return config["experiments"][wildcards.exp]["pa_checkpoint"]
    return f"{RESULTS}/{wildcards.exp}/seed{seed}/pa/checkpoint.pt"


def pa_metrics_files(name):
    """`ggn eval-pa` metrics of the PA networks a row uses: one per seed, or one for a given pa_checkpoint."""
    source = _pa_name(name)
    return list(dict.fromkeys(f"{RESULTS}/{source}/{pa_dir(name, s)}/metrics.json" for s in seeds_of(name)))


def pseudo_source(wildcards):
    """The experiment whose pseudo-GT the ggn detector trains on: itself, or `pseudo_from`."""
    return experiment(wildcards).get("pseudo_from", wildcards.exp)


def _pseudo_only(wildcards):
    return wildcards.variant == "ggn" and not experiment(wildcards)["detector"]["ground_truth"]


def detector_train_json(wildcards):
    """Seen-class GT; for pseudo-GT alone, the list of images the pseudo-GT was mined from."""
    if _pseudo_only(wildcards):
        return _pseudo_images_list(pseudo_source(wildcards))
    return f"{RESULTS}/{wildcards.exp}/data/train.json"


def _pseudo_images_list(name):
    exp = config["experiments"][name]
    if "pseudo_data" in exp:
        return exp["pseudo_data"].get("annotations") or f"{RESULTS}/{name}/data/pseudo_images.json"
    if exp["targets"] == "pseudo":  # no detector: mine every training image, with a seen object or not
        return f"{RESULTS}/{name}/data/mining.json"
    return f"{RESULTS}/{name}/data/train.json"


def detector_images(wildcards):
    if _pseudo_only(wildcards):
        exp = config["experiments"][pseudo_source(wildcards)]
        if "pseudo_data" in exp:
            return exp["pseudo_data"]["images"]
    return train_images(wildcards)


def _init_checkpoint(exp, seed):
    """The ggn detector of `init_from` (same seed), which initialises this experiment's (the ImageNet fine-tune
    row)."""
    return detector_path(exp["init_from"], seed, "ggn")


def _pseudo_folder(wildcards):
    """results/{source}/{pdir} of the pseudo-GT a pseudo-GT variant's detector of this seed trains on."""
    source = pseudo_source(wildcards)
    return source, f"{RESULTS}/{source}/{pseudo_dir(source, wildcards.variant, wildcards.seed)}"


def detector_inputs(wildcards):
    inputs = {"train": detector_train_json(wildcards)}
    exp = experiment(wildcards)
    if wildcards.variant in PSEUDO_FOLDERS:
        inputs["pseudo"] = f"{_pseudo_folder(wildcards)[1]}/pseudo_gt.json"
    if wildcards.variant == "ggn":
        if "init_from" in exp:
            inputs["init"] = _init_checkpoint(exp, wildcards.seed)
    return inputs


def detector_flags(wildcards):
    exp = experiment(wildcards)
    options = dict(exp["detector"])
    options["seed"] = int(wildcards.seed)
    if wildcards.variant in PSEUDO_FOLDERS:
        source, folder = _pseudo_folder(wildcards)
        if config["experiments"][source]["merge"]["store"]:  # read per image: memory flat in the image count
            options["pseudo_store"] = f"{folder}/store"
        else:
            options["pseudo_gt"] = f"{folder}/pseudo_gt.json"
    if wildcards.variant == "ggn":
        if "init_from" in exp:
            options["pretrained"] = _init_checkpoint(exp, wildcards.seed)
    else:
        options.pop("ground_truth", None)
    return to_flags(options)


def metrics_file(name, seed, variant):
    return f"{RESULTS}/{name}/seed{seed}/eval/{variant}.json"


def row_inputs(wildcards):
    """Per seed (in `seeds` order): each variant's metrics, the pseudo-GT quality files, the PA metrics, and the
    final checkpoints whose recorded versions and machine the row names."""
    name = wildcards.exp
    exp = experiment(wildcards)
    seeds = seeds_of(name)
    inputs = {"pa": pa_metrics_files(name)} if uses_pa(name) else {}
    for variant in exp["variants"]:
        inputs[variant] = [metrics_file(name, s, variant) for s in seeds]
    if authors_detector(name):
        inputs[AUTHORS] = [metrics_file(name, seeds[0], AUTHORS)]
    source = quality_source(name)
    for variant in _pseudo_variants(name):
        if source is not None:
            dirs = [pseudo_dir(source, variant, s) for s in seeds]
            inputs[f"{variant}_quality"] = [f"{RESULTS}/{source}/{d}/quality.json" for d in dict.fromkeys(dirs)]
    models = models_source(name)
    inputs["checkpoints"] = [detector_path(models, s, v) for s in seeds for v in exp["variants"]]
    return inputs


def row_metric_flags(wildcards, input):
    """--seeds, then --baseline/--control/--ggn metrics and --{variant}-quality files, one per seed; --authors (one
    file, the evaluation-only variant) and --pa where the row has them."""
    names = [*exp_variants(wildcards), AUTHORS, "pa", *(f"{v}_quality" for v in PSEUDO_FOLDERS), "checkpoints"]
    flags = ["--seeds " + " ".join(map(str, seeds_of(wildcards.exp)))]
    for name in names:
        if name in input.keys():
            flags.append(f"--{name.replace('_', '-')} " + " ".join(shlex.quote(p) for p in input[name]))
    return " ".join(flags)


def exp_variants(wildcards):
    return [v for v in ("baseline", "control", "ggn") if v in experiment(wildcards)["variants"]]


def trainer_variant(wildcards):
    """`ggn train-detector --variant`: the control trains as GGN does (seen GT + its pseudo-GT)."""
    return "baseline" if wildcards.variant == "baseline" else "ggn"


def predict_flags(wildcards):
    return to_flags(experiment(wildcards)["predict"])


def row_flags(wildcards):
    exp = experiment(wildcards)
    models = config["experiments"][models_source(wildcards.exp)]
    options = {
        "experiment": wildcards.exp,
        "training": exp.get("training", exp["seen"]),
        "evaluation": exp.get("evaluation", exp.get("unseen") or f"not {exp['seen']}"),
        "top_k": models["merge"]["top_k"],
        "paper_baseline": exp.get("paper", {}).get("baseline"),
        "paper_ggn": exp.get("paper", {}).get("ggn"),
        "paper_metric": exp.get("paper", {}).get("metric"),
        "detector": models["detector"]["kind"],
        "ranking": models["rank"]["by"],
    }
    return to_flags(options)


def all_rows():
    return [f"{RESULTS}/{name}/row.json" for name in EXPERIMENTS
            if config["experiments"][name]["targets"] == "table"]


def all_targets():
    """Rows gathered into the table, plus the pseudo-GT of experiments that stop there, plus the figures."""
    targets = []
    if all_rows():
        targets += [f"{RESULTS}/{TABLE}.csv", f"{RESULTS}/{TABLE}.md", f"{RESULTS}/{TABLE}.html"]
    for name in EXPERIMENTS:
        exp = config["experiments"][name]
        if exp["targets"] == "pseudo":
            targets += [f"{RESULTS}/{name}/{d}/pseudo_gt.json" for d in pseudo_dirs(name, "ggn")]
        targets += figure_targets(name)
    return targets


# ---- figures (`ggn plot`, `ggn visualize`) and the report ----
NUM_PANEL_IMAGES = 3  # images of each kind (mined, evaluation) that `ggn visualize` draws per experiment


def mining_source(name):
    """The experiment whose extraction and pseudo-GT this row's pseudo-GT detectors use."""
    exp = config["experiments"][name]
    return exp.get("models_from") or exp.get("pseudo_from") or name


def _pseudo_variants(name):
    """The pseudo-GT sources of a row: GGN's with a ggn detector, the control's with a control detector or with
    `control_pseudo` (its pseudo-GT and quality without training a detector on it)."""
    exp = config["experiments"][name]
    return [v for v in PSEUDO_FOLDERS if v in exp["variants"] or (v == "control" and exp["control_pseudo"])]


def figure_targets(name):
    """Curves and histograms of every table row with pseudo-GT; panels where the mined images are annotated."""
    exp = config["experiments"][name]
    if exp["targets"] != "table" or not _pseudo_variants(name):
        return []
    targets = [f"{RESULTS}/{name}/figures/ar_curves.png", f"{RESULTS}/{name}/figures/candidate_histograms.png"]
    # panels draw the PA network's potential: none with the authors' pseudo-GT
    if "ggn" in exp["variants"] and uses_pa(name) and "pseudo_data" not in config["experiments"][mining_source(name)]:
        targets.append(f"{RESULTS}/{name}/figures/panels")
    return targets


def _source_shards(name, variant, seed=None):
    """The extraction shards of a row's pseudo-GT variant: of one seed, or of every seed (each folder once)."""
    source = mining_source(name)
    dirs = [pseudo_dir(source, variant, seed)] if seed is not None else pseudo_dirs(source, variant)
    return [path for d in dirs for path in _shards(source, d)]


def plot_inputs(wildcards):
    seeds = seeds_of(wildcards.exp)
    inputs = {v: [metrics_file(wildcards.exp, s, v) for s in seeds] for v in exp_variants(wildcards)}
    for v in _pseudo_variants(wildcards.exp):
        inputs[f"{v}_shards"] = _source_shards(wildcards.exp, v)
    return inputs


def _named_flags(groups):
    """NAME=FIRST REST ... tokens for `ggn plot`'s --metrics and --shards."""
    tokens = []
    for name, (first, *rest) in groups:
        tokens += [f"{name}={first}", *rest]
    return " ".join(map(shlex.quote, tokens))


def plot_metric_flags(wildcards, input):
    return _named_flags((v, list(input[v])) for v in exp_variants(wildcards))


def plot_shard_flags(wildcards, input):
    return _named_flags((v, list(input[f"{v}_shards"])) for v in _pseudo_variants(wildcards.exp))


def visualize_inputs(wildcards):
    """The panels show the first seed's networks and pseudo-GT (the table holds every seed's numbers)."""
    source = mining_source(wildcards.exp)
    mined = types.SimpleNamespace(exp=source)
    seed = seeds_of(wildcards.exp)[0]
    inputs = {
        "mined": _pseudo_images_list(source),
        "full": train_source(mined),
        "shards": _source_shards(wildcards.exp, "ggn", seed),
        "pseudo": f"{RESULTS}/{source}/{pseudo_dir(source, 'ggn', seed)}/pseudo_gt.json",
        "checkpoint": pa_checkpoint_file(source, seed),
        "eval": f"{RESULTS}/{wildcards.exp}/data/eval.json",
    }
    if "control" in _pseudo_variants(wildcards.exp):
        inputs["control_shards"] = _source_shards(wildcards.exp, "control", seed)
        inputs["control_pseudo"] = f"{RESULTS}/{source}/{pseudo_dir(source, 'control', seed)}/pseudo_gt.json"
    for v in exp_variants(wildcards):
        inputs[f"{v}_detections"] = detector_path(wildcards.exp, seed, v, "detections.json")
    return inputs


def visualize_flags(wildcards, input):
    source = mining_source(wildcards.exp)
    mined = types.SimpleNamespace(exp=source)
    options = {
        "images": train_images(mined), "mined": input.mined, "full_annotations": input.full,
        "seen": config["experiments"][source]["seen"], "shards": list(input.shards), "pseudo_gt": input.pseudo,
        "checkpoint": input.checkpoint, "input_size": config["experiments"][source]["extract"]["input_size"],
        "eval": input.eval, "eval_images": eval_images(wildcards), "num_images": NUM_PANEL_IMAGES,
    }
    if "control_shards" in input.keys():
        options["control_shards"] = list(input.control_shards)
        options["control_pseudo_gt"] = input.control_pseudo
    options["detections"] = [f"{v}={input[f'{v}_detections']}" for v in exp_variants(wildcards)]
    return to_flags(options)


def _job_request(wildcards, rule_name):
    """The experiment's `resources` entry for a rule; for `table` (all experiments) the largest of each value."""
    if hasattr(wildcards, "exp"):
        return experiment(wildcards)["resources"][rule_name]
    entries = [config["experiments"][name]["resources"][rule_name] for name in EXPERIMENTS]
    return {key: max(entry[key] for entry in entries) for key in entries[0]}


def job_threads(rule_name):
    """Threads of a rule's jobs, from the experiment's `resources` block (schema defaults are paper scale)."""

    def threads(wildcards):
        return _job_request(wildcards, rule_name)["threads"]

    return threads


def job_resource(rule_name, key):
    """Memory (`mem_mb`, MB) or `runtime` (minutes) of a rule's jobs, from the experiment's `resources` block;
    a profile's set-resources still overrides it."""

    def value(wildcards):
        return _job_request(wildcards, rule_name)[key]

    return value


def loaders_per_process(threads, gpus):
    """Data-loading processes per training process: the job's cores shared by its `gpus` processes, one core
    each kept for the process itself (a config's `workers` overrides it)."""
    return max(1, int(threads) // max(1, int(gpus)) - 1)
