"""How messages count things: ``1 epoch``, ``2 epochs``.

Example:
    >>> counted(1, "file"), counted(3, "epoch")
    ('1 file', '3 epochs')
"""

from __future__ import annotations


def counted(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1 (English nouns that take an ``s``)."""
    return f"{n} {noun}{'' if n == 1 else 's'}"
