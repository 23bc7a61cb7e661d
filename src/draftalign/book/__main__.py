"""``python -m draftalign.book``: an alias of ``draftalign book`` (run the chapters)."""

import sys

from ..cli import main

sys.exit(main(["book", *sys.argv[1:]]))
