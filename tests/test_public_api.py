"""The public API is a boundary: plugins use only it, the core knows no plugin by name.

Public means: the names in ``selfsup_core.__all__``, the contract suite
``selfsup_core.testing`` and the benchmark helpers ``selfsup_core.bench``.
"""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import selfsup_core

ROOT = Path(__file__).parents[1]
PUBLIC_MODULES = {"selfsup_core.options", "selfsup_core.testing", "selfsup_core.bench"}
BUILTIN_PLUGINS = {"selfsup_rotation", "selfsup_cutout", "selfsup_crappify", "selfsup_jigsaw", "selfsup_augment"}


def python_files(*folders: str) -> Iterator[Path]:
    """Every .py file under the given project folders (build metadata left out)."""
    for folder in folders:
        yield from sorted(p for p in (ROOT / folder).rglob("*.py") if ".egg-info" not in str(p))


def parse(path: Path) -> ast.Module:
    """The syntax tree of ``path``: the code is read, never run."""
    return ast.parse(path.read_text(), filename=str(path))


def private_uses(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """``(line, what)`` for every use of selfsup_core outside its public API."""
    public = set(selfsup_core.__all__)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "selfsup_core":
                # `from selfsup_core import testing` names a public module, not a name of __all__.
                allowed = public | {m.rsplit(".", 1)[1] for m in PUBLIC_MODULES}
                yield from ((node.lineno, f"from selfsup_core import {a.name}")
                            for a in node.names if a.name not in allowed)
            elif node.module.startswith("selfsup_core.") and node.module not in PUBLIC_MODULES:
                yield node.lineno, f"from {node.module} import {', '.join(a.name for a in node.names)}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("selfsup_core.") and alias.name not in PUBLIC_MODULES:
                    yield node.lineno, f"import {alias.name}"
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
              and node.value.id == "selfsup_core" and node.attr not in public
              and f"selfsup_core.{node.attr}" not in PUBLIC_MODULES):
            yield node.lineno, f"selfsup_core.{node.attr}"


def test_plugins_and_examples_use_only_the_public_api() -> None:
    offenders = [f"{path.relative_to(ROOT)}:{line}: {what}"
                 for path in python_files("plugins", "examples") for line, what in private_uses(parse(path))]
    assert not offenders, ("plugins/examples reach past the public API (selfsup_core.__all__, "
                           "selfsup_core.options, selfsup_core.testing, selfsup_core.bench):\n" + "\n".join(offenders))


def test_the_import_checker_tells_public_from_private() -> None:
    source = ("from selfsup_core import pretrain, hookimpl\nfrom selfsup_core.testing import TaskContract\n"
              "from selfsup_core.bench import time_call\nimport selfsup_core\nselfsup_core.TaskSpec\n"
              "from selfsup_core.tasks.base import ClassificationTask\nimport selfsup_core.tasks.metrics\n"
              "from selfsup_core import tasks\nselfsup_core.training\nfrom selfsup_core.bench.eval import x\n")
    assert sorted(line for line, _ in private_uses(ast.parse(source))) == [6, 7, 8, 9, 10]


def plugin_coupling(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """``(line, what)`` for every import of a built-in plugin and every ``x.name == "literal"``."""
    for node in ast.walk(tree):
        modules = ([a.name for a in node.names] if isinstance(node, ast.Import)
                   else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        yield from ((node.lineno, f"imports {m}") for m in modules if m.split(".")[0] in BUILTIN_PLUGINS)
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            named = any(isinstance(o, ast.Attribute) and o.attr == "name" for o in operands)
            literal = any(isinstance(o, ast.Constant) and isinstance(o.value, str) for o in operands)
            if named and literal:
                yield node.lineno, f"compares .name to a string: {ast.unparse(node)}"


def test_core_names_no_plugin() -> None:
    """The core imports no built-in plugin and never special-cases a task by name."""
    offenders = [f"{path.relative_to(ROOT)}:{line}: {what}"
                 for path in python_files("selfsup_core") for line, what in plugin_coupling(parse(path))]
    assert not offenders, "the core must treat every task alike:\n" + "\n".join(offenders)


def test_the_coupling_checker_finds_names_and_imports() -> None:
    source = ("import selfsup_rotation\nfrom selfsup_crappify.jpeg import jpeg\nif task.name == 'cutout': pass\n"
              "if 'jigsaw' != self.task.name: pass\nif task.name == other.name: pass\nimport selfsup_core\n")
    assert sorted(line for line, _ in plugin_coupling(ast.parse(source))) == [1, 2, 3, 4]


def test_documented_entry_points_are_functions() -> None:
    from selfsup_core import evaluate, finetune, load_encoder, pretrain

    for function in (pretrain, finetune, evaluate, load_encoder):
        assert inspect.isfunction(function), f"{function!r} is not a function (a module shadows it?)"


def test_every_public_name_resolves() -> None:
    missing = [name for name in selfsup_core.__all__ if getattr(selfsup_core, name, None) is None]
    assert not missing, f"selfsup_core.__all__ names what it cannot give: {missing}"
    from selfsup_core.bench import time_call

    assert callable(time_call)


def test_importing_the_package_does_not_import_torch() -> None:
    # A fresh interpreter: this one has torch loaded already.
    code = ("import sys, selfsup_core; "
            "print(sorted(m for m in ('torch', 'lightning', 'pytorch_lightning') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert result.stdout.strip() == "[]", f"import selfsup_core loaded {result.stdout.strip()}"


def test_every_hook_is_documented_in_code_and_guide() -> None:
    from selfsup_core.plugin import hookspecs

    hooks = [f for _, f in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(f, "selfsup_spec")]
    assert hooks, "no hook specification found"
    guide = (ROOT / "docs" / "writing-a-plugin.md").read_text()
    undocumented = [h.__name__ for h in hooks if not (h.__doc__ or "").strip()]
    unmentioned = [h.__name__ for h in hooks if h.__name__ not in guide]
    assert not undocumented, f"hooks without a docstring: {undocumented}"
    assert not unmentioned, f"hooks docs/writing-a-plugin.md does not mention: {unmentioned}"


def test_messages_count_in_the_singular_and_plural() -> None:
    from selfsup_core.wording import counted

    assert [counted(n, "file") for n in (0, 1, 2)] == ["0 files", "1 file", "2 files"]
