"""The pluggy markers of the ``selfsup`` project.

Kept in a module of their own so that plugins can import them without pulling
in torch or Lightning.
"""

import pluggy

PROJECT_NAME = "selfsup"
"""The pluggy project name, which is also the entry-point group."""

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
