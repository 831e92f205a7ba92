"""Typed options, declared once: a dataclass is the single source of validation,
config files, command-line flags, ``selfsup tasks --options`` and the docs tables.

Task options and job settings (``pretrain``, ``finetune``, ``evaluate``,
``bench``) are all declared this way. Each field is typed and documented with
:func:`option`; values from YAML files, ``--flag VALUE`` or keyword arguments
are checked against the annotation when the dataclass is built, so a bad value
is one clear line naming the option, never a traceback from deep inside.

Example:
    >>> @dataclass(frozen=True)
    ... class BlurOptions(Options):
    ...     sigma: tuple[float, float] = option((0.1, 2.0), help="blur sigma (min, max)", check=ascending)
    ...     p: float = option(0.5, help="probability of blurring an image", check=probability)
    >>> BlurOptions(p=0.2).sigma
    (0.1, 2.0)
    >>> BlurOptions.from_mapping({"p": 2}, source="blur")
    Traceback (most recent call last):
    ...
    selfsup_core.errors.ConfigError: blur: p must be in [0, 1], got 2.0
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import os
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from selfsup_core.errors import ConfigError

OptionsT = TypeVar("OptionsT", bound="Options")
Check = Callable[[str, Any], Any]
"""A validator: ``check(name, value)`` returns the (possibly normalised) value or raises ValueError."""

_MISSING = dataclasses.MISSING


def option(
    default: Any = _MISSING,
    *,
    help: str,  # noqa: A002 - the word users know from argparse
    check: Check | None = None,
    convert: Callable[[Any], Any] | None = None,
    default_text: str | None = None,
    default_factory: Callable[[], Any] | None = None,
    metavar: str | None = None,
) -> Any:
    """Declare one option: its default, a one-line help and optional checks.

    Args:
        default: The default value (immutable; use ``default_factory`` for dicts).
        help: One line for ``--help``, ``selfsup tasks --options`` and the docs.
        check: Further validation after the type check, e.g. :func:`probability`.
        convert: Applied to the raw value before the type check, e.g. to read
            a single number as a ``(min, max)`` pair.
        default_text: How the default is chosen when it is not a fixed value
            (``None`` in the dataclass), shown instead of ``None``.
        default_factory: As for :func:`dataclasses.field`.
        metavar: The value's name in ``--help`` (``DIR``, ``FILE``); default from the type.
    """
    metadata = {"help": help, "check": check, "convert": convert, "default_text": default_text,
                "metavar": metavar}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True)
class OptionInfo:
    """One declared option, as shown to users."""

    name: str
    type_text: str
    default_text: str
    help: str


@dataclass(frozen=True)
class Options:
    """Base class of option dataclasses (declare subclasses ``@dataclass(frozen=True)``).

    Every field is converted and checked against its annotation on
    construction; :meth:`validate` adds checks that involve several fields.
    Subclasses extend their parent's options by declaring more fields.
    """

    def __post_init__(self) -> None:
        hints = _type_hints(type(self))
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            convert = field.metadata.get("convert")
            if convert is not None:
                value = convert(value)
            value = coerce(field.name, value, hints[field.name])
            check = field.metadata.get("check")
            if check is not None and value is not None:
                value = check(field.name, value)
            object.__setattr__(self, field.name, value)
        self.validate()

    def validate(self) -> None:
        """Checks across fields; raise ``ValueError`` naming the options at fault."""

    @classmethod
    def from_mapping(cls: type[OptionsT], values: Mapping[str, Any], *, source: str,
                     error: type[ConfigError] = ConfigError) -> OptionsT:
        """Build from a mapping (a YAML file, parsed flags, keyword arguments).

        Keys may use ``-`` or ``_``. Unknown keys and bad values raise ``error``
        (a :class:`~selfsup_core.errors.ConfigError`) as one line that starts
        with ``source`` and, for unknown keys, lists the accepted ones.
        """
        if not isinstance(values, Mapping):
            raise error(f"{source}: expected a mapping of option names to values, got {values!r}.")
        known = [f.name for f in dataclasses.fields(cls)]
        cleaned = {str(k).replace("-", "_"): v for k, v in values.items()}
        unknown = [name for name in cleaned if name not in known]
        if unknown:
            close = difflib.get_close_matches(unknown[0], known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise error(f"{source} has no option {', '.join(map(repr, unknown))}; "
                        f"it accepts: {', '.join(known) or 'no options'}.{hint}")
        try:
            return cls(**cleaned)._with_given(frozenset(cleaned))
        except ValueError as exc:
            raise error(f"{source}: {exc}") from None

    @property
    def given(self) -> frozenset[str]:
        """The options set on purpose: the keys of the mapping it was built from (:meth:`from_mapping`,
        :meth:`updated`), or for an object built directly, those that differ from their defaults.

        ``--resume`` and ``--like`` take the run's value of every option not given,
        so an option given at its default value still counts.

        Example:
            >>> BlurOptions.from_mapping({"p": 0.5}, source="blur").given
            frozenset({'p'})
        """
        explicit: frozenset[str] | None = self.__dict__.get("_given")
        if explicit is not None:
            return explicit
        return frozenset(field.name for field in dataclasses.fields(self)
                         if getattr(self, field.name) != _declared_default(field))

    def _with_given(self: OptionsT, names: frozenset[str]) -> OptionsT:
        object.__setattr__(self, "_given", names)  # not a field: not compared, printed or saved
        return self

    def replace(self: OptionsT, **changes: Any) -> OptionsT:
        """A copy with ``changes`` applied (and checked); what counts as :attr:`given` is unchanged."""
        return dataclasses.replace(self, **changes)._with_given(self.given)

    def updated(self: OptionsT, values: Mapping[str, Any], *, source: str) -> OptionsT:
        """A copy with ``values`` applied, checked as :meth:`from_mapping` checks them; their keys
        join :attr:`given`."""
        current = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        cleaned = {str(k).replace("-", "_"): v for k, v in values.items()} if isinstance(values, Mapping) else values
        new = type(self).from_mapping({**current, **cleaned} if isinstance(cleaned, dict) else cleaned,
                                      source=source)
        return new._with_given(self.given | frozenset(cleaned))

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON values: tuples become lists."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def describe(cls) -> list[OptionInfo]:
        """Name, type, default and help of every option, in declaration order."""
        hints = _type_hints(cls)
        infos = []
        for field in dataclasses.fields(cls):
            default = _declared_default(field)
            text = field.metadata.get("default_text") or ("required" if default is _MISSING
                                                           else _value_text(default))
            infos.append(OptionInfo(field.name, type_text(hints[field.name]), text,
                                    field.metadata.get("help", "")))
        return infos


def _declared_default(field: dataclasses.Field[Any]) -> Any:
    """A field's declared default (``default_factory`` called), or ``_MISSING`` for a required one."""
    if field.default is not _MISSING:
        return field.default
    if field.default_factory is not _MISSING:
        return field.default_factory()
    return _MISSING


