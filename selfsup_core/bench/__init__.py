"""Benchmarks of ``selfsup bench``, and the timing helper they share.

``time_call`` is public so that task packages can time their own
comparisons the same way (the crappify package does).
"""

from selfsup_core.bench.timing import time_call

__all__ = ["time_call"]
