"""A quiet library: PyTorch Lightning's banners, tips and known warnings, silenced in selfsup's jobs.

``pretrain()``, ``finetune()`` and ``evaluate()`` run inside
:func:`quiet_lightning`, from Python and from the command line alike: no
"GPU available" banner, no logger advertisement, no warnings about Lightning's
own internals or about choices selfsup makes on purpose. Errors, and warnings
that are not in :data:`KNOWN_WARNINGS`, still show. Pass ``verbose=True`` to a
job (``selfsup -v COMMAND`` on the command line) to see everything.

Levels and warning filters are restored when the job ends, so the caller's
own logging configuration is left as it was.

Importing this module imports neither torch nor Lightning; a quiet block
imports Lightning's packages first, because importing them sets their
loggers back to INFO (the first ``Fabric`` of ``evaluate --devices 2`` did,
and its "Initializing distributed" banner showed).

Example:
    >>> with quiet_lightning():
    ...     logging.getLogger("pytorch_lightning").isEnabledFor(logging.INFO)
    False
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

LIGHTNING_LOGGERS = ("pytorch_lightning", "lightning_fabric", "lightning", "lightning.pytorch", "lightning.fabric")
"""Loggers whose INFO messages (banners, tips, "`Trainer.fit` stopped") a quiet job hides."""

KNOWN_WARNINGS = (
    r".*LeafSpec.*",  # a deprecation inside Lightning's own code, nothing a user can act on
    r".*on_after_batch_transfer.*",  # selfsup's modules convert batches on the device, on purpose
    r".*litlogger.*",  # an advertisement
    r".*does not have many workers.*",  # images are decoded once into memory: loader workers would only copy
    r".*Checkpoint directory .* exists and is not empty.*",  # --resume and --overwrite reuse it knowingly
    r".*The number of training batches .* is smaller than the logging interval.*",  # tiny runs
    # A run stopped mid-epoch trains the rest of that epoch on a fresh shuffled pass, as documented.
    r".*resuming from a checkpoint that ended before the epoch ended.*",
)
"""Warning messages (regular expressions) a quiet job hides."""

F = TypeVar("F", bound=Callable[..., Any])


@contextmanager
def quiet_lightning(verbose: bool = False) -> Iterator[None]:
    """Hide Lightning's INFO messages and :data:`KNOWN_WARNINGS` inside the block.

    Args:
        verbose: Hide nothing (the block runs as it would without this).
    """
    if verbose:
        yield
        return
    for package in ("lightning_fabric", "pytorch_lightning"):
        if importlib.util.find_spec(package) is not None:
            importlib.import_module(package)
    loggers = [logging.getLogger(name) for name in LIGHTNING_LOGGERS]
    saved = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            if lg.getEffectiveLevel() < logging.WARNING:
                lg.setLevel(logging.WARNING)
        with warnings.catch_warnings():
            for pattern in KNOWN_WARNINGS:
                warnings.filterwarnings("ignore", pattern)
            yield
    finally:
        for lg, level in zip(loggers, saved):
            lg.setLevel(level)


def quiet_job(job: F) -> F:
    """Run ``job(config=None, **keywords)`` inside :func:`quiet_lightning`, verbose when
    the ``verbose`` keyword or ``config.verbose`` says so."""

    @functools.wraps(job)
    def run(config: Any = None, *args: Any, **keywords: Any) -> Any:
        verbose = keywords.get("verbose", getattr(config, "verbose", False))
        with quiet_lightning(verbose is True):
            return job(config, *args, **keywords)

    return run  # type: ignore[return-value]
