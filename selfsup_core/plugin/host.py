"""The plugin host: one pluggy manager, its plugins, and what went wrong loading them.

A process uses one host, :func:`get_plugin_host`, built on first use. Every
function that looks up plugins (``create_task``, ``build_encoder``,
``pretrain`` ...) takes an optional ``host=`` to use another one, built with
:func:`build_plugin_host` (tests do this).

A broken plugin never breaks the others: each failure is recorded on the host
as a :class:`PluginLoadFailure` (with the plugin's traceback), logged once as
a warning when the host is built, and listed by ``selfsup tasks``.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import functools
import importlib.metadata
import logging
import os
import traceback
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pluggy

from selfsup_core.plugin import hookspecs
from selfsup_core.plugin.markers import PROJECT_NAME

if TYPE_CHECKING:
    from selfsup_core.plugin.registry import AugmentationSpec, EncoderSpec, Registry, TaskSpec

logger = logging.getLogger(__name__)

DISABLE_ENV = "SELFSUP_DISABLE_PLUGINS"
"""Comma-separated plugin names (entry-point names) that are not loaded."""

AUTOLOAD_ENV = "SELFSUP_DISABLE_PLUGIN_AUTOLOAD"
"""When set to a non-empty value, no entry point is loaded at all."""

BUILTIN_DISTRIBUTION = PROJECT_NAME
"""The distribution of the built-in plugins: they win a name clash with third-party ones."""

LOCAL_DISTRIBUTION = "<local>"
"""Distribution recorded for plugins registered in-process rather than from an entry point."""


@dataclass(frozen=True)
class PluginLoadFailure:
    """A plugin that broke: it is left out, every other plugin still works.

    Attributes:
        name: The plugin name (the entry-point name, or ``NAME@DIST`` when two
            distributions ship the same entry-point name).
        distribution: The distribution that ships it.
        error: One line: the exception type and message, or what is wrong.
        stage: What failed: ``"load"`` (import), ``"register"`` (pluggy
            refused it, or it implements a hook that does not exist) or the
            name of the hook that raised or returned something unusable.
        traceback: The formatted traceback, for the plugin's author
            (``selfsup -v`` logs it); empty when there was no exception.
    """

    name: str
    distribution: str
    error: str
    stage: str = "load"
    traceback: str = field(default="", compare=False, repr=False)

    def describe(self) -> str:
        """The one line shown to users, e.g. in ``selfsup tasks``."""
        doing = {"load": "failed to load", "register": "failed to register"}.get(
            self.stage, f"failed in {self.stage}"
        )
        return f"plugin {self.name!r} ({self.distribution}) {doing}: {self.error}"


@dataclass(frozen=True)
class PluginConflict:
    """One name claimed by several plugins.

    Attributes:
        kind: ``"entry point"``, ``"task"`` or ``"encoder"``.
        name: The contested name.
        claims: ``(plugin, distribution)`` of every claimant.
        used: The plugin whose contribution is used (the built-in one), or
            ``None`` when the name is unusable until one claimant goes.
    """

    kind: str
    name: str
    claims: tuple[tuple[str, str], ...]
    used: str | None = None

    def describe(self) -> str:
        """One line naming every distribution and the way out."""
        def owners(claims: Iterable[tuple[str, str]]) -> str:
            return " and ".join(f"plugin {plugin!r} ({dist})" for plugin, dist in claims)

        def blocking(claims: Iterable[tuple[str, str]]) -> str:
            return " or ".join(f"{DISABLE_ENV}={plugin}" for plugin, _ in claims)

        if self.kind == "entry point":
            # Blocking the bare entry-point name would block every claimant: offer the qualified ones.
            qualified = [(p, d) for p, d in self.claims if p != self.name]
            return (f"CONFLICT: entry point {self.name!r} is shipped by {owners(self.claims)}; both are "
                    f"loaded. Uninstall one, or block one with {blocking(qualified)}.")
        if self.used is not None:
            others = [(p, d) for p, d in self.claims if p != self.used]
            return (f"CONFLICT: {owners(others)} also registers {self.kind} {self.name!r}; the built-in "
                    f"one from {dict(self.claims)[self.used]} is used. Rename it in its distribution, "
                    f"or block that plugin with {blocking(others)}.")
        return (f"CONFLICT: {self.kind} {self.name!r} is registered by {owners(self.claims)}; it cannot "
                f"be used until one goes. Uninstall one, or block one with {blocking(self.claims)}.")


@dataclass(eq=False)
class PluginHost:
    """A plugin manager plus what happened while loading it.

    Attributes:
        manager: The pluggy manager with every plugin that loaded registered.
        failures: Plugins that broke, each with its error; they never stop the
            other plugins from loading. Hook failures are added when the
            registries are built (at the end of :func:`build_plugin_host`).
        conflicts: Names claimed by several plugins.
        distributions: Registered plugin name -> distribution that ships it.
        blocked: Plugin names skipped on request.
    """

    manager: pluggy.PluginManager
    failures: list[PluginLoadFailure] = field(default_factory=list)
    conflicts: list[PluginConflict] = field(default_factory=list)
    distributions: dict[str, str] = field(default_factory=dict)
    blocked: frozenset[str] = frozenset()
    _registries: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def tasks(self) -> Registry[TaskSpec]:
        """Every task of this host's plugins, collected once and cached."""
        from selfsup_core.plugin.registry import collect_tasks  # registry imports this module

        if "task" not in self._registries:
            self._registries["task"] = collect_tasks(self)
        return self._registries["task"]

    @property
    def encoders(self) -> Registry[EncoderSpec]:
        """Every encoder of this host's plugins, collected once and cached."""
        from selfsup_core.plugin.registry import collect_encoders

        if "encoder" not in self._registries:
            self._registries["encoder"] = collect_encoders(self)
        return self._registries["encoder"]

    @property
    def augmentations(self) -> Registry[AugmentationSpec]:
        """Every augmentation of this host's plugins, collected once and cached."""
        from selfsup_core.plugin.registry import collect_augmentations

        if "augmentation" not in self._registries:
            self._registries["augmentation"] = collect_augmentations(self)
        return self._registries["augmentation"]

    def register(self, plugin: object, name: str, distribution: str = LOCAL_DISTRIBUTION) -> bool:
        """Register a plugin (a module or object with hook impls), e.g. one defined in-process.

        A plugin pluggy refuses, or one implementing a hook that does not
        exist (a typo such as ``selfsup_register_task``), is not registered:
        it is recorded in :attr:`failures` and the other plugins keep working.

        Returns:
            Whether the plugin was registered.
        """
        try:
            self.manager.register(plugin, name=name)
        except Exception as exc:  # noqa: BLE001 - pluggy's validation, or odd plugin objects
            if self.manager.get_plugin(name) is plugin:
                self.manager.unregister(name=name)
            self.record(PluginLoadFailure(name, distribution, one_line_error(exc), "register",
                                          traceback.format_exc()))
            return False
        unknown = _unknown_hooks(self.manager, plugin)
        if unknown:
            # pluggy's check_pending() would fail the whole manager: drop only this plugin.
            self.manager.unregister(name=name)
            self.record(PluginLoadFailure(name, distribution, "; ".join(unknown), "register"))
            return False
        if not self.manager.get_hookcallers(plugin):
            # A hook function without @hookimpl is invisible to pluggy: say so.
            self.manager.unregister(name=name)
            self.record(PluginLoadFailure(name, distribution, _no_hooks_message(plugin), "register"))
            return False
        self.distributions[name] = distribution
        self._registries.clear()  # collected before this plugin: collect again on next use
        return True

    def record(self, problem: PluginLoadFailure | PluginConflict) -> None:
        """Keep a failure or conflict and log it, once: recording it again does nothing."""
        known: list[Any] = self.failures if isinstance(problem, PluginLoadFailure) else self.conflicts
        if problem in known:
            return
        known.append(problem)
        logger.warning("%s", problem.describe())
        if isinstance(problem, PluginLoadFailure) and problem.traceback:
            # The author needs file:line; users see it with `selfsup -v`.
            logger.debug("traceback of plugin %r:\n%s", problem.name, problem.traceback.rstrip())


