"""``python -m gnn_align.cli``: the same as the ``gnn-align`` console script."""

import sys

from . import main

sys.exit(main())
