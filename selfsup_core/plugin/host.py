"""Building the plugin manager and loading plugins from entry points.

Use :func:`build_plugin_host` to get a fresh, fully loaded manager. There is
no module-level manager: each caller (and each test) builds its own.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

import pluggy

from selfsup_core.plugin import hookspecs
from selfsup_core.plugin.markers import PROJECT_NAME

logger = logging.getLogger(__name__)

DISABLE_ENV = "SELFSUP_DISABLE_PLUGINS"
"""Comma-separated entry-point names that are not loaded."""

AUTOLOAD_ENV = "SELFSUP_DISABLE_PLUGIN_AUTOLOAD"
"""When set to a non-empty value, no entry point is loaded at all."""


@dataclass(frozen=True)
class PluginLoadFailure:
    """An entry point that could not be imported or registered."""

    name: str
    distribution: str
    error: str


@dataclass
class PluginHost:
    """A plugin manager plus what happened while loading it.

    Attributes:
        manager: The pluggy manager with every plugin that loaded registered.
        failures: Entry points that failed, each with its error; they never
            stop the other plugins from loading.
        distributions: Registered plugin name -> distribution that ships it.
        blocked: Entry-point names skipped on request.
    """

    manager: pluggy.PluginManager
    failures: list[PluginLoadFailure] = field(default_factory=list)
    distributions: dict[str, str] = field(default_factory=dict)
    blocked: frozenset[str] = frozenset()

    def register(self, plugin: object, name: str, distribution: str = "<local>") -> None:
        """Register an in-process plugin (a module or object with hook impls)."""
        self.manager.register(plugin, name=name)
        self.distributions[name] = distribution


def blocked_from_env() -> frozenset[str]:
    """Entry-point names listed in ``SELFSUP_DISABLE_PLUGINS``."""
    raw = os.environ.get(DISABLE_ENV, "")
    return frozenset(part.strip() for part in raw.split(",") if part.strip())


def build_plugin_host(
    *,
    autoload: bool | None = None,
    blocked: Iterable[str] | None = None,
    plugins: Iterable[tuple[str, object]] = (),
) -> PluginHost:
    """Build a new plugin manager, load the ``selfsup`` entry points and check it.

    Args:
        autoload: Load entry points of installed distributions. ``None`` means
            yes unless ``SELFSUP_DISABLE_PLUGIN_AUTOLOAD`` is set.
        blocked: Entry-point names to skip. ``None`` reads
            ``SELFSUP_DISABLE_PLUGINS``.
        plugins: Extra ``(name, plugin)`` pairs to register, e.g. in tests.

    Returns:
        A :class:`PluginHost`. Plugins that fail to import are reported in
        ``host.failures`` (and logged); every other plugin still works.

    Example:
        >>> host = build_plugin_host(autoload=False)
        >>> host.failures
        []
    """
    if autoload is None:
        autoload = not os.environ.get(AUTOLOAD_ENV)
    blocked_names = blocked_from_env() if blocked is None else frozenset(blocked)
    manager = pluggy.PluginManager(PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    host = PluginHost(manager=manager, blocked=blocked_names)
    if autoload:
        _load_entry_points(host)
    for name, plugin in plugins:
        host.register(plugin, name=name)
    # A hook implementation whose name matches no spec is a typo in a plugin.
    manager.check_pending()
    return host


def _load_entry_points(host: PluginHost) -> None:
    # pluggy's load_setuptools_entrypoints stops at the first broken plugin;
    # this loop reports it and keeps going.
    for entry_point in importlib.metadata.entry_points(group=PROJECT_NAME):
        dist = entry_point.dist.name if entry_point.dist is not None else "<unknown>"
        if entry_point.name in host.blocked:
            logger.info("plugin %r blocked by %s", entry_point.name, DISABLE_ENV)
            continue
        if host.manager.get_plugin(entry_point.name) is not None:
            continue  # the same distribution seen twice on sys.path
        try:
            plugin = entry_point.load()
            host.register(plugin, name=entry_point.name, distribution=dist)
        except Exception as exc:  # noqa: BLE001 - any failure of third-party code
            failure = PluginLoadFailure(entry_point.name, dist, f"{type(exc).__name__}: {exc}")
            host.failures.append(failure)
            logger.warning("plugin %r from %s failed to load: %s", failure.name, dist, failure.error)


@functools.cache
def get_plugin_host() -> PluginHost:
    """The process's plugin host: built on first use, then shared.

    Pass a host of your own (``pretrain(..., host=build_plugin_host(...))``)
    to use other plugins, for example in tests.
    """
    return build_plugin_host()
