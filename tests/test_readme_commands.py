"""Every shell command in the README's fenced `bash` blocks runs as written, as far as it can run here: `make`
targets as `make -n -B` (what they would do), `snakemake` as a dry run, `ggn check-resources` against recorded-format
`sinfo` output, `ggn check-config`, `python -c` and `make slurm-profile` for real. They run in a folder laid out as a user's clone
(config/, profiles/, workflow/ of this checkout; datasets/coco a generated COCO-layout tree; the Slurm profile
installed by name in a temporary $XDG_CONFIG_HOME). A command this test does not know fails it, so a new README
command is either checked here or skipped with its reason."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from test_paper_row import make_fake_coco
from test_workflow import BIN, REPO

README = REPO / "README.md"

# Commands that cannot run in a test, and why.
SKIP = {
    "git clone": "clones the repository the test runs from",
    ".": "activates the venv (the test runs with the venv's tools on PATH)",
    "tmux": "opens a terminal session",
    "mkdir -p datasets && ln -s /data/coco datasets/coco": "links a real COCO; the test generates datasets/coco",
}
SINFO = "cpu*|64|512000|infinite|(null)|c001\ngpu|64|512000|7-00:00:00|gpu:a100:8|g001\n"


def readme_commands(text: str) -> list[str]:
    """The commands of the fenced bash blocks: comments dropped, continuation lines joined."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def test_readme_blocks_are_found():
    commands = readme_commands(README.read_text())
    assert any(c.startswith("make demo") for c in commands) and any(c.startswith("snakemake") for c in commands)


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """A user's checkout: this repository's config, profiles and workflow, datasets/coco, a config home."""
    root = tmp_path_factory.mktemp("clone")
    for name in ("config", "profiles", "workflow"):
        (root / name).symlink_to(REPO / name)
    make_fake_coco(root / "datasets" / "coco")
    (root / "sinfo.txt").write_text(SINFO)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "XDG_CONFIG_HOME": str(root / "xdg"), "TORCH_HOME": str(root / "torch"), "PWD": str(root)}
    return root, env


def as_check(command: str, root: Path) -> tuple[list[str], Path] | None:
    """The argv (and working directory) that checks a README command here; None when it is skipped."""
    for prefix, _why in SKIP.items():
        if command == prefix or command.startswith(prefix + " "):
            return None
    if command.startswith("export TORCH_HOME=") and "&&" in command:
        command = command.split("&&", 1)[1].strip()  # the test sets TORCH_HOME itself
    argv = shlex.split(command)
    if argv[:2] == ["make", "slurm-profile"]:
        return ["make", "-s", "-C", str(REPO), "slurm-profile"], root
    if argv[0] == "make":
        return ["make", "-n", "-B", "-C", str(REPO), *argv[1:]], root
    if argv[0] == "snakemake":
        return [*argv, *([] if "-n" in argv else ["-n"])], root
    if argv[:2] == ["ggn", "check-resources"]:
        return ["ggn", "check-resources", "--sinfo", str(root / "sinfo.txt"), *argv[2:]], root
    if argv[:2] == ["ggn", "check-config"]:
        return argv, root
    if argv[0] == "python" and argv[1] == "-c":
        return argv, root
    pytest.fail(f"README command not known to this test: {command!r}; check it here or add it to SKIP with a reason")


@pytest.mark.slow  # two dry runs of a paper row (about 40 s; 2 minutes on a busy 2-core machine)
def test_every_readme_command_runs_as_written(clone):
    root, env = clone
    commands = readme_commands(README.read_text())
    checks = {}
    for command in commands:
        check = as_check(command, root)
        if check:
            checks.setdefault(tuple(check[0]), command)  # the same check once
    # make slurm-profile first: later commands use the profile by name
    ordered = sorted(checks.items(), key=lambda item: "slurm-profile" not in item[0])
    for argv, command in ordered:
        proc = subprocess.run(list(argv), cwd=root, env=env, capture_output=True, text=True, timeout=600)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"README command {command!r} (checked as {' '.join(argv)}) failed:\n{out[-4000:]}"
        if argv[0] == "snakemake":
            assert "This was a dry-run" in out or "Nothing to be done" in out, out[-2000:]
        if "TORCH=cpu" in argv:
            assert "--index-url https://download.pytorch.org/whl/cpu" in out, out  # the CPU build is what gets installed
        if "TORCH_INDEX=https://download.pytorch.org/whl/cu126" in argv:
            assert "--index-url https://download.pytorch.org/whl/cu126" in out, out
        if argv[:2] == ("ggn", "check-resources"):
            assert "every job fits a node of its partition" in out, out
    assert any(a[0] == "snakemake" for a in checks) and any(a[:2] == ("ggn", "check-resources") for a in checks)


def test_readme_names_the_ci_command_and_ci_runs_it():
    assert "make test-all" in README.read_text()
    assert re.search(r"^make test-all$", (REPO / ".ci" / "run").read_text(), re.M)
