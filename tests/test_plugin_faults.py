"""Each way a plugin can break stays with that plugin, is reported once, and built-ins keep working.

Every test builds a host holding one faulty plugin next to the installed ones,
then checks the same three things: ``selfsup tasks`` exits 0 and still lists
the built-in rotation task, it prints exactly one line naming the faulty
plugin and its distribution, and ``create_task("rotation", host=host)`` works.
Hosts are built with ``build_plugin_host(plugins=[...])``, or with faked entry
points where the fault is about entry points themselves.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pluggy
import pytest
from conftest import FakeEntryPoint
from selfsup_rotation import RotationTask

from selfsup_core import TaskSpec, hookimpl
from selfsup_core.cli import main
from selfsup_core.errors import TaskConflictError
from selfsup_core.plugin.host import PluginHost, build_plugin_host, get_plugin_host
from selfsup_core.plugin.registry import create_task, list_tasks


def write_module(folder: Path, monkeypatch: pytest.MonkeyPatch, name: str, source: str) -> str:
    """A real module file, so that tracebacks point at a file and line."""
    (folder / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(folder))
    return name


def tasks_lines(host: PluginHost | None, capsys: pytest.CaptureFixture[str], *flags: str) -> list[str]:
    assert main([*flags, "tasks"], host=host) == 0
    captured = capsys.readouterr()
    return (captured.out + captured.err).splitlines()


def check_isolated(host: PluginHost | None, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
                   plugin: str, dist: str) -> str:
    """The checks every fault must pass; returns the one line naming the faulty plugin."""
    lines = tasks_lines(host, capsys)
    assert any(line.startswith("rotation ") and line.endswith("[selfsup]") for line in lines), lines
    naming = [line for line in lines if f"'{plugin}'" in line and dist in line]
    assert len(naming) == 1, lines
    assert isinstance(create_task("rotation", host=host, num_transforms=4), RotationTask)
    # Logged once, when the host was built: listing and using it log nothing more.
    logged = [r for r in caplog.records if r.levelno == logging.WARNING and f"'{plugin}'" in r.getMessage()]
    assert len(logged) == 1, [r.getMessage() for r in logged]
    return naming[0]


def with_plugin(plugin: object, name: str = "faulty", dist: str = "faulty-dist") -> PluginHost:
    return build_plugin_host(autoload=True, blocked=(), plugins=[(name, plugin, dist)])


# -- failures while loading -------------------------------------------------------------


def test_import_error(fake_entry_points: list[FakeEntryPoint], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                      capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    module = write_module(tmp_path, monkeypatch, "selfsup_fault_import", "import selfsup_nowhere_to_be_found\n")
    fake_entry_points.append(FakeEntryPoint("broken", "broken-dist", module))
    host = build_plugin_host()
    line = check_isolated(host, capsys, caplog, "broken", "broken-dist")
    assert "failed to load: ModuleNotFoundError" in line and "selfsup_nowhere_to_be_found" in line
    assert 'selfsup_fault_import.py", line 1' in host.failures[0].traceback


def test_sys_exit_at_import(fake_entry_points: list[FakeEntryPoint], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                            capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    module = write_module(tmp_path, monkeypatch, "selfsup_fault_exit", "import sys\n\nsys.exit(3)\n")
    fake_entry_points.append(FakeEntryPoint("quitter", "quitter-dist", module))
    host = build_plugin_host()
    line = check_isolated(host, capsys, caplog, "quitter", "quitter-dist")
    assert "sys.exit(3)" in line


def test_hook_that_raises(capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    class Raising:
        @hookimpl
        def selfsup_register_tasks(self) -> list[TaskSpec]:
            raise RuntimeError("no GPU found")

    line = check_isolated(with_plugin(Raising()), capsys, caplog, "faulty", "faulty-dist")
    assert "failed in selfsup_register_tasks: RuntimeError: no GPU found" in line


def test_misspelt_hook_name(capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    class Typo:
        @hookimpl
        def selfsup_register_task(self) -> list[TaskSpec]:
            return [TaskSpec("typo-task", RotationTask)]

    host = with_plugin(Typo())
    line = check_isolated(host, capsys, caplog, "faulty", "faulty-dist")
    assert "'selfsup_register_task'" in line and "did you mean 'selfsup_register_tasks'" in line
    assert host.manager.get_plugin("faulty") is None  # unregistered: the manager stays consistent


def test_hook_signature_pluggy_rejects(capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    class WrongArguments:
        @hookimpl
        def selfsup_register_tasks(self, config: object) -> list[TaskSpec]:
            return []

    line = check_isolated(with_plugin(WrongArguments()), capsys, caplog, "faulty", "faulty-dist")
    assert "failed to register" in line and "config" in line


def test_spec_with_an_invalid_name(capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    class BadName:
        @hookimpl
        def selfsup_register_tasks(self) -> list[TaskSpec]:
            return [TaskSpec("Bad Name", RotationTask)]

    line = check_isolated(with_plugin(BadName()), capsys, caplog, "faulty", "faulty-dist")
    assert "invalid task name 'Bad Name'" in line


@pytest.mark.parametrize(
    ("returned", "said"),
    [
        ({"spin": RotationTask}, "returned a dict"),
        ("spin", "returned a str"),
        ([TaskSpec("spin", RotationTask), 42], "returned an int in its list"),
        ([dict], "returned the class dict in its list"),
    ],
    ids=["dict", "str", "list-with-a-number", "list-with-another-class"],
)
def test_hook_returning_something_else(returned: object, said: str, capsys: pytest.CaptureFixture[str],
                                       caplog: pytest.LogCaptureFixture) -> None:
    class Odd:
        @hookimpl
        def selfsup_register_tasks(self) -> object:
            return returned

    host = with_plugin(Odd())
    line = check_isolated(host, capsys, caplog, "faulty", "faulty-dist")
    assert said in line
    assert "spin" not in list_tasks(host=host)  # nothing of a bad result is used


def test_hook_returning_none_is_empty(capsys: pytest.CaptureFixture[str]) -> None:
    class Nothing:
        @hookimpl
        def selfsup_register_tasks(self) -> None:
            return None

    host = with_plugin(Nothing())
    assert host.failures == [] and host.conflicts == []
    assert not any("faulty" in line for line in tasks_lines(host, capsys))


# -- names claimed twice ------------------------------------------------------------------


def _tasks_plugin(*names: str) -> object:
    class Plugin:
        @hookimpl
        def selfsup_register_tasks(self) -> list[TaskSpec]:
            return [TaskSpec(name, RotationTask, f"a copy of rotation named {name}") for name in names]

    return Plugin()


def test_two_distributions_with_one_entry_point_name(
    fake_entry_points: list[FakeEntryPoint], capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    fake_entry_points += [FakeEntryPoint("twin", "dist-a", _tasks_plugin("alpha")),
                          FakeEntryPoint("twin", "dist-b", _tasks_plugin("beta"))]
    host = build_plugin_host()
    assert {"alpha", "beta"} <= set(list_tasks(host=host))  # both loaded, under distinct names
    assert {"twin@dist-a", "twin@dist-b"} <= set(host.distributions)
    line = check_isolated(host, capsys, caplog, "twin@dist-b", "dist-b")
    assert "CONFLICT" in line and "dist-a" in line and "SELFSUP_DISABLE_PLUGINS=twin@dist-b" in line
    # The way out the line gives works.
    get_plugin_host.cache_clear()
    unblocked = build_plugin_host(blocked={"twin@dist-b"})
    assert unblocked.conflicts == [] and "beta" not in list_tasks(host=unblocked)


def test_third_party_task_named_like_a_built_in(capsys: pytest.CaptureFixture[str],
                                                caplog: pytest.LogCaptureFixture) -> None:
    host = with_plugin(_tasks_plugin("rotation"), name="rotation-copy", dist="other-dist")
    line = check_isolated(host, capsys, caplog, "rotation-copy", "other-dist")
    assert line.startswith("rotation ") and "CONFLICT" in line
    assert "selfsup" in line and "SELFSUP_DISABLE_PLUGINS=rotation-copy" in line
    assert host.tasks.get("rotation").distribution == "selfsup"
    assert main(["tasks"], host=build_plugin_host(blocked={"rotation-copy"})) == 0
    assert "CONFLICT" not in capsys.readouterr().out


def test_two_third_party_plugins_with_one_task_name(capsys: pytest.CaptureFixture[str],
                                                     caplog: pytest.LogCaptureFixture) -> None:
    host = build_plugin_host(plugins=[("one", _tasks_plugin("same"), "dist-one"),
                                      ("two", _tasks_plugin("same"), "dist-two")])
    line = check_isolated(host, capsys, caplog, "two", "dist-two")
    assert line.startswith("same ") and "CONFLICT" in line and "dist-one" in line
    with pytest.raises(TaskConflictError, match="dist-one.*dist-two"):
        create_task("same", host=host)


# -- reported once, with a traceback on request ----------------------------------------------


def test_verbose_logs_the_plugin_traceback(fake_entry_points: list[FakeEntryPoint], monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           caplog: pytest.LogCaptureFixture) -> None:
    source = "import sys\n\nraise RuntimeError('plugin misconfigured')\n"
    fake_entry_points.append(FakeEntryPoint("broken", "broken-dist", write_module(tmp_path, monkeypatch,
                                                                              "selfsup_fault_raise", source)))
    tasks_lines(None, capsys, "-v")  # the process's host, built after -v took effect
    tracebacks = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG and "'broken'" in r.getMessage()]
    assert len(tracebacks) == 1 and 'selfsup_fault_raise.py", line 3' in tracebacks[0]

    caplog.clear()
    get_plugin_host.cache_clear()
    lines = tasks_lines(None, capsys)  # without -v: the listing's line only, no log record too
    assert [r for r in caplog.records if "'broken'" in r.getMessage()] == []
    assert len([line for line in lines if "'broken' (broken-dist) failed to load" in line]) == 1


def test_one_pretrain_builds_one_plugin_manager(fake_entry_points: list[FakeEntryPoint],
                                                monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    built: list[pluggy.PluginManager] = []

    class CountingManager(pluggy.PluginManager):
        def __init__(self, project_name: str) -> None:
            super().__init__(project_name)
            built.append(self)

    monkeypatch.setattr(pluggy, "PluginManager", CountingManager)
    fake_entry_points.append(FakeEntryPoint("broken", "broken-dist", "selfsup_nowhere_to_be_found"))
    assert main(["pretrain", "--arch", "tiny", "--max-epochs", "1", "--limit", "16", "--image-size", "32",
                 "--no-progress"]) == 0
    assert len(built) == 1
    warned = [r.getMessage() for r in caplog.records if "'broken'" in r.getMessage()]
    assert len(warned) == 1 and "broken-dist" in warned[0] and "selfsup_nowhere_to_be_found" in warned[0]


def test_a_plugin_without_hookimpl_is_named(fake_entry_points: list[FakeEntryPoint],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    class Forgot:
        @staticmethod
        def selfsup_register_tasks() -> list:  # no @hookimpl: pluggy would ignore it silently
            return []

    fake_entry_points.append(FakeEntryPoint("forgot", "forgot-dist", Forgot()))
    assert main(["tasks"]) == 0
    out = capsys.readouterr()
    assert "'forgot' (forgot-dist)" in out.out + out.err
    assert "decorate selfsup_register_tasks with @selfsup_core.hookimpl" in out.out + out.err


@pytest.mark.parametrize(("value", "third_party"),
                         [("1", False), ("true", False), ("0", True), ("false", True), ("", True)])
def test_autoload_variable_keeps_the_builtins(value: str, third_party: bool, monkeypatch: pytest.MonkeyPatch,
                                              fake_entry_points: list[FakeEntryPoint]) -> None:
    monkeypatch.setenv("SELFSUP_DISABLE_PLUGIN_AUTOLOAD", value)
    host = build_plugin_host()
    assert "rotation" in list_tasks(host=host)  # built-ins always
    assert ("jigsaw" in list_tasks(host=host)) == third_party


def test_a_plugin_whose_defaults_break_its_own_checks_is_named() -> None:
    from dataclasses import dataclass

    from selfsup_core import ClassificationTask, TaskOptions
    from selfsup_core.options import option, within

    @dataclass(frozen=True)
    class QuadOptions(TaskOptions):
        quadrants: int = option(7, check=within(2, 4), help="how many")

    class Quad(ClassificationTask):
        name = "quad"
        Options = QuadOptions

    class Plugin:
        @hookimpl
        def selfsup_register_tasks(self) -> list:
            return [Quad]

    host = build_plugin_host(autoload=False, plugins=[("quad", Plugin(), "quad-dist")])
    assert "quad" not in list_tasks(host=host)
    (failure,) = host.failures
    assert failure.distribution == "quad-dist" and "default options fail their own checks" in failure.error
