"""The worker image (deploy/Dockerfile): it copies only the runtime package, installs it from pyproject.toml
alone, and that install provides every import of workers/ without the training or dev dependencies."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


IMAGE_SOURCES = {"pyproject.toml", "README.md", "workers"}


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "deploy" / "Dockerfile").read_text())
    instructions = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, arguments = line.strip().partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def _copied_sources() -> set[str]:
    sources = set()
    for keyword, arguments in _dockerfile_instructions():
        if keyword in ("COPY", "ADD"):
            words = [word for word in arguments.split() if not word.startswith("--")]
            sources |= {word.rstrip("/").removeprefix("./") for word in words[:-1]}
    return sources


def _normalize(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def _base_distributions() -> set[str]:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {_normalize(re.split(r"[\[<>=!~;\s]", requirement)[0]) for requirement in dependencies}


def _base_import_names() -> set[str]:
    """Top-level modules that the base dependencies provide (as installed here), plus their own names."""
    from importlib.metadata import packages_distributions

    base = _base_distributions()
    provided = {name for name, dists in packages_distributions().items()
                if any(_normalize(dist) in base for dist in dists)}  # fmt: skip
    return provided | {name.replace("-", "_") for name in base}


def _image_packages() -> list[str]:
    """What `pip install .` finds in the image's build context: pyproject's packages.find over the copied
    directories only."""
    from setuptools import find_packages

    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    found = find_packages(where=str(ROOT), include=find["include"], exclude=find.get("exclude", ()))
    return [package for package in found if package.split(".")[0] in _copied_sources()]


def test_worker_dockerfile_copies_existing_paths() -> None:
    for source in _copied_sources():
        assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which does not exist"


def test_worker_dockerfile_copies_only_the_runtime_package() -> None:
    """training/, views/, devtools/ (and tests, models, caches) never enter the image."""
    assert _copied_sources() == IMAGE_SOURCES


def test_worker_dockerignore_admits_exactly_what_the_dockerfile_copies() -> None:
    lines = [line.strip() for line in (ROOT / "deploy" / "Dockerfile.dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]  # fmt: skip
    assert lines[0] == "*", "the build context is an allow-list"
    assert {line[1:].rstrip("/") for line in lines if line.startswith("!")} == IMAGE_SOURCES


def test_worker_image_installs_from_pyproject_alone() -> None:
    """One non-editable `pip install .`: no hand-kept requirements file, no editable source tree."""
    runs = [arguments for keyword, arguments in _dockerfile_instructions() if keyword == "RUN"]
    installs = [command.strip() for run in runs for command in run.split("&&") if "pip install" in command]
    assert installs == ["pip install ."], installs
    assert not list((ROOT / "deploy").glob("*requirements*.txt")), "pyproject.toml is the one dependency list"
    assert ("ENTRYPOINT", '["enrich"]') in _dockerfile_instructions()
    assert any(keyword == "USER" and arguments != "root" for keyword, arguments in _dockerfile_instructions())


def test_worker_image_packages_are_workers_with_its_schemas() -> None:
    packages = _image_packages()
    assert {package.split(".")[0] for package in packages} == {"workers"}
    inits = (ROOT / "workers").rglob("__init__.py")
    on_disk = {".".join(init.parent.relative_to(ROOT).parts) for init in inits}
    assert set(packages) == on_disk, f"sub-packages left out of the image: {on_disk - set(packages)}"
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    for package, patterns in package_data.items():
        if package.split(".")[0] in _copied_sources():
            for pattern in patterns:
                matches = list((ROOT / package.replace(".", "/")).glob(pattern))
                assert matches, f"package data {package}: {pattern} matches nothing"
    assert "workers.contract" in package_data


def _workers_imports() -> set[str]:
    imported = set()
    for path in (ROOT / "workers").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module.split(".")[0])
    return imported


def test_worker_image_installs_every_third_party_import_of_workers() -> None:
    third_party = _workers_imports() - set(sys.stdlib_module_names) - {"workers", "__future__"}
    assert {"confluent_kafka", "onnxruntime", "tritonclient"} <= third_party, "the walk sees the sub-packages"
    missing = third_party - _base_import_names()
    assert not missing, f"imported by workers/ but not provided by pyproject's base dependencies: {missing}"


def test_worker_image_has_no_training_or_dev_dependencies() -> None:
    base = _base_distributions()
    for heavy in ("torch", "transformers", "matplotlib", "faust-streaming", "onnx", "scikit-learn", "pytest"):
        assert heavy not in base, f"{heavy} is a base dependency: it would enter the worker image"


def _worker_image_commands() -> set[str]:
    """The subcommands `enrich` has in the image: the runtime's own (entry points need training/ etc.)."""
    import argparse

    from workers import commands

    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers()
    commands.register(subparsers)
    return set(subparsers.choices)


_WITHOUT_TRAINING_DEPENDENCIES = """
import importlib, importlib.abc, pkgutil, sys

allowed = set(sys.argv[1].split(","))
blocked = {"torch", "transformers", "faust", "aiokafka", "onnx", "onnxscript", "sklearn", "matplotlib",
           "tqdm", "psutil", "huggingface_hub", "safetensors", "yaml", "pytest",
           "training", "views", "devtools"} - allowed

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r} (not in the worker image)", name=name)
        return None

sys.meta_path.insert(0, Block())
from workers.cli import build_parser
parser = build_parser()
commands = next(a for a in parser._actions if a.dest == "command").choices
assert set(commands) == {"worker", "tail", "dlq", "review", "predict", "replay", "rollout"}, sorted(commands)
import workers
modules = [info.name for info in pkgutil.walk_packages(workers.__path__, "workers.")]
for name in modules:
    importlib.import_module(name)
print(len(modules), "ok")
"""


def test_worker_cli_and_modules_import_without_training_dependencies() -> None:
    """What the image lacks (torch, transformers, Faust, training/, devtools/, ...) is never imported by
    `enrich worker` or any module of workers/."""
    import subprocess

    modules = len(list((ROOT / "workers").rglob("*.py"))) - 1  # all but workers/__init__.py itself
    allowed = ",".join(_base_import_names())
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_TRAINING_DEPENDENCIES, allowed],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0 and result.stdout.split() == [str(modules), "ok"], result.stderr[-3000:]
