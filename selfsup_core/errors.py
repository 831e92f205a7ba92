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


class OutputError(SelfsupError):
    """A run folder or file that cannot be written: read-only, or no space left on the device."""


class CheckpointError(SelfsupError):
    """A checkpoint that is unreadable or was not written by selfsup (nothing in it is run)."""


class DivergenceError(SelfsupError):
    """Training met a non-finite loss or weights: it stopped, kept the last good checkpoint, exported nothing."""


class RunInterrupted(SelfsupError):
    """SIGINT or SIGTERM stopped a run, after saving a checkpoint where one could be saved.

    Attributes:
        exit_code: What the command line exits with: 128 + the signal (130 for SIGINT, 143 for SIGTERM).
    """

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
