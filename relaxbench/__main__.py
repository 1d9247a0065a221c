"""``python -m relaxbench`` is the ``relaxbench`` command."""

import sys

from relaxbench.cli import main

sys.exit(main())
