"""Name-based selection of tasks and encoders contributed by plugins.

Each :class:`~selfsup_core.plugin.host.PluginHost` collects one
:class:`Registry` of each kind, once (``host.tasks``, ``host.encoders``).
Each name maps to one spec. A name claimed by a built-in plugin (distribution
``selfsup``) and a third-party one keeps the built-in; a name claimed by two
third-party plugins is a conflict, reported by ``selfsup tasks`` and raised
only when that name is used. A hook that raises or returns something unusable
is recorded as a failure of its plugin alone.

Example:
    >>> from selfsup_core import list_tasks, create_task
    >>> "rotation" in list_tasks()
    True
    >>> task = create_task("rotation", num_transforms=4)
"""

from __future__ import annotations

import difflib
import fnmatch
import re
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from selfsup_core.errors import TaskConflictError, TaskOptionError, UnknownTaskError
from selfsup_core.plugin.host import (
    BUILTIN_DISTRIBUTION,
    PluginConflict,
    PluginHost,
    PluginLoadFailure,
    get_plugin_host,
    one_line_error,
)

if TYPE_CHECKING:
    from torch import nn

    from selfsup_core.augment.base import Augmentation
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

    @classmethod
    def from_task(cls, task: type[PretextTask]) -> TaskSpec:
        """The spec of a task class, from its ``name`` and ``summary`` attributes.

        Hooks may return the class itself (``return [JigsawTask]``); the host
        converts it with this.
        """
        return cls(task.name, task, task.summary)


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


@dataclass(frozen=True)
class AugmentationSpec:
    """A batch-wise augmentation contributed by a plugin.

    Attributes:
        name: What users and tasks name it by (``--augment NAME``).
        factory: Called with the augmentation's options as keyword arguments;
            returns an :class:`~selfsup_core.augment.base.Augmentation`.
        summary: One line shown by ``selfsup augmentations``.
    """

    name: str
    factory: Callable[..., Augmentation]
    summary: str = ""

    @classmethod
    def from_augmentation(cls, augmentation: type[Augmentation]) -> AugmentationSpec:
        """The spec of an augmentation class, from its ``name`` and ``summary``."""
        return cls(augmentation.name, augmentation, augmentation.summary)


SpecT = TypeVar("SpecT", TaskSpec, EncoderSpec, AugmentationSpec)


@dataclass(frozen=True)
class Entry(Generic[SpecT]):
    """A spec with the plugin and distribution it came from."""

    spec: SpecT
    plugin: str
    distribution: str


@dataclass
class Registry(Generic[SpecT]):
    """Specs of one kind (tasks or encoders) by name, with conflicts kept aside.

    Attributes:
        kind: ``"task"`` or ``"encoder"``, for messages.
        entries: Usable name -> entry.
        conflicts: Names claimed by several third-party plugins: unusable.
        shadowed: Third-party entries hidden by the built-in entry of the
            same name (which is in ``entries``).
        failures: The host's failures, noted in unknown-name errors.
    """

    kind: str
    entries: dict[str, Entry[SpecT]] = field(default_factory=dict)
    conflicts: dict[str, list[Entry[SpecT]]] = field(default_factory=dict)
    shadowed: dict[str, list[Entry[SpecT]]] = field(default_factory=dict)
    failures: list[PluginLoadFailure] = field(default_factory=list)

    def names(self, pattern: str = "*") -> list[str]:
        """Sorted names matching a shell-style ``pattern``, conflicting ones included."""
        every = set(self.entries) | set(self.conflicts)
        return sorted(name for name in every if fnmatch.fnmatchcase(name, pattern))

    def get(self, name: str) -> Entry[SpecT]:
        """The entry for ``name``; raises a clear error if unknown or conflicting."""
        if name in self.conflicts:
            claims = tuple((e.plugin, e.distribution) for e in self.conflicts[name])
            # The same words as the CONFLICT line of `selfsup tasks`.
            raise TaskConflictError(PluginConflict(self.kind, name, claims).describe().removeprefix("CONFLICT: "))
        if name not in self.entries:
            raise UnknownTaskError(self._unknown_message(name))
        return self.entries[name]

    def _unknown_message(self, name: str) -> str:
        known = self.names()
        message = f"unknown {self.kind} {name!r}; installed: {', '.join(known) or 'none'}."
        by_lower = {k.lower(): k for k in known}  # 'SimCLR' is 'simclr' mistyped, however close
        close = difflib.get_close_matches(name.lower(), list(by_lower), n=1)
        if close:
            message += f" Did you mean {by_lower[close[0]]!r}?"
        for failure in self.failures:
            message += f"\nnote: {failure.describe()}"
        return message


