"""``python -m draftalign.cli``: the ``draftalign`` command."""

import sys

from . import main

sys.exit(main())
