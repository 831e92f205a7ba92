"""Exceptions that mean "the user asked for something that cannot be done".

The command line prints these as one message, without a traceback, and exits
non-zero. Anything else is a bug and keeps its traceback.
"""


class SelfsupError(Exception):
    """Base class of every user-facing error raised by selfsup."""


class UnknownTaskError(SelfsupError, KeyError):
    """A task name that no installed plugin provides."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class TaskConflictError(SelfsupError):
    """Two plugins registered the same task name."""


class DataError(SelfsupError):
    """Missing, empty or unreadable data."""


class EncoderFileError(SelfsupError):
    """An encoder file that is missing, malformed or of another architecture."""


class ConfigError(SelfsupError):
    """A bad configuration value or file."""


class TaskOptionError(ConfigError, ValueError):
    """A task option the task does not know, or a value it rejects.

    A :class:`ValueError` too, so building a task class directly with a bad
    value (``RotationTask(num_transforms=5)``) raises what Python code expects.
    """


class PluginError(SelfsupError):
    """A plugin that broke while loading or registering (reported, never fatal to others)."""