def one_line_error(exc: BaseException) -> str:
    """``Type: message`` on one line (pluggy's messages span several; a report line must not)."""
    text = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    if isinstance(exc, SystemExit):
        return f"SystemExit: the plugin called sys.exit({'' if exc.code is None else repr(exc.code)})"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _unknown_hooks(manager: pluggy.PluginManager, plugin: object) -> list[str]:
    known = [name for name in dir(hookspecs) if name.startswith(f"{PROJECT_NAME}_")]
    problems = []
    for caller in manager.get_hookcallers(plugin) or ():
        if caller.has_spec():
            continue
        if all(impl.optionalhook for impl in caller.get_hookimpls() if impl.plugin is plugin):
            continue
        message = f"implements {caller.name!r}, which is not a selfsup hook"
        close = difflib.get_close_matches(caller.name, known, n=1)
        if close:
            message += f" (did you mean {close[0]!r}?)"
        problems.append(message)
    return sorted(problems)


def _no_hooks_message(plugin: object) -> str:
    undecorated = sorted(n for n in dir(plugin) if n.startswith("selfsup_") and callable(getattr(plugin, n)))
    if undecorated:
        return (f"implements no selfsup hook: decorate {', '.join(undecorated)} with @selfsup_core.hookimpl")
    return "implements no selfsup hook (its module has no function decorated with @selfsup_core.hookimpl)"


