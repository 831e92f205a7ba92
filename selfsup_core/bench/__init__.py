"""Benchmarks run by ``selfsup bench ...``: each submodule exposes ``add_arguments`` and ``run``."""
