"""``python -m bytemodels``: the same as the ``bytemodels`` command."""

import sys

from bytemodels.cli import main

sys.exit(main())
