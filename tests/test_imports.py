"""Imports go one way: every module of ``gnn_align/`` is parsed (``ast``, nothing is imported) and its
imports, relative ones resolved, are checked against the three rules of the layering of docs/design.md.

(a) nothing in ``gnn_align/`` imports the checkout's ``datasets``, ``train`` or ``benchmarks``;
(b) only the zoo's own users import ``gnn_align.zoo`` (:data:`ZOO_USERS`), so the core
    (:data:`CORE`) never does;
(c) no module below the top layer (``studies/``, ``training/``, ``cli/``) imports it, and the top
    layer's packages import each other only downwards (the command line uses the studies).

Every import counts, also those inside functions and under ``if TYPE_CHECKING``; imports made with
``importlib`` (the lazy names of ``gnn_align/__init__.py``) are not seen.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "gnn_align"

#: top-level names of the checkout that the library must never import
OUTSIDE = ("datasets", "train", "benchmarks")
#: the modules that may import gnn_align.zoo (a package name covers its submodules)
ZOO_USERS = ("gnn_align.zoo", "gnn_align.studies", "gnn_align.cli", "gnn_align.pretrained.__main__")
#: the core: none of these imports the zoo (nor anything above it)
CORE = ("gnn_align.errors", "gnn_align.spec", "gnn_align.trace", "gnn_align.permute", "gnn_align.graph",
        "gnn_align.ot", "gnn_align.archs", "gnn_align.testing", "gnn_align.io", "gnn_align.tasks", "gnn_align.nn",
        "gnn_align.metrics", "gnn_align.losses", "gnn_align.models", "gnn_align.partial", "gnn_align.baselines",
        "gnn_align.refine", "gnn_align.methods", "gnn_align.aligner", "gnn_align.memory", "gnn_align.api",
        "gnn_align.provenance")
#: the top layer, and for each of its packages the top-layer packages it may import (besides itself)
TOP = {"gnn_align.studies": (), "gnn_align.training": (),
       "gnn_align.cli": ("gnn_align.studies", "gnn_align.training")}


def _within(name: str, packages) -> bool:
    """Whether the module ``name`` is one of ``packages`` or inside one of them."""
    if isinstance(packages, str):
        packages = (packages,)
    return any(name == p or name.startswith(p + ".") for p in packages)


def imported_modules(module: str, source: str, is_package: bool = False) -> set:
    """The absolute names of what ``source`` (the code of ``module``) imports.

    ``from X import y`` counts as importing ``X`` and ``X.y`` (``y`` may be a submodule); relative
    imports are resolved against ``module``'s package (``module`` itself for an ``__init__``).
    """
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def violations(module: str, imports: set) -> list:
    """The rules (a), (b), (c) of this file that ``module`` importing ``imports`` breaks, one line each."""
    out = [f"(a) {module} imports {name} (outside the library)" for name in sorted(imports)
           if name.split(".")[0] in OUTSIDE]
    if not _within(module, ZOO_USERS):
        out += [f"(b) {module} imports {name} (only {', '.join(ZOO_USERS)} may)" for name in sorted(imports)
                if _within(name, "gnn_align.zoo")]
    own = next((p for p in TOP if _within(module, p)), None)
    allowed = (own, *TOP[own]) if own else ()
    out += [f"(c) {module} imports {name} (an upward import)" for name in sorted(imports)
            if _within(name, tuple(TOP)) and not _within(name, allowed)]
    return out


def library_modules() -> dict:
    """Module name -> (source, is_package) for every ``.py`` file under ``gnn_align/``."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_package else parts)] = (path.read_text(), is_package)
    return out


MODULES = library_modules()
IMPORTS = {name: imported_modules(name, src, pkg) for name, (src, pkg) in MODULES.items()}


def _broken(rule: str) -> list:
    return [v for name, imports in IMPORTS.items() for v in violations(name, imports) if v.startswith(rule)]


def test_the_library_imports_nothing_of_the_checkout():
    assert not _broken("(a)")


def test_only_the_zoos_users_import_the_zoo():
    assert not _broken("(b)")
    missing = [c for c in CORE if not any(_within(m, c) for m in MODULES)]
    assert not missing, f"core modules listed here but not in gnn_align/: {missing}"
    for core in CORE:
        users = sorted(m for m in MODULES if _within(m, core) and any(_within(i, "gnn_align.zoo") for i in IMPORTS[m]))
        assert not users, f"{core}: {users} import gnn_align.zoo"


def test_nothing_imports_upwards():
    assert not _broken("(c)")


def test_the_parser_sees_the_real_imports():
    """Positive controls on the real code: relative imports at every depth resolve to what they name."""
    assert "gnn_align.zoo.dataset" in IMPORTS["gnn_align.studies.bench"]  # from ..zoo.dataset import ModelZoo
    assert "gnn_align.tasks.task_loss" in IMPORTS["gnn_align.metrics"]  # from .tasks import task_loss
    assert "gnn_align.studies.report" in IMPORTS["gnn_align.cli.models"]  # inside a function
    assert "gnn_align.io" in IMPORTS["gnn_align.zoo.storage"]
    assert "gnn_align.errors" in IMPORTS["gnn_align.training.checkpoint"]
    assert "gnn_align.archs" in IMPORTS["gnn_align.cli.studies"]  # from .. import archs
    assert len(MODULES) > 50 and "gnn_align.zoo" in MODULES and "gnn_align" in MODULES


@pytest.mark.parametrize(("module", "source", "rule"), [
    ("gnn_align.spec", "import train\n", "(a)"),
    ("gnn_align.zoo.storage", "from datasets.build import build\n", "(a)"),
    ("gnn_align.metrics", "from .zoo.batched import task_loss\n", "(b)"),
    ("gnn_align.nn.probe", "def f():\n    from ..zoo import ModelZoo\n", "(b)"),
    ("gnn_align.training.checkpoint", "from ..zoo.storage import ZooError\n", "(b)"),
    ("gnn_align.baselines", "from ..studies.report import markdown_table\n", "(c)"),
    ("gnn_align.tasks", "import gnn_align.cli\n", "(c)"),
    ("gnn_align.api", "from gnn_align import training\n", "(c)"),
    ("gnn_align.studies.bench", "from ..cli.models import _aligner\n", "(c)"),
    ("gnn_align.training.runconfig", "from ..studies import bench\n", "(c)"),
])
def test_the_checker_reports_a_violation(module, source, rule):
    """Negative controls: each synthetic source breaks one rule, and the checker says which."""
    found = violations(module, imported_modules(module, source, module in ("gnn_align.baselines",)))
    assert found and {v[:3] for v in found} == {rule}, found


@pytest.mark.parametrize(("module", "source"), [
    ("gnn_align.studies.bench", "from ..zoo.dataset import ModelZoo\nfrom .report import write_report\n"),
    ("gnn_align.cli.studies", "from ..studies.bench import run_benchmark\nfrom ..io import DEFAULT_ZOO_ROOT\n"),
    ("gnn_align.pretrained.__main__", "from ..zoo import ModelZoo\n"),
    ("gnn_align.metrics", "from .tasks import task_loss\nimport torch.utils.data\n"),
])
def test_the_checker_accepts_the_allowed_imports(module, source):
    assert violations(module, imported_modules(module, source)) == []
