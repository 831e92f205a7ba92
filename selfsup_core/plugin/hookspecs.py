"""The plugin contract: every hook a ``selfsup`` plugin may implement.

A plugin is any module or object with functions named like these hooks and
decorated with :data:`selfsup_core.hookimpl`. Third-party packages expose it
through an entry point in the ``selfsup`` group::

    [project.entry-points.selfsup]
    jigsaw = "selfsup_jigsaw"

Hooks return lists (of task classes, or of small typed specs, see
:mod:`selfsup_core.plugin.registry`), so that a plugin can contribute several
things at once and the host can validate names and find conflicts before
anything is used. A hook that raises or returns anything else is reported as a
failure of its plugin alone; the other plugins keep working.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from selfsup_core.plugin.markers import hookspec

if TYPE_CHECKING:
    from selfsup_core.augment.base import Augmentation
    from selfsup_core.plugin.registry import AugmentationSpec, EncoderSpec, TaskSpec
    from selfsup_core.tasks.base import PretextTask


@hookspec
def selfsup_register_tasks() -> list[type[PretextTask] | TaskSpec]:
    """Contribute pretext tasks.

    Called once per plugin host, when its task registry is built. Return the
    task classes: each :class:`~selfsup_core.tasks.base.PretextTask` subclass
    is registered under its ``name`` attribute with its ``summary`` (see
    :meth:`~selfsup_core.plugin.registry.TaskSpec.from_task`), so the name is
    written once. A :class:`~selfsup_core.plugin.registry.TaskSpec` is
    accepted too, for a factory that is not the class itself.

    :return: The tasks this plugin provides (may be empty; ``None`` counts as empty).

    Example::

        @selfsup_core.hookimpl
        def selfsup_register_tasks():
            return [JigsawTask]  # or [TaskSpec("jigsaw", make_jigsaw, "Put shuffled tiles back.")]
    """


@hookspec
def selfsup_register_encoders() -> list[EncoderSpec]:
    """Contribute encoder architectures, selectable with ``--arch NAME``.

    Called once per plugin host, when its encoder registry is built. Each returned
    :class:`~selfsup_core.registry.EncoderSpec` names an architecture and gives
    a factory returning a module that follows the
    :class:`~selfsup_core.encoders.Encoder` protocol.

    :return: The encoders this plugin provides (may be empty).
    """


@hookspec
def selfsup_register_augmentations() -> list[type[Augmentation] | AugmentationSpec]:
    """Contribute batch-wise augmentations, usable by every task and by ``finetune --augment``.

    Called once per plugin host, when its augmentation registry is built.
    Return :class:`~selfsup_core.augment.base.Augmentation` subclasses (each
    registered under its ``name`` with its ``summary``) or
    :class:`~selfsup_core.plugin.registry.AugmentationSpec` objects.

    :return: The augmentations this plugin provides (may be empty).

    Example::

        @selfsup_core.hookimpl
        def selfsup_register_augmentations():
            return [Posterize]
    """
