"""The plugin host: one per process, loading, blocking, broken plugins, conflicts, hook docs.

Each way a single plugin can break is in test_plugin_faults.py.
"""

from __future__ import annotations

import importlib.metadata
import inspect
from pathlib import Path

import pytest
from conftest import FakeEntryPoint
from selfsup_rotation import RotationTask

from selfsup_core import EncoderSpec, TaskSpec, hookimpl
from selfsup_core.errors import TaskConflictError, TaskOptionError, UnknownTaskError
from selfsup_core.plugin import hookspecs, registry
from selfsup_core.plugin.host import build_plugin_host, get_plugin_host, use_plugin_host
from selfsup_core.plugin.registry import build_task_registry, create_task, list_tasks


class _Plugin:
    def __init__(self, *names: str) -> None:
        self.names = names

    @hookimpl
    def selfsup_register_tasks(self) -> list[TaskSpec]:
        return [TaskSpec(name, RotationTask, f"copy of rotation as {name}") for name in self.names]


class SpinTask(RotationTask):
    """Rotation under another name: a task only a test host has."""

    name = "spin"
    summary = "Rotation, renamed."


class _SpinPlugin:
    @hookimpl
    def selfsup_register_tasks(self) -> list[type[SpinTask]]:
        return [SpinTask]  # a class: name and summary come from it

    @hookimpl
    def selfsup_register_encoders(self) -> list[EncoderSpec]:
        from selfsup_core.models.encoders import TinyEncoder

        return [EncoderSpec("spin-tiny", TinyEncoder, "the tiny encoder, renamed")]


def test_builtins_come_from_entry_points() -> None:
    registry = build_task_registry(build_plugin_host())
    entry = registry.get("rotation")
    assert entry.plugin == "rotation" and entry.distribution == "selfsup"
    names = [ep.name for ep in importlib.metadata.entry_points(group="selfsup")]
    assert "rotation" in names


def test_each_built_host_is_fresh() -> None:
    first = build_plugin_host(autoload=False, plugins=[("extra", _Plugin("extra-task"))])
    second = build_plugin_host(autoload=False)
    assert "extra-task" in list_tasks(host=first)
    assert list_tasks(host=second) == []


def test_one_host_per_process_and_registries_collected_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = registry._collect

    def counting(host, hook_name, *args):  # noqa: ANN001, ANN202
        calls.append(hook_name)
        return real(host, hook_name, *args)

    monkeypatch.setattr(registry, "_collect", counting)
    host = get_plugin_host()
    assert get_plugin_host() is host
    assert host.tasks is host.tasks and host.encoders is host.encoders
    for _ in range(3):
        create_task("rotation")
        list_tasks()
        from selfsup_core.models.encoders import build_encoder, list_encoders

        build_encoder("tiny")
        list_encoders()
    assert sorted(calls) == ["selfsup_register_augmentations", "selfsup_register_encoders", "selfsup_register_tasks"]


def test_a_host_passed_down_is_used() -> None:
    from selfsup_core.models.encoders import build_encoder, list_encoders
    from selfsup_core.training.pretext_module import PretextModule

    host = build_plugin_host(plugins=[("spin", _SpinPlugin())])
    assert "spin" in list_tasks(host=host) and "spin" not in list_tasks()
    assert isinstance(create_task("spin", host=host), SpinTask)
    assert "spin-tiny" in list_encoders(host) and "spin-tiny" not in list_encoders()
    assert build_encoder("spin-tiny", host=host).feature_dim > 0
    module = PretextModule("spin", arch="spin-tiny", host=host)
    assert isinstance(module.task, SpinTask)
    assert "host" not in module.hparams  # a live object, not a hyperparameter
    with pytest.raises(UnknownTaskError):
        PretextModule("spin", arch="tiny")


def test_use_plugin_host_chooses_the_process_host_for_a_while() -> None:
    host = build_plugin_host(autoload=False, plugins=[("spin", _SpinPlugin())])
    default = get_plugin_host()
    with use_plugin_host(host):
        assert get_plugin_host() is host and list_tasks() == ["spin"]
    assert get_plugin_host() is default


def test_hooks_may_return_task_classes() -> None:
    assert TaskSpec.from_task(SpinTask) == TaskSpec("spin", SpinTask, "Rotation, renamed.")
    host = build_plugin_host(autoload=False, plugins=[("spin", _SpinPlugin())])
    entry = host.tasks.get("spin")
    assert entry.spec == TaskSpec.from_task(SpinTask) and entry.plugin == "spin"


def test_broken_entry_point_is_reported_and_others_still_work(fake_entry_points: list[FakeEntryPoint]) -> None:
    fake_entry_points.append(FakeEntryPoint("broken", "dist-broken", ImportError("No module named 'nowhere'")))
    host = build_plugin_host()
    assert [(f.name, f.distribution, f.stage) for f in host.failures] == [("broken", "dist-broken", "load")]
    assert "nowhere" in host.failures[0].error
    assert "rotation" in list_tasks(host=host)
    with pytest.raises(UnknownTaskError, match="plugin 'broken'.*failed to load"):
        create_task("broken", host=host)


def test_plugins_blocked_by_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SELFSUP_DISABLE_PLUGINS", "rotation, other")
    assert "rotation" not in list_tasks(host=build_plugin_host())


def test_conflict_is_listed_and_raised_on_use() -> None:
    host = build_plugin_host(autoload=False, plugins=[("a", _Plugin("same")), ("b", _Plugin("same", "only-b"))])
    assert list_tasks(host=host) == ["only-b", "same"]
    assert "same" in host.tasks.conflicts
    assert [(c.kind, c.name) for c in host.conflicts] == [("task", "same")]
    with pytest.raises(TaskConflictError, match="'a'.*'b'") as info:
        create_task("same", host=host)
    assert "SELFSUP_DISABLE_PLUGINS" in str(info.value)
    assert host.tasks.get("only-b").plugin == "b"


def test_misspelt_hook_drops_only_that_plugin() -> None:
    class Typo:
        @hookimpl
        def selfsup_register_taks(self) -> list:
            return []

    host = build_plugin_host(autoload=False, plugins=[("typo", Typo()), ("fine", _Plugin("fine-task"))])
    assert [(f.name, f.stage) for f in host.failures] == [("typo", "register")]
    assert "selfsup_register_taks" in host.failures[0].error
    assert list_tasks(host=host) == ["fine-task"]


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


def test_invalid_task_name_is_a_failure_of_its_plugin() -> None:
    host = build_plugin_host(autoload=False, plugins=[("bad", _Plugin("Bad Name")), ("good", _Plugin("good"))])
    assert [f.name for f in host.failures] == ["bad"] and "invalid task name" in host.failures[0].error
    assert list_tasks(host=host) == ["good"]


def test_every_hook_is_prefixed_typed_and_documented() -> None:
    hooks = [f for name, f in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(f, "selfsup_spec")]
    assert hooks, "no hook specifications found"
    docs = (Path(__file__).parents[1] / "docs" / "writing-a-plugin.md").read_text()
    for hook in hooks:
        assert hook.__name__.startswith("selfsup_")
        assert hook.__doc__ and ":return:" in hook.__doc__, f"{hook.__name__} lacks documentation"
        assert "return" in hook.__annotations__, f"{hook.__name__} lacks a return type"
        assert hook.__name__ in docs, f"{hook.__name__} is not described in docs/writing-a-plugin.md"
