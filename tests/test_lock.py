"""requirements.lock against pyproject.toml: every dependency (and the `test` extra) locked with `==` at a version
inside its range, each line with sha256 hashes, torch/torchvision at their exact pins. No network, no install."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
LOCK = ROOT / "requirements.lock"
EXTRAS = ("test",)  # the extras that the lock holds besides the runtime dependencies
EXACT = ("torch", "torchvision")  # must be locked at exactly the version pyproject.toml pins with ==

HASH = re.compile(r"sha256:[0-9a-f]{64}")
# The platform the lock is made for (`make lock` on Linux x86-64, CPython 3.11): where a dependency carries an
# environment marker, it is evaluated there.
LOCK_ENV = {**default_environment(), "sys_platform": "linux", "platform_system": "Linux",
            "platform_machine": "x86_64", "os_name": "posix", "implementation_name": "cpython",
            "platform_python_implementation": "CPython", "python_version": "3.11", "python_full_version": "3.11.0",
            "extra": ""}


def lock_lines(text: str) -> list[tuple[int, str]]:
    """The logical lines of a pip requirements file (continuations joined, comments dropped), each with the number
    of its first physical line."""
    out, parts, first = [], [], None
    for number, raw in enumerate(text.splitlines(), 1):
        line = re.sub(r"(^|\s)#.*$", "", raw).rstrip()
        if first is None:
            first = number
        continued = line.endswith("\\")
        parts.append(line[:-1] if continued else line)
        if not continued:
            joined = " ".join(p.strip() for p in parts).strip()
            if joined:
                out.append((first, joined))
            parts, first = [], None
    return out


def parse_lock(text: str) -> tuple[dict[str, tuple[Version, int]], list[str]]:
    """name -> (locked version, line number), and the problems found with any line (unpinned, unhashed,
    an option or an editable, something pip cannot read, a package twice)."""
    pins: dict[str, tuple[Version, int]] = {}
    problems = []
    for number, line in lock_lines(text):
        hashes = re.findall(r"(?:^|\s)--hash[= ](\S+)", line)
        req_text = re.sub(r"(?:^|\s)--hash[= ]\S+", "", line).strip()
        where = f"line {number}"
        if req_text.startswith("-"):
            problems.append(f"{where}: {req_text!r} is an option or an editable, which hash-checking mode refuses")
            continue
        try:
            req = Requirement(req_text)
        except InvalidRequirement as e:
            problems.append(f"{where}: cannot read {req_text!r}: {e}")
            continue
        name = canonicalize_name(req.name)
        specs = list(req.specifier)
        if len(specs) != 1 or specs[0].operator != "==" or "*" in specs[0].version or req.url:
            problems.append(f"{where}: {name} is not pinned with a single exact '==' version: {req_text!r}")
            continue
        if not hashes:
            problems.append(f"{where}: {name}=={specs[0].version} has no --hash=sha256:...")
        bad = [h for h in hashes if not HASH.fullmatch(h)]
        if bad:
            problems.append(f"{where}: {name} has hashes that are not sha256 of 64 hex digits: {bad}")
        if name in pins:
            problems.append(f"{where}: {name} is locked twice (also line {pins[name][1]})")
        pins[name] = (Version(specs[0].version), number)
    return pins, problems


def check_lock(pyproject_path: Path, lock_path: Path, extras=EXTRAS, exact=EXACT) -> list[str]:
    """Every problem that keeps the lock at lock_path from satisfying pyproject_path; empty when it does."""
    project = tomllib.loads(pyproject_path.read_text())["project"]
    pins, problems = parse_lock(lock_path.read_text())
    wanted = [("dependencies", d) for d in project["dependencies"]]
    for extra in extras:
        wanted += [(f"extra {extra!r}", d) for d in project.get("optional-dependencies", {}).get(extra, [])]
    for source, dep in wanted:
        req = Requirement(dep)
        if req.marker is not None and not req.marker.evaluate(LOCK_ENV):
            continue
        name = canonicalize_name(req.name)
        if name not in pins:
            problems.append(f"{name} ({source}: {dep!r}) is not in the lock")
            continue
        version = pins[name][0]
        if not req.specifier.contains(version, prereleases=True):
            problems.append(f"{name}=={version} in the lock is outside pyproject.toml's {dep!r}")
        if name in exact:
            specs = list(req.specifier)
            if len(specs) != 1 or specs[0].operator != "==":
                problems.append(f"{name} must be pinned with one exact == in pyproject.toml, not {dep!r}")
            elif str(version) != specs[0].version:
                problems.append(f"{name} is locked at {version}, not at exactly {specs[0].version}")
    for name in exact:
        if canonicalize_name(name) not in {canonicalize_name(Requirement(d).name) for _, d in wanted}:
            problems.append(f"{name} is not a dependency in pyproject.toml")
    return problems


def test_lock_satisfies_pyproject():
    assert LOCK.is_file(), "requirements.lock is missing: make lock"
    assert check_lock(PYPROJECT, LOCK) == []


def test_lock_holds_the_cuda_libraries_of_torch():
    """The CUDA build of torch pulls nvidia-* packages: hash-checking mode needs them in the lock too."""
    pins, _ = parse_lock(LOCK.read_text())
    assert any(name.startswith("nvidia-") for name in pins)


def test_conda_files_install_from_the_lock():
    """environment.yml and workflow/envs/ggn.yaml point pip at this lock (relative to themselves)."""
    for env_file in (ROOT / "environment.yml", ROOT / "workflow" / "envs" / "ggn.yaml"):
        deps = yaml.safe_load(env_file.read_text())["dependencies"]
        pip_args = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
        locks = [a.split(None, 1)[1] for a in pip_args if a.startswith("-r ")]
        assert locks, f"{env_file.name} installs nothing from a lock"
        assert all((env_file.parent / p).resolve() == LOCK for p in locks), (env_file, locks)


def test_makefile_torch_pins_match_pyproject():
    """`make install TORCH_INDEX=...` installs these versions from another index; they must be pyproject's."""
    makefile = (ROOT / "Makefile").read_text()
    pins = re.search(r"^TORCH_PINS\s*:?=\s*(.+)$", makefile, re.M).group(1).split()
    deps = {canonicalize_name(Requirement(d).name): d for d in tomllib.loads(PYPROJECT.read_text())["project"]
            ["dependencies"]}
    assert sorted(pins) == sorted(deps[canonicalize_name(name)].replace(" ", "") for name in EXACT)


