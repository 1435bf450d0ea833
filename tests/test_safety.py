"""Safety: config values reach shell commands quoted (spaces, quotes and `;` in a class name and in data and results
paths), checkpoints load with weights_only=True, YAML with safe_load, and no eval/exec anywhere in the code."""
from __future__ import annotations

import ast
import json
import shlex
from pathlib import Path

import pytest
import yaml

from test_own_data import labelme_export
from test_workflow import REPO, snakemake, tiny_config

# Each would create a file named PWNED_* if a shell ever ran the part after the `;`.
DATA = """my data 'q' "dq" ; touch PWNED_data"""
RESULTS = """res 'r' "s" ; touch PWNED_results"""
CLASS = """cat's "big" ; touch PWNED_class"""


def _hostile_config(root: Path) -> tuple[Path, Path]:
    """A labelme-shaped own-data experiment under DATA, its class `cat` renamed to CLASS and seen, plus the synthetic
    experiment; results under RESULTS. Returns (config file, results folder)."""
    data = root / DATA
    files = {split: labelme_export(data / split, n, seed=seed) for split, n, seed in (("train", 6, 1), ("val", 4, 2))}
    for path in files.values():
        coco = json.loads(path.read_text())
        for category in coco["categories"]:
            if category["name"] == "cat":
                category["name"] = CLASS
        path.write_text(json.dumps(coco))
    results = root / RESULTS
    config = tiny_config(results)
    mine = json.loads(json.dumps(config["experiments"]["tiny"]))
    del mine["synthetic"], mine["unseen"]
    mine.update(seen=f"{CLASS},dog", data={"train_annotations": str(files["train"]), "train_images": str(data / "train"),
                                           "eval_annotations": str(files["val"]), "eval_images": str(data / "val")})
    config["experiments"]["mine"] = mine
    cfg = root / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    return cfg, results


def _no_injection(root: Path) -> None:
    ran = [str(p) for p in [*root.rglob("PWNED_*"), *REPO.glob("PWNED_*"), *Path.cwd().glob("PWNED_*")]]
    assert not ran, f"an injected command ran: {ran}"


