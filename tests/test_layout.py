"""The package layout's import boundaries, checked on the source (AST walk, no imports, no services):

(a) the runtime package ``workers`` imports none of ``training``, ``views``, ``devtools`` (nor the pre-layout
    names ``bench``, ``reliability``, ``localservices``, ``enrich``): the image has only ``workers``;
(b) ``training`` reaches into ``workers`` only through ``workers.model`` and ``workers.contract``;
(c) no import cycles between the modules of the installed packages (module-level imports; imports inside
    functions and ``if TYPE_CHECKING:`` blocks do not run at import time and are left out of this rule only);
(d) pyproject.toml installs exactly the four top-level packages.

Each checker takes the repository root, so the tests at the bottom prove on a synthetic tree that every rule
can fail and that its message names the file, line and import.
"""

from __future__ import annotations

import ast
import itertools
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("workers", "training", "views", "devtools")
FORBIDDEN_IN_WORKERS = ("training", "views", "devtools", "bench", "reliability", "localservices", "enrich")
TRAINING_MAY_USE = ("workers.model", "workers.contract")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    path: str  # its file, relative to the root
    line: int
    target: str  # absolute dotted name: a module, or a package/module an attribute is taken from
    statement: str  # the source text, for messages
    deferred: bool  # inside a function body or an `if TYPE_CHECKING:` block: not run at import time

    def where(self) -> str:
        return f"{self.path}:{self.line}: {self.statement}"


def _modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the four packages under root."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            parts = path.relative_to(root).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST, deferred: bool = False) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child, deferred
        elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            yield from _walk(child, True)
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for statement in child.body:
                yield from _walk(ast.Module(body=[statement], type_ignores=[]), True)
            for statement in child.orelse:
                yield from _walk(ast.Module(body=[statement], type_ignores=[]), deferred)
        else:
            yield from _walk(child, deferred)


def imports(root: Path) -> list[Import]:
    """Every import statement of the four packages, with relative imports made absolute and
    ``from package import module`` resolved to the module."""
    modules = _modules(root)
    found = []
    for module, path in modules.items():
        source = path.read_text()
        is_package = path.name == "__init__.py"
        for node, deferred in _walk(ast.parse(source, filename=str(path))):
            statement = ast.get_source_segment(source, node) or ast.dump(node)
            statement = " ".join(statement.split())
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    package = module.split(".") if is_package else module.split(".")[:-1]
                    package = package[: len(package) - (node.level - 1)]
                    base = ".".join([*package, *([node.module] if node.module else [])])
                submodules = [f"{base}.{alias.name}" for alias in node.names]
                targets = [name if name in modules else base for name in submodules]
            rel = path.relative_to(root).as_posix()
            found += [Import(module, rel, node.lineno, target, statement, deferred) for target in targets]
    return found


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def workers_isolation_violations(root: Path) -> list[str]:
    """Rule (a): any import (deferred ones too) of a dev package or a removed name from workers/."""
    return [
        f"{imp.where()}  -- workers/ must not import {imp.target.split('.')[0]!r}"
        for imp in imports(root)
        if _within(imp.module, "workers") and imp.target.split(".")[0] in FORBIDDEN_IN_WORKERS
    ]


def training_reach_violations(root: Path) -> list[str]:
    """Rule (b): training/ may import workers.model and workers.contract only (deferred imports too)."""
    return [
        f"{imp.where()}  -- training/ may import only {' and '.join(TRAINING_MAY_USE)} from workers"
        for imp in imports(root)
        if _within(imp.module, "training")
        and _within(imp.target, "workers")
        and not any(_within(imp.target, allowed) for allowed in TRAINING_MAY_USE)
    ]


def import_cycles(root: Path) -> list[str]:
    """Rule (c): cycles in the graph of module-level imports between modules of the four packages; one
    message per strongly connected component, listing a cycle through it with each import's file and line."""
    modules = _modules(root)
    edges: dict[str, dict[str, Import]] = {module: {} for module in modules}
    for imp in imports(root):
        if imp.deferred:
            continue
        target = imp.target
        while target and target not in modules:  # `import a.b.c` of a non-module attribute: nearest module
            target = target.rpartition(".")[0]
        if target:
            edges[imp.module].setdefault(target, imp)

    # Tarjan's strongly connected components (iterative: deep packages must not hit the recursion limit).
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for start in sorted(modules):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in edges[node]:
                    components.append(sorted(component))

    messages = []
    for component in components:
        members = set(component)
        cycle, seen = [component[0]], {component[0]}
        while True:  # walk inside the component until a module repeats: that closes a cycle
            nxt = next(t for t in sorted(edges[cycle[-1]]) if t in members)
            if nxt in seen:
                cycle = [*cycle[cycle.index(nxt):], nxt]
                break
            cycle.append(nxt)
            seen.add(nxt)
        steps = "; ".join(edges[a][b].where() for a, b in itertools.pairwise(cycle))
        messages.append(f"import cycle {' -> '.join(cycle)} (cycle group: {component}): {steps}")
    return messages


