"""The app layer: the recipes' flags, run folders and ``--resume``, and the hub probe.

It sits above the core: modules here import the core (``bytemodels.*``), never the codecs or the recipes (only
``bytemodels/cli.py``, the command, does); the core imports none of it (``tests/test_layers_wall.py`` checks
both). Recipes, benchmarks and the command import from here and from the core.
"""

from __future__ import annotations


class CommandError(Exception):
    """A problem the user can fix; the ``bytemodels`` command prints it as one line, exit status 2."""