def test_every_shell_command_quotes_class_names_and_paths(tmp_path):
    """Dry run with -p: every command of the whole DAG splits (as a shell would) into words where the hostile paths
    and class name are single, whole arguments, and no `touch` is ever a command word."""
    cfg, results = _hostile_config(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    out = snakemake("-n", "-p", "--forceall", "--configfile", str(cfg), cwd=work)
    commands = [line.removeprefix("Shell command: ") for line in out.splitlines() if line.startswith("Shell command: ggn")
                or line.startswith("Shell command: OMP_NUM_THREADS")]
    rules = {line.split()[1].rstrip(":") for line in out.splitlines() if line.startswith("rule ")}
    assert {"split", "synth", "train_pa", "extract", "merge", "train_detector", "predict", "evaluate", "row", "table",
            "plots", "visualize", "eval_pseudo"} <= rules, rules
    assert len(commands) >= len(rules) - 1, out  # every job but `all` has one
    seen_args, data_args, results_args = 0, 0, 0
    for command in commands:
        words = shlex.split(command)
        assert "touch" not in words and ";" not in words, f"unquoted config value in: {command}"
        for flag, value in zip(words, words[1:]):
            if flag == "--seen" and value != "synthetic_seen":
                assert value == f"{CLASS},dog", command
                seen_args += 1
        data_args += sum(w.startswith(str(tmp_path / DATA)) for w in words)
        results_args += sum(str(results) in w for w in words)
    assert seen_args >= 2 and data_args >= 5 and results_args >= 20, (seen_args, data_args, results_args)
    _no_injection(tmp_path)


@pytest.mark.slow
def test_synth_and_split_run_through_hostile_paths_and_class_name(tmp_path):
    """The real commands: the synthetic data is generated under RESULTS, and the own data under DATA is split with
    CLASS as a seen class (its objects become the training set); nothing after a `;` runs."""
    cfg, results = _hostile_config(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    targets = [f"{results}/{exp}/data/{name}.json" for exp in ("mine", "tiny") for name in ("train", "eval")]
    snakemake("--cores", "2", *targets, "--configfile", str(cfg), cwd=work)
    source = json.loads((tmp_path / DATA / "train" / "annotations.json").read_text())
    cat = next(c["id"] for c in source["categories"] if c["name"] == CLASS)
    seen_objects = sum(a["category_id"] in (cat, 2) for a in source["annotations"])
    train = json.loads((results / "mine" / "data" / "train.json").read_text())
    assert len(train["annotations"]) == seen_objects > 0  # the quoted class name matched its objects
    evaluation = json.loads((results / "mine" / "data" / "eval.json").read_text())
    assert {a["ignored_split"] for a in evaluation["annotations"]} == {0, 1}
    synthetic = json.loads((results / "tiny" / "synthetic" / "annotations" / "instances_train.json").read_text())
    assert len(synthetic["images"]) == 12
    assert (results / "tiny" / "data" / "train.json").is_file()
    _no_injection(tmp_path)


# ---- a scan of the code: safe loaders only ----

CODE = sorted([*(REPO / "ggn").rglob("*.py"), *(REPO / "pa_lib").rglob("*.py"), *(REPO / "bench").rglob("*.py"),
               *(REPO / "workflow").rglob("*.smk"), REPO / "workflow" / "Snakefile", REPO / "setup.py"])


def _calls(path: Path):
    """(dotted name, call node) of every call in a Python file; .smk files are scanned as text (not Python)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func, parts = node.func, []
            while isinstance(func, ast.Attribute):
                parts.append(func.attr)
                func = func.value
            parts.append(func.id if isinstance(func, ast.Name) else "<expr>")  # model.eval() is no eval
            yield ".".join(reversed(parts)), node


def test_code_loads_checkpoints_weights_only_and_yaml_safely_and_never_evals():
    assert len(CODE) > 30
    problems, torch_loads = [], 0
    for path in CODE:
        where = path.relative_to(REPO)
        if path.suffix == ".py":
            for name, node in _calls(path):
                at = f"{where}:{node.lineno}"
                if name == "torch.load":
                    torch_loads += 1
                    kw = {k.arg: k.value for k in node.keywords}
                    if not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True):
                        problems.append(f"{at}: torch.load without weights_only=True")
                elif name in ("yaml.load", "yaml.load_all", "yaml.unsafe_load", "yaml.full_load", "yaml.full_load_all",
                              "yaml.unsafe_load_all"):
                    problems.append(f"{at}: {name} (use yaml.safe_load)")
                elif name in ("eval", "exec", "compile", "__import__", "pickle.load", "pickle.loads",
                              "marshal.loads", "dill.load"):
                    problems.append(f"{at}: {name}")
                elif name.endswith("np.load") or name == "numpy.load":
                    kw = {k.arg: k.value for k in node.keywords}
                    if isinstance(kw.get("allow_pickle"), ast.Constant) and kw["allow_pickle"].value:
                        problems.append(f"{at}: np.load(allow_pickle=True)")
                elif name.startswith("subprocess.") and any(k.arg == "shell" for k in node.keywords):
                    problems.append(f"{at}: {name}(shell=...)")
        else:
            text = path.read_text()
            for bad in ("torch.load(", "yaml.load(", "eval(", "exec(", "pickle."):
                if bad in text:
                    problems.append(f"{where}: {bad}")
    assert not problems, "\n".join(problems)
    assert torch_loads >= 1  # the one loader (ggn.io.load_checkpoint) was seen: the scan is not vacuous


def test_the_checkpoint_loader_refuses_pickled_code(tmp_path):
    """weights_only=True in practice: a checkpoint holding an object whose unpickling would run code is refused, and
    the code does not run."""
    import torch

    from ggn.io import InputError, load_checkpoint

    marker = tmp_path / "PWNED_pickle"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": {}, "x": Payload()}, path)
    with pytest.raises(InputError, match="weights_only=True"):
        load_checkpoint(path)
    assert not marker.exists()