PYPROJECT_TOY = """
[project]
name = "toy"
version = "0"
dependencies = ["torch==2.14.1", "numpy>=1.26", "pyyaml>=6", "ijson>=3.2", "scipy>=1.11; python_version < '3'"]
[project.optional-dependencies]
test = ["pytest>=8"]
"""
H = "    --hash=sha256:" + "ab" * 32


@pytest.mark.parametrize("lock_text, expected", [
    (f"torch==2.14.1 \\\n{H}\nnumpy==2.0 \\\n{H}\npyyaml==6.0 \\\n{H}\nijson==3.3 \\\n{H}\npytest==8.1 \\\n{H}\n",
     []),
    (f"torch==2.14.1 \\\n{H}\nnumpy==1.20 \\\n{H}\npyyaml==6.0 \\\n{H}\nijson==3.3 \\\n{H}\npytest==8.1 \\\n{H}\n",
     ["numpy==1.20 in the lock is outside"]),
    (f"torch==2.14.1 \\\n{H}\nnumpy==2.0\npyyaml==6.0 \\\n{H}\nijson==3.3 \\\n{H}\npytest==8.1 \\\n{H}\n",
     ["line 3: numpy==2.0 has no --hash"]),
    (f"torch==2.14.1 \\\n{H}\nnumpy>=2.0 \\\n{H}\npyyaml==6.0 \\\n{H}\nijson==3.3 \\\n{H}\npytest==8.1 \\\n{H}\n",
     ["numpy is not pinned", "numpy (dependencies: 'numpy>=1.26') is not in the lock"]),
    (f"torch==2.14.0 \\\n{H}\nnumpy==2.0 \\\n{H}\npyyaml==6.0 \\\n{H}\nijson==3.3 \\\n{H}\npytest==8.1 \\\n{H}\n",
     ["torch==2.14.0 in the lock is outside", "torch is locked at 2.14.0, not at exactly 2.14.1"]),
    (f"torch==2.14.1 \\\n{H}\nnumpy==2.0 \\\n{H}\npyyaml==6.0 \\\n{H}\nijson==3.3 \\\n{H}\n-e .\n",
     ["'-e .' is an option or an editable", "pytest (extra 'test': 'pytest>=8') is not in the lock"]),
    (f"torch==2.14.1 \\\n{H}\nnumpy==2.0 \\\n    --hash=sha256:abc\npyyaml==6.0 \\\n{H}\nijson==3.3 \\\n{H}\n"
     f"PyTest==8.1 \\\n{H}\npytest==8.2 \\\n{H}\n",
     ["numpy has hashes that are not sha256", "pytest is locked twice (also line 9)"]),
], ids=["good", "out-of-range", "no-hash", "unpinned", "torch-pin", "editable-and-missing", "bad-hash-and-twice"])
def test_check_reports_a_broken_lock(tmp_path, lock_text, expected):
    (tmp_path / "pyproject.toml").write_text(PYPROJECT_TOY)
    (tmp_path / "requirements.lock").write_text(lock_text)
    problems = check_lock(tmp_path / "pyproject.toml", tmp_path / "requirements.lock", exact=("torch",))
    assert len(problems) == len(expected), problems
    for want, got in zip(expected, problems):
        assert want in got, problems


def test_check_reports_a_broken_copy_of_the_real_lock(tmp_path):
    """The real lock with numpy moved below its range, pytest dropped and torch's hashes cut off."""
    text = LOCK.read_text()
    text = re.sub(r"^numpy==\S+", "numpy==1.20.0", text, flags=re.M)
    text = re.sub(r"^pytest==.*?(?=^\S)", "", text, flags=re.M | re.S)
    text = re.sub(r"^(torch==\S+) \\\n(?:    --hash=\S+(?: \\)?\n)+", r"\1\n", text, flags=re.M)
    (tmp_path / "requirements.lock").write_text(text)
    problems = check_lock(PYPROJECT, tmp_path / "requirements.lock")
    assert any("numpy==1.20.0 in the lock is outside" in p for p in problems), problems
    assert any(p.startswith("pytest (extra 'test'") for p in problems), problems
    assert any("torch==2.14.1 has no --hash" in p for p in problems), problems
    assert len(problems) == 3, problems