def _as_task_spec(item: object) -> TaskSpec | None:
    from selfsup_core.tasks.base import PretextTask  # torch: only once plugins are in use

    if isinstance(item, TaskSpec):
        return item
    if isinstance(item, type) and issubclass(item, PretextTask) and item is not PretextTask:
        return TaskSpec.from_task(item)
    return None


def _as_encoder_spec(item: object) -> EncoderSpec | None:
    return item if isinstance(item, EncoderSpec) else None


def _as_augmentation_spec(item: object) -> AugmentationSpec | None:
    from selfsup_core.augment.base import Augmentation

    if isinstance(item, AugmentationSpec):
        return item
    if isinstance(item, type) and issubclass(item, Augmentation) and item is not Augmentation:
        return AugmentationSpec.from_augmentation(item)
    return None


def _placeholder_name(kind: str) -> str | None:
    from selfsup_core.augment.base import Augmentation
    from selfsup_core.tasks.base import PretextTask

    return {"task": PretextTask.name, "augmentation": Augmentation.name}.get(kind)


def _broken_defaults(factory: object) -> str | None:
    """Why the defaults of ``factory.Options`` are invalid, if they are (a plugin's bug, not the user's)."""
    from selfsup_core.options import Options

    declared = getattr(factory, "Options", None)
    if not (isinstance(declared, type) and issubclass(declared, Options)):
        return None
    try:
        declared()
    except (ValueError, TypeError) as exc:
        return str(exc)
    return None


def _what(value: object) -> str:
    if isinstance(value, type):
        return f"the class {value.__qualname__}"
    name = type(value).__name__
    return f"{'an' if name[0].lower() in 'aeiou' else 'a'} {name}"


def _checked(
    result: object, kind: str, expected: str, convert: Callable[[object], Any]
) -> tuple[list[Any], list[str]]:
    """The specs of one hook result, and what is wrong with it (then nothing of it is used)."""
    if result is None:
        return [], []
    if not isinstance(result, (list, tuple)):
        return [], [f"returned {_what(result)}, expected a list of {expected}"]
    specs: list[Any] = []
    problems: list[str] = []
    for item in result:
        spec = convert(item)
        if spec is None:
            problems.append(f"returned {_what(item)} in its list, expected {expected}")
        elif not isinstance(spec.name, str) or not _NAME_PATTERN.match(spec.name):
            problems.append(f"invalid {kind} name {spec.name!r}: use lower case letters, digits, '-' and '_'")
        elif spec.name == _placeholder_name(kind):
            # A class that forgot `name` would register the base class's placeholder.
            problems.append(f"{kind} class {spec.factory.__qualname__} sets no `name`")
        elif not callable(spec.factory):
            problems.append(f"{kind} {spec.name!r} has a factory that is not callable")
        elif (broken := _broken_defaults(spec.factory)) is not None:
            problems.append(f"{kind} {spec.name!r}: its default options fail their own checks ({broken})")
        elif any(spec.name == s.name for s in specs):
            problems.append(f"registers {kind} {spec.name!r} twice")
        else:
            specs.append(spec)
    return specs, problems


def _collect(
    host: PluginHost, hook_name: str, kind: str, expected: str, convert: Callable[[object], Any]
) -> Registry[Any]:
    registry: Registry[Any] = Registry(kind=kind, failures=host.failures)
    found: dict[str, list[Entry[Any]]] = {}
    hook = getattr(host.manager.hook, hook_name)
    # Calling each implementation alone tells us which plugin gave which spec,
    # and a plugin whose hook breaks is reported instead of breaking the rest.
    for impl in hook.get_hookimpls():  # registration order
        plugin = impl.plugin_name
        dist = host.distributions.get(plugin, "<unknown>")
        try:
            result = impl.function()
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - third-party code
            host.record(PluginLoadFailure(plugin, dist, one_line_error(exc), hook_name, traceback.format_exc()))
            continue
        specs, problems = _checked(result, kind, expected, convert)
        if problems:
            host.record(PluginLoadFailure(plugin, dist, "; ".join(problems), hook_name))
            continue
        for spec in specs:
            found.setdefault(spec.name, []).append(Entry(spec, plugin, dist))
    for name, entries in found.items():
        builtins = [e for e in entries if e.distribution == BUILTIN_DISTRIBUTION]
        claims = tuple((e.plugin, e.distribution) for e in entries)
        if len(entries) == 1:
            registry.entries[name] = entries[0]
        elif len(builtins) == 1:
            # A third-party plugin must not take a built-in name away from users.
            registry.entries[name] = builtins[0]
            registry.shadowed[name] = [e for e in entries if e is not builtins[0]]
            host.record(PluginConflict(kind, name, claims, used=builtins[0].plugin))
        else:
            registry.conflicts[name] = entries
            host.record(PluginConflict(kind, name, claims))
    return registry