def autoload_disabled() -> bool:
    """Whether ``SELFSUP_DISABLE_PLUGIN_AUTOLOAD`` is set to a true value (``0``/``false``/empty: not)."""
    return os.environ.get(AUTOLOAD_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def blocked_from_env() -> frozenset[str]:
    """Plugin names listed in ``SELFSUP_DISABLE_PLUGINS``."""
    raw = os.environ.get(DISABLE_ENV, "")
    return frozenset(part.strip() for part in raw.split(",") if part.strip())


def build_plugin_host(
    *,
    autoload: bool | None = None,
    blocked: Iterable[str] | None = None,
    plugins: Iterable[tuple[str, object] | tuple[str, object, str]] = (),
) -> PluginHost:
    """Build a new plugin host: load the ``selfsup`` entry points and collect tasks and encoders.

    Prefer :func:`get_plugin_host`, the process's shared host; build one of
    your own to use other plugins, e.g. in tests.

    Args:
        autoload: Load installed entry points: ``True`` all of them, ``False``
            none (an empty host, e.g. for tests). ``None`` loads the built-in
            plugins (distribution ``selfsup``) always, and third-party ones
            unless ``SELFSUP_DISABLE_PLUGIN_AUTOLOAD`` is set to a true value.
        blocked: Plugin names to skip. ``None`` reads ``SELFSUP_DISABLE_PLUGINS``.
        plugins: Extra ``(name, plugin)`` or ``(name, plugin, distribution)``
            to register after the entry points, e.g. in tests.

    Returns:
        A :class:`PluginHost`. Plugins that broke are in ``host.failures``,
        names claimed twice in ``host.conflicts``; each was logged once.

    Example:
        >>> host = build_plugin_host(autoload=False)
        >>> host.failures
        []
    """

    blocked_names = blocked_from_env() if blocked is None else frozenset(blocked)
    manager = pluggy.PluginManager(PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    host = PluginHost(manager=manager, blocked=blocked_names)
    if autoload is None:  # the built-ins always; third parties unless the variable says no
        _load_entry_points(host, third_party=not autoload_disabled())
    elif autoload:
        _load_entry_points(host)
    for name, plugin, *distribution in plugins:
        if name in host.blocked:
            continue
        host.register(plugin, name=name, distribution=distribution[0] if distribution else LOCAL_DISTRIBUTION)
    # Call the hooks now, so that every failure is known (and logged) once, here.
    _ = host.tasks, host.encoders, host.augmentations  # properties that collect and cache
    return host


def _load_entry_points(host: PluginHost, third_party: bool = True) -> None:
    # pluggy's load_setuptools_entrypoints stops at the first broken plugin
    # and skips a second distribution using the same name; this loads both.
    found: dict[str, list[tuple[importlib.metadata.EntryPoint, str]]] = {}
    for entry_point in importlib.metadata.entry_points(group=PROJECT_NAME):
        dist = entry_point.dist.name if entry_point.dist is not None else "<unknown>"
        if not third_party and dist != BUILTIN_DISTRIBUTION:
            continue
        claims = found.setdefault(entry_point.name, [])
        if all(dist != seen for _, seen in claims):  # one distribution seen twice on sys.path
            claims.append((entry_point, dist))
    for name, claims in found.items():
        loaded: list[tuple[str, str]] = []
        for entry_point, dist in claims:
            plugin_name = name
            if len(claims) > 1 and dist != BUILTIN_DISTRIBUTION:
                plugin_name = f"{name}@{dist}"  # distinct names, so both can be registered
            if {name, plugin_name} & host.blocked:
                logger.info("plugin %r (%s) blocked by %s", plugin_name, dist, DISABLE_ENV)
                continue
            loaded.append((plugin_name, dist))
            try:
                plugin = entry_point.load()
            except (Exception, SystemExit) as exc:  # noqa: BLE001 - any failure of third-party code
                host.record(PluginLoadFailure(plugin_name, dist, one_line_error(exc), "load", traceback.format_exc()))
                continue
            host.register(plugin, name=plugin_name, distribution=dist)
        if len(loaded) > 1:
            host.record(PluginConflict("entry point", name, tuple(loaded)))


@functools.cache
def _process_host() -> PluginHost:
    return build_plugin_host()


_chosen_host: contextvars.ContextVar[PluginHost | None] = contextvars.ContextVar("selfsup_plugin_host", default=None)


def get_plugin_host() -> PluginHost:
    """The process's plugin host: built on first use, then shared.

    Inside :func:`use_plugin_host` it is the host given there instead. Pass a
    host of your own (``pretrain(..., host=build_plugin_host(...))``) to use
    other plugins, for example in tests; ``get_plugin_host.cache_clear()``
    forgets the shared one, so that the next call builds it again.
    """
    chosen = _chosen_host.get()
    return chosen if chosen is not None else _process_host()


get_plugin_host.cache_clear = _process_host.cache_clear  # type: ignore[attr-defined]


@contextlib.contextmanager
def use_plugin_host(host: PluginHost | None) -> Iterator[PluginHost]:
    """Make ``host`` what :func:`get_plugin_host` returns inside the ``with`` block.

    For callers that cannot pass ``host=`` down to everything they run, such
    as ``selfsup_core.cli.main(argv, host=...)``. ``None`` changes nothing.
    """
    if host is None:
        yield get_plugin_host()
        return
    token = _chosen_host.set(host)
    try:
        yield host
    finally:
        _chosen_host.reset(token)