def installed_top_levels(root: Path) -> set[str]:
    """Rule (d): the top-level packages pyproject's [tool.setuptools.packages.find] installs."""
    from setuptools import find_packages

    find = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    found = find_packages(where=str(root / find.get("where", ["."])[0]), include=find.get("include", ("*",)),
                          exclude=find.get("exclude", ()))  # fmt: skip
    return {package.split(".")[0] for package in found}


# ---- the repository ----------------------------------------------------------------------------------------


def test_the_walk_sees_the_whole_tree() -> None:
    found = imports(ROOT)
    assert {imp.module.split(".")[0] for imp in found} == set(PACKAGES)
    assert any(imp.deferred for imp in found) and any(not imp.deferred for imp in found)
    assert len(_modules(ROOT)) > 60


def test_workers_imports_no_dev_package() -> None:
    violations = workers_isolation_violations(ROOT)
    assert not violations, "\n".join(violations)


def test_training_uses_only_the_model_and_contract_of_workers() -> None:
    violations = training_reach_violations(ROOT)
    assert not violations, "\n".join(violations)


def test_no_import_cycles() -> None:
    cycles = import_cycles(ROOT)
    assert not cycles, "\n".join(cycles)


def test_pyproject_installs_the_four_packages() -> None:
    assert installed_top_levels(ROOT) == set(PACKAGES)


# ---- each rule can fail ------------------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A tiny repository that obeys every rule; tests add one violation each."""
    files = {
        "pyproject.toml": '[tool.setuptools.packages.find]\ninclude = ["workers*", "training*", "views*", '
        '"devtools*"]\n',
        "workers/__init__.py": "",
        "workers/model/__init__.py": "from workers.model import encode\n",
        "workers/model/encode.py": "import numpy\n",
        "workers/runtime/__init__.py": "",
        "workers/runtime/worker.py": "from ..model import encode\n",
        "training/__init__.py": "",
        "training/train.py": "from workers.model.encode import x\nfrom typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from training import evaluate\n",
        "training/evaluate.py": "from training import train\n",
        "views/__init__.py": "",
        "devtools/__init__.py": "from workers.runtime import worker\n",
        "tests/__init__.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_the_synthetic_tree_obeys_every_rule(tree: Path) -> None:
    assert workers_isolation_violations(tree) == []
    assert training_reach_violations(tree) == []
    assert import_cycles(tree) == []  # train -> evaluate only under TYPE_CHECKING
    assert installed_top_levels(tree) == set(PACKAGES)


@pytest.mark.parametrize("statement", [
    "import training.build", "from devtools.fixtures import X", "from views import app",
    "import bench", "from localservices.stack import LocalStack", "from enrich.cli import main",
])  # fmt: skip
def test_rule_a_fails_on_a_dev_import_in_workers(tree: Path, statement: str) -> None:
    (tree / "workers/runtime/worker.py").write_text(f"import os\n\ndef run():\n    {statement}\n")
    [violation] = workers_isolation_violations(tree)
    assert violation.startswith(f"workers/runtime/worker.py:4: {statement}")


@pytest.mark.parametrize("statement", [
    "from workers.runtime import worker", "import workers.runtime.worker", "from workers import runtime",
    "import workers",
])  # fmt: skip
def test_rule_b_fails_on_training_reaching_past_model_and_contract(tree: Path, statement: str) -> None:
    (tree / "training/evaluate.py").write_text(f"from workers.contract import y\n{statement}\n")
    [violation] = training_reach_violations(tree)
    assert violation.startswith(f"training/evaluate.py:2: {statement}")


def test_rule_c_fails_on_a_module_level_cycle_and_names_each_import(tree: Path) -> None:
    (tree / "training/train.py").write_text("import os\nfrom training.evaluate import score\n")
    [cycle] = import_cycles(tree)
    assert "training.evaluate -> training.train -> training.evaluate" in cycle
    assert "training/train.py:2: from training.evaluate import score" in cycle
    assert "training/evaluate.py:1: from training import train" in cycle


def test_rule_c_sees_relative_imports_and_ignores_function_level_ones(tree: Path) -> None:
    (tree / "workers/model/encode.py").write_text("def f():\n    from ..runtime import worker\n")
    assert import_cycles(tree) == []
    (tree / "workers/model/encode.py").write_text("from ..runtime import worker\n")
    [cycle] = import_cycles(tree)
    assert "workers/model/encode.py:1: from ..runtime import worker" in cycle
    assert "workers/runtime/worker.py:1: from ..model import encode" in cycle


def test_rule_d_fails_when_another_top_level_package_is_installed(tree: Path) -> None:
    pyproject = tree / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"devtools*"', '"devtools*", "tests*"'))
    assert installed_top_levels(tree) == {*PACKAGES, "tests"}
