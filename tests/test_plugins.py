"""The plugin manager: loading, blocking, broken plugins, conflicts, hook docs."""

from __future__ import annotations

import importlib.metadata
import inspect

import pytest

from selfsup_core import TaskSpec, hookimpl
from selfsup_core.plugin import hookspecs
from selfsup_core.errors import TaskConflictError, TaskOptionError, UnknownTaskError
from selfsup_core.plugin.host import build_plugin_host
from selfsup_core.plugin.registry import build_task_registry, create_task, list_tasks
from selfsup_rotation import RotationTask


class _Plugin:
    def __init__(self, *names: str) -> None:
        self.names = names

    @hookimpl
    def selfsup_register_tasks(self) -> list[TaskSpec]:
        return [TaskSpec(name, RotationTask, f"copy of rotation as {name}") for name in self.names]


class _FakeEntryPoint:
    """Stands in for an installed entry point whose module raises on import."""

    def __init__(self, name: str, error: Exception) -> None:
        self.name, self.error, self.group = name, error, "selfsup"
        self.dist = type("Dist", (), {"name": f"dist-{name}"})()

    def load(self) -> object:
        raise self.error


def test_builtins_come_from_entry_points() -> None:
    registry = build_task_registry(build_plugin_host())
    entry = registry.get("rotation")
    assert entry.plugin == "rotation" and entry.distribution == "selfsup"
    names = [ep.name for ep in importlib.metadata.entry_points(group="selfsup")]
    assert "rotation" in names


def test_each_manager_is_fresh() -> None:
    first = build_plugin_host(autoload=False, plugins=[("extra", _Plugin("extra-task"))])
    second = build_plugin_host(autoload=False)
    assert "extra-task" in build_task_registry(first).names()
    assert build_task_registry(second).names() == []


def test_broken_plugin_is_reported_and_others_still_work(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.metadata.entry_points

    def entry_points(group: str):  # noqa: ANN202
        return [_FakeEntryPoint("broken", ImportError("No module named 'nowhere'")), *real(group=group)]

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    host = build_plugin_host()
    assert [(f.name, f.distribution) for f in host.failures] == [("broken", "dist-broken")]
    assert "nowhere" in host.failures[0].error
    registry = build_task_registry(host)
    assert "rotation" in registry.names()
    with pytest.raises(UnknownTaskError, match="plugin 'broken'.*failed to load"):
        registry.get("broken")


def test_plugins_blocked_by_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SELFSUP_DISABLE_PLUGINS", "rotation, other")
    assert "rotation" not in list_tasks(registry=build_task_registry(build_plugin_host()))


def test_conflict_is_listed_and_raised_on_use() -> None:
    host = build_plugin_host(autoload=False, plugins=[("a", _Plugin("same")), ("b", _Plugin("same", "only-b"))])
    registry = build_task_registry(host)
    assert registry.names() == ["only-b", "same"]
    assert "same" in registry.conflicts
    with pytest.raises(TaskConflictError, match="'a'.*'b'|'b'.*'a'") as info:
        registry.get("same")
    assert "SELFSUP_DISABLE_PLUGINS" in str(info.value)
    assert registry.get("only-b").plugin == "b"


def test_misspelt_hook_is_caught() -> None:
    class Typo:
        @hookimpl
        def selfsup_register_taks(self) -> list:
            return []

    with pytest.raises(Exception, match="selfsup_register_taks"):
        build_plugin_host(autoload=False, plugins=[("typo", Typo())])


def test_unknown_task_names_closest_match() -> None:
    with pytest.raises(UnknownTaskError) as info:
        create_task("rotaton")
    assert "Did you mean 'rotation'" in str(info.value)
    assert "rotation" in str(info.value)


def test_unknown_option_lists_accepted_ones() -> None:
    with pytest.raises(TaskOptionError, match="num_transforms"):
        create_task("rotation", transforms=4)
    with pytest.raises(TaskOptionError, match="4 or 6"):
        create_task("rotation", num_transforms=5)


def test_invalid_task_name_is_rejected() -> None:
    host = build_plugin_host(autoload=False, plugins=[("bad", _Plugin("Bad Name"))])
    with pytest.raises(Exception, match="invalid task name"):
        build_task_registry(host)


def test_every_hook_is_prefixed_typed_and_documented() -> None:
    hooks = [f for name, f in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(f, "selfsup_spec")]
    assert hooks, "no hook specifications found"
    docs = (__import__("pathlib").Path(__file__).parents[1] / "docs" / "writing-a-plugin.md").read_text()
    for hook in hooks:
        assert hook.__name__.startswith("selfsup_")
        assert hook.__doc__ and ":return:" in hook.__doc__, f"{hook.__name__} lacks documentation"
        assert "return" in hook.__annotations__, f"{hook.__name__} lacks a return type"
        assert hook.__name__ in docs, f"{hook.__name__} is not described in docs/writing-a-plugin.md"