# -- types -----------------------------------------------------------------------------


def coerce(name: str, value: Any, annotation: Any) -> Any:
    """``value`` checked against ``annotation`` (and converted where lossless).

    Supported: ``bool``, ``int``, ``float`` (finite), ``str``, ``X | None``,
    ``Literal[...]``, ``tuple[X, X]`` / ``tuple[X, ...]`` / ``list[X]`` (from
    lists), ``dict[str, X]`` and ``Any``.

    Raises:
        ValueError: One line naming ``name``, the expected type and the value.
    """
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for candidate in inner:
            try:
                return coerce(name, value, candidate)
            except ValueError as exc:
                errors.append(exc)
        raise errors[0] if len(errors) == 1 else ValueError(
            f"{name} must be {type_text(annotation)}, got {value!r}")
    if origin is Literal:
        if value not in args or isinstance(value, bool) != any(isinstance(a, bool) for a in args):
            raise ValueError(f"{name} must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be a whole number, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
        return float(value)
    if annotation is str:
        if isinstance(value, os.PathLike):  # paths from Python callers
            value = os.fspath(value)
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{name} must be {type_text(annotation)}, written like "
                             f"{_example(annotation, value)}; got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ValueError(f"{name} must be {type_text(annotation)}, written like "
                                 f"{_example(annotation)}; got {_plain(value)!r}")
            items = [coerce(f"{name}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args))]
        else:
            item = args[0] if args else Any
            items = [coerce(f"{name}[{i}]", v, item) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or annotation is dict:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise ValueError(f"{name} must be a mapping of names to values, got {value!r}")
        item = args[1] if len(args) == 2 else Any
        return {k: coerce(f"{name}.{k}", v, item) for k, v in value.items()}
    raise TypeError(f"option {name}: unsupported annotation {annotation!r}")  # a bug in a declaration


def type_text(annotation: Any) -> str:
    """A short, readable name of an option's type (``number``, ``[number, number]``...)."""
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is Any:
        return "any"
    if origin in (Union, types.UnionType):
        inner = [type_text(a) for a in args if a is not type(None)]
        return " or ".join(inner) + (" or null" if type(None) in args else "")
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    simple = {bool: "true/false", int: "integer", float: "number", str: "string", dict: "mapping"}
    if annotation in simple:
        return simple[annotation]
    if origin in (tuple, list):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return "[" + ", ".join(type_text(a) for a in args) + "]"
        return f"list of {type_text(args[0]) if args else 'any'}"
    if origin is dict:
        return "mapping"
    return str(annotation)


def _example(annotation: Any, value: Any = None) -> str:
    """How a list of ``annotation`` is written: ``value`` itself when it is the
    right items without brackets (``0.7,1.0`` -> ``[0.7, 1.0]``), else a sample."""
    args = get_args(annotation)
    if isinstance(value, str) and "," in value:
        parts = [part.strip() for part in value.strip("()").split(",")]
        fixed = get_origin(annotation) is tuple and args and args[-1] is not Ellipsis
        if all(parts) and (not fixed or len(parts) == len(args)):
            return "[" + ", ".join(parts) + "]"
    samples = {int: "1", float: "0.5", str: "a"}
    if args and args[-1] is not Ellipsis:
        return "[" + ", ".join(samples.get(a, "...") for a in args) + "]"
    return f"[{samples.get(args[0], '...') if args else '...'}, ...]"


def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _plain(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _value_text(value: Any) -> str:
    return yaml.safe_dump(_plain(value), default_flow_style=True).strip().removesuffix("...").strip()


# -- validators for `check=` --------------------------------------------------------------


def probability(name: str, value: float) -> float:
    """A number in ``[0, 1]``."""
    if not 0 <= value <= 1:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return value


def positive(name: str, value: float) -> float:
    """A number above 0."""
    if not value > 0:
        raise ValueError(f"{name} must be above 0, got {value!r}")
    return value


def at_least(low: float) -> Check:
    """A number of at least ``low``."""
    def check(name: str, value: float) -> float:
        if value < low:
            raise ValueError(f"{name} must be at least {low}, got {value!r}")
        return value
    return check


def skip_count(name: str, value: int | str) -> int | str:
    """``"all"`` or a whole number of at least 0 (a U-Net's ``drop_skips``: the encoder sets the most)."""
    return value if value == "all" else at_least(0)(name, value)


def within(low: float, high: float) -> Check:
    """A number, or every number of a pair or list, in ``[low, high]``."""
    def check(name: str, value: Any) -> Any:
        values = value if isinstance(value, (tuple, list)) else (value,)
        if not all(low <= v <= high for v in values):
            raise ValueError(f"{name} must lie in [{low}, {high}], got {_plain(value)!r}")
        return value
    return check


def ascending(name: str, value: tuple[float, float]) -> tuple[float, float]:
    """A ``(min, max)`` pair with ``min <= max``."""
    if value[0] > value[1]:
        raise ValueError(f"{name} must be (min, max) with min <= max, got {_plain(value)!r}")
    return value


def pair_from_scalar(value: Any) -> Any:
    """For ``convert=``: a single number ``x`` means the pair ``(x, x)``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (value, value)
    return value


def all_of(*checks: Check) -> Check:
    """Run several checks in order."""
    def check(name: str, value: Any) -> Any:
        for one in checks:
            value = one(name, value)
        return value
    return check


def above(low: float) -> Check:
    """A number, or every number of a pair or list, strictly above ``low``."""
    def check(name: str, value: Any) -> Any:
        values = value if isinstance(value, (tuple, list)) else (value,)
        if not all(v > low for v in values):
            raise ValueError(f"{name} must be above {low}, got {_plain(value)!r}")
        return value
    return check


def one_of(*choices: Any) -> Check:
    """One of a few allowed values of the annotated type (``one_of(4, 6)``: "4 or 6")."""
    text = ", ".join(map(str, choices[:-1])) + f" or {choices[-1]}" if len(choices) > 1 else str(choices[0])

    def check(name: str, value: Any) -> Any:
        if value not in choices:
            raise ValueError(f"{name} must be {text}, got {value!r}")
        return value
    return check


# -- command line -------------------------------------------------------------------------


_EXPONENT_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


def parse_value(text: str) -> Any:
    """A command-line value, typed the YAML way: ``6`` -> 6, ``0.5`` -> 0.5, ``[0.7, 1.0]`` -> list."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str) and _EXPONENT_NUMBER.fullmatch(value.strip()):
        return float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string; users mean a number
    return value


def add_option_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type[Options],
    *,
    exclude: tuple[str, ...] = (),
    flags: Mapping[str, str] | None = None,
) -> None:
    """Add one ``--flag`` per option of ``cls``, with its help and its default.

    Flags default to :data:`argparse.SUPPRESS`, so only options given on the
    command line override a config file. Booleans get ``--x/--no-x``.

    Args:
        parser: Where to add the flags.
        cls: The options dataclass.
        exclude: Option names that get no flag.
        flags: Option name -> flag, where the flag is not ``--name-with-dashes``.
    """
    hints = _type_hints(cls)
    for info, field in zip(cls.describe(), dataclasses.fields(cls)):
        if info.name in exclude:
            continue
        flag = (flags or {}).get(info.name, "--" + info.name.replace("_", "-"))
        help_text = f"{info.help} (default: {info.default_text})".replace("%", "%%")
        if hints[info.name] in (bool, bool | None, typing.Optional[bool]):
            parser.add_argument(flag, dest=info.name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=help_text)
        else:
            parser.add_argument(flag, dest=info.name, type=parse_value, default=argparse.SUPPRESS,
                                metavar=field.metadata.get("metavar") or _metavar(hints[info.name]),
                                help=help_text)


def _metavar(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _metavar(inner[0]) if len(inner) == 1 else "VALUE"
    if origin is Literal:
        return "{" + ",".join(map(str, args)) + "}"
    return {int: "N", float: "X", str: "TEXT"}.get(annotation, "VALUE")


def options_table(cls: type[Options]) -> str:
    """A Markdown table of the options of ``cls`` (what docs/tasks.md shows)."""
    lines = ["| option | type | default | meaning |", "|---|---|---|---|"]
    for info in cls.describe():
        lines.append(f"| `{info.name}` | {info.type_text} | `{info.default_text}` | {info.help} |")
    return "\n".join(lines)