def collect_tasks(host: PluginHost) -> Registry[TaskSpec]:
    """Call every plugin's ``selfsup_register_tasks`` (uncached: use ``host.tasks``)."""
    return _collect(host, "selfsup_register_tasks", "task", "TaskSpec or PretextTask subclasses", _as_task_spec)


def collect_encoders(host: PluginHost) -> Registry[EncoderSpec]:
    """Call every plugin's ``selfsup_register_encoders`` (uncached: use ``host.encoders``)."""
    return _collect(host, "selfsup_register_encoders", "encoder", "EncoderSpec", _as_encoder_spec)


def collect_augmentations(host: PluginHost) -> Registry[AugmentationSpec]:
    """Call every plugin's ``selfsup_register_augmentations`` (uncached: use ``host.augmentations``)."""
    return _collect(host, "selfsup_register_augmentations", "augmentation",
                    "AugmentationSpec or Augmentation subclasses", _as_augmentation_spec)


def list_augmentations(pattern: str = "*", *, host: PluginHost | None = None) -> list[str]:
    """Names of the installed augmentations that match ``pattern`` (shell style)."""
    return (host or get_plugin_host()).augmentations.names(pattern)


def create_augmentation(name: str, /, *, host: PluginHost | None = None, **options: Any) -> Augmentation:
    """Build the augmentation called ``name`` with ``options``.

    Raises:
        UnknownTaskError: No installed plugin provides ``name`` (the message
            lists the installed ones and the closest match).
        ConfigError: An option it does not accept, or a bad value.
    """
    spec = (host or get_plugin_host()).augmentations.get(name).spec
    return spec.factory(**options)


def build_task_registry(host: PluginHost | None = None) -> Registry[TaskSpec]:
    """The tasks of ``host`` (default: the process's host), collected once per host."""
    return (host or get_plugin_host()).tasks


def build_encoder_registry(host: PluginHost | None = None) -> Registry[EncoderSpec]:
    """The encoders of ``host`` (default: the process's host), built-ins included."""
    return (host or get_plugin_host()).encoders


def list_tasks(pattern: str = "*", *, host: PluginHost | None = None) -> list[str]:
    """Names of the installed tasks that match ``pattern`` (shell style)."""
    return build_task_registry(host).names(pattern)


def create_task(name: str, /, *, host: PluginHost | None = None, **options: Any) -> PretextTask:
    """Build the task called ``name`` with ``options``.

    Args:
        name: A registered task name, or several joined by ``+`` with optional
            weights (``rotation:1+crappify:0.5``): a
            :class:`~selfsup_core.tasks.multitask.MultiTask`, whose options
            are keyed by task name.
        host: Whose plugins to use; ``None`` is the process's host.
        **options: The task's keyword options.

    Raises:
        UnknownTaskError: No installed plugin provides ``name``; the message
            lists the installed tasks and the closest match.
        TaskConflictError: Two third-party plugins provide ``name``.
        TaskOptionError: An option the task does not accept, or a bad value.
    """
    from selfsup_core.tasks.multitask import create_multitask, is_multitask

    if is_multitask(name):  # "rotation+crappify:0.5": several tasks on one encoder
        return create_multitask(name, options, host=host)
    spec = build_task_registry(host).get(name).spec
    check_options(spec.factory, options, what=f"task {name!r}")
    try:
        return spec.factory(**options)
    except TaskOptionError:
        raise
    except (TypeError, ValueError) as exc:  # a factory that declares no Options
        raise TaskOptionError(f"task {name!r}: {exc}") from exc


def check_options(factory: Callable[..., Any], options: dict[str, Any], what: str) -> None:
    """Raise :class:`TaskOptionError` for options the task's ``Options`` declaration rejects.

    Unknown names (the message lists the accepted options) and bad values are
    both caught here, before the task or any data is built. A factory that
    declares no ``Options`` (a plain function) is only checked when called.
    """
    from selfsup_core.tasks.options import options_class

    declared = options_class(factory)
    if declared is not None:
        declared.parse(options, what=what)
