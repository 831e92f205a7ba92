"""The plugin contract: every hook a ``selfsup`` plugin may implement.

A plugin is any module or object with functions named like these hooks and
decorated with :data:`selfsup_core.hookimpl`. Third-party packages expose it
through an entry point in the ``selfsup`` group::

    [project.entry-points.selfsup]
    jigsaw = "selfsup_jigsaw"

Hooks return lists of small typed specs (see :mod:`selfsup_core.registry`),
so that a plugin can contribute several things at once and the host can
validate names and find conflicts before anything is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from selfsup_core.plugin.markers import hookspec

if TYPE_CHECKING:
    from selfsup_core.plugin.registry import EncoderSpec, TaskSpec


@hookspec
def selfsup_register_tasks() -> list[TaskSpec]:
    """Contribute pretext tasks.

    Called once when the task registry is built. Each returned
    :class:`~selfsup_core.registry.TaskSpec` names a task, gives a factory that
    builds it from keyword options and a one-line summary for ``selfsup tasks``.

    :return: The tasks this plugin provides (may be empty).

    Example::

        @selfsup_core.hookimpl
        def selfsup_register_tasks():
            return [TaskSpec("jigsaw", JigsawTask, "Predict the quadrant permutation.")]
    """


@hookspec
def selfsup_register_encoders() -> list[EncoderSpec]:
    """Contribute encoder architectures, selectable with ``--arch NAME``.

    Called once when the encoder registry is built. Each returned
    :class:`~selfsup_core.registry.EncoderSpec` names an architecture and gives
    a factory returning a module that follows the
    :class:`~selfsup_core.encoders.Encoder` protocol.

    :return: The encoders this plugin provides (may be empty).
    """
