"""``python -m fastactor``: the same command line as the ``fastactor`` script."""

import sys

from .cli import main

sys.exit(main())
