"""Task options, declared once as a frozen dataclass.

A task class names its options dataclass in ``Options``; the dataclass lists
each option once, with its type, default, help line and checks (see
:mod:`selfsup_core.options`). From that single declaration come validation
(on construction), ``task.options`` (typed attributes), what a run saves
(``task.options.to_dict()``, defaults included), ``selfsup tasks --options
NAME`` and the option tables of docs/tasks.md.

Example:
    >>> from dataclasses import dataclass
    >>> from selfsup_core.options import option, probability
    >>> @dataclass(frozen=True)
    ... class BlurOptions(TaskOptions):
    ...     p: float = option(0.5, help="probability of blurring an image", check=probability)
    >>> BlurOptions.parse({"p": 0.2}, what="task 'blur'").p
    0.2
    >>> BlurOptions.parse({"q": 1}, what="task 'blur'")
    Traceback (most recent call last):
    ...
    selfsup_core.errors.TaskOptionError: task 'blur' has no option 'q'; it accepts: p.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from selfsup_core.errors import TaskOptionError
from selfsup_core.options import Options, all_of, ascending, option, pair_from_scalar, within

TaskOptionsT = TypeVar("TaskOptionsT", bound="TaskOptions")


@dataclass(frozen=True)
class TaskOptions(Options):
    """Base class of every task's options (declare subclasses ``@dataclass(frozen=True)``).

    It declares no option: a task that names no ``Options`` of its own
    accepts none. Subclass it, or a built-in task's options, to add fields.
    """

    @classmethod
    def names(cls) -> list[str]:
        """The option names, in declaration order."""
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def parse(cls: type[TaskOptionsT], values: Mapping[str, Any], *, what: str) -> TaskOptionsT:
        """Build from keyword values; unknown names and bad values raise one-line errors.

        Args:
            values: Option name -> value (keyword arguments, a config's ``task_options``).
            what: Who is asking, in front of the message (``"task 'rotation'"``).

        Raises:
            TaskOptionError: An unknown option (the message lists the accepted
                ones) or a value its declaration rejects (naming the option).
        """
        return cls.from_mapping(values, source=what, error=TaskOptionError)


def options_class(factory: Callable[..., Any]) -> type[TaskOptions] | None:
    """The options dataclass a task factory declares (``factory.Options``), or None."""
    declared = getattr(factory, "Options", None)
    if isinstance(declared, type) and issubclass(declared, TaskOptions):
        return declared
    return None


def range_option(default: tuple[Any, Any], *, low: float, high: float, help: str) -> Any:  # noqa: A002
    """Declare a ``(min, max)`` option within ``[low, high]``; one number ``x`` means ``(x, x)``.

    Annotate the field ``tuple[float, float]`` (or ``tuple[int, int]`` for whole numbers).
    """
    return option(default, help=help, convert=pair_from_scalar, check=all_of(ascending, within(low, high)))
