"""Name-based selection of tasks and encoders contributed by plugins.

A :class:`Registry` is built from a :class:`~selfsup_core.plugins.PluginHost`.
Each name maps to one spec; a name contributed by two plugins is recorded as a
conflict, reported by ``selfsup tasks`` and raised only when that name is used.

Example:
    >>> from selfsup_core import list_tasks, create_task
    >>> "rotation" in list_tasks()
    True
    >>> task = create_task("rotation", num_transforms=4)
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from selfsup_core.errors import SelfsupError, TaskConflictError, TaskOptionError, UnknownTaskError
from selfsup_core.plugin.host import PluginHost, PluginLoadFailure, get_plugin_host

if TYPE_CHECKING:
    from torch import nn

    from selfsup_core.tasks.base import PretextTask

_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_\-]*$")


@dataclass(frozen=True)
class TaskSpec:
    """A pretext task contributed by a plugin.

    Attributes:
        name: What users type (``--task NAME``): lower case, digits, ``-`` or ``_``.
        factory: Called with the task options as keyword arguments; returns a
            :class:`~selfsup_core.task.PretextTask`. Usually the task class.
        summary: One line shown by ``selfsup tasks``.
    """

    name: str
    factory: Callable[..., PretextTask]
    summary: str = ""


@dataclass(frozen=True)
class EncoderSpec:
    """An encoder architecture contributed by a plugin.

    Attributes:
        name: What users type (``--arch NAME``).
        factory: Called with no arguments; returns an ``nn.Module`` following
            the :class:`~selfsup_core.encoders.Encoder` protocol.
        summary: One line shown in help texts.
    """

    name: str
    factory: Callable[[], nn.Module]
    summary: str = ""


SpecT = TypeVar("SpecT", TaskSpec, EncoderSpec)


@dataclass(frozen=True)
class Entry(Generic[SpecT]):
    """A spec with the plugin and distribution it came from."""

    spec: SpecT
    plugin: str
    distribution: str


@dataclass
class Registry(Generic[SpecT]):
    """Specs of one kind (tasks or encoders) by name, with conflicts kept aside."""

    kind: str
    entries: dict[str, Entry[SpecT]] = field(default_factory=dict)
    conflicts: dict[str, list[Entry[SpecT]]] = field(default_factory=dict)
    failures: list[PluginLoadFailure] = field(default_factory=list)

    def names(self, pattern: str = "*") -> list[str]:
        """Sorted names matching a shell-style ``pattern``, conflicting ones included."""
        every = set(self.entries) | set(self.conflicts)
        return sorted(name for name in every if fnmatch.fnmatchcase(name, pattern))

    def get(self, name: str) -> Entry[SpecT]:
        """The entry for ``name``; raises a clear error if unknown or conflicting."""
        if name in self.conflicts:
            entries = self.conflicts[name]
            dists = " and ".join(f"{e.distribution!r} (plugin {e.plugin!r})" for e in entries)
            plugins = ",".join(e.plugin for e in entries)
            raise TaskConflictError(
                f"{self.kind} {name!r} is registered by both {dists}. "
                f"Uninstall one of them, or block one with SELFSUP_DISABLE_PLUGINS "
                f"(one of: {plugins})."
            )
        if name not in self.entries:
            raise UnknownTaskError(self._unknown_message(name))
        return self.entries[name]

    def _unknown_message(self, name: str) -> str:
        known = self.names()
        message = f"unknown {self.kind} {name!r}; installed: {', '.join(known) or 'none'}."
        close = difflib.get_close_matches(name, known, n=1)
        if close:
            message += f" Did you mean {close[0]!r}?"
        for failure in self.failures:
            message += (
                f"\nnote: plugin {failure.name!r} from {failure.distribution!r} "
                f"failed to load: {failure.error}"
            )
        return message


def _collect(host: PluginHost, hook_name: str, kind: str) -> Registry[Any]:
    registry: Registry[Any] = Registry(kind=kind, failures=list(host.failures))
    found: dict[str, list[Entry[Any]]] = {}
    hook = getattr(host.manager.hook, hook_name)
    # Calling each implementation alone tells us which plugin gave which spec,
    # and a plugin whose hook raises is reported instead of breaking the rest.
    for impl in reversed(hook.get_hookimpls()):
        plugin = impl.plugin_name
        dist = host.distributions.get(plugin, "<unknown>")
        try:
            specs = list(impl.function() or ())
        except Exception as exc:  # noqa: BLE001 - third-party code
            registry.failures.append(PluginLoadFailure(plugin, dist, f"{type(exc).__name__}: {exc}"))
            logging.getLogger(__name__).warning("plugin %r: %s failed: %s", plugin, hook_name, exc)
            continue
        for spec in specs:
            if not _NAME_PATTERN.match(spec.name):
                raise SelfsupError(
                    f"plugin {plugin!r} from {dist!r} registers an invalid {kind} name "
                    f"{spec.name!r}: use lower case letters, digits, '-' and '_'."
                )
            found.setdefault(spec.name, []).append(Entry(spec, plugin, dist))
    for name, entries in found.items():
        if len(entries) == 1:
            registry.entries[name] = entries[0]
        else:
            registry.conflicts[name] = entries
    return registry


def build_task_registry(host: PluginHost | None = None) -> Registry[TaskSpec]:
    """Collect every task from the plugins of ``host`` (a new default host if None)."""
    return _collect(host or get_plugin_host(), "selfsup_register_tasks", "task")


def build_encoder_registry(host: PluginHost | None = None) -> Registry[EncoderSpec]:
    """Collect every encoder: the built-ins plus those contributed by plugins."""
    return _collect(host or get_plugin_host(), "selfsup_register_encoders", "encoder")


def list_tasks(pattern: str = "*", registry: Registry[TaskSpec] | None = None) -> list[str]:
    """Names of the installed tasks that match ``pattern`` (shell style)."""
    return (registry or build_task_registry()).names(pattern)


def create_task(
    name: str, registry: Registry[TaskSpec] | None = None, **options: Any
) -> PretextTask:
    """Build the task called ``name`` with ``options``.

    Raises:
        UnknownTaskError: No installed plugin provides ``name``; the message
            lists the installed tasks and the closest match.
        TaskConflictError: Two plugins provide ``name``.
        TaskOptionError: An option the task does not accept, or a bad value.
    """
    spec = (registry or build_task_registry()).get(name).spec
    check_options(spec.factory, options, what=f"task {name!r}")
    try:
        return spec.factory(**options)
    except (TypeError, ValueError) as exc:
        raise TaskOptionError(f"task {name!r}: {exc}") from exc


def check_options(factory: Callable[..., Any], options: dict[str, Any], what: str) -> None:
    """Raise :class:`TaskOptionError` for options ``factory`` does not accept."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TaskOptionError(
            f"{what} has no option {', '.join(map(repr, unknown))}; "
            f"it accepts: {', '.join(accepted) or 'no options'}."
        )
