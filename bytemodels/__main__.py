"""``python -m bytemodels``: the same as the ``bytemodels`` command."""

import sys

from bytemodels.app.cli import main

sys.exit(main())
