"""``python -m draftalign.reference``: an alias of ``draftalign reference`` (the reference
drafter's run; its shipped provenance records this form of the command). The code is
:mod:`draftalign.book.reference`."""

import sys

if __name__ == "__main__":
    from .cli import main

    sys.exit(main(["reference", *sys.argv[1:]]))
