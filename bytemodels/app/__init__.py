"""The app layer: the ``bytemodels`` command, the recipes' flags, run folders and ``--resume``, the hub probe,
and the codec a checkpoint recorded.

It sits above the core: modules here import the core (``bytemodels.*``) and the codecs (``bytecodecs``); the
core imports neither (``tests/test_layers_wall.py`` checks it). Recipes and benchmarks import from here and
from the core.
"""

from __future__ import annotations


class CommandError(Exception):
    """A problem the user can fix; the ``bytemodels`` command prints it as one line, exit status 2."""
