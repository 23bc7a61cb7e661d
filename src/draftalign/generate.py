"""``python -m draftalign.generate``: an alias of ``draftalign generate`` (the target answers
prompts; the shipped sets' provenance records this form of the command). The code is
:mod:`draftalign.answers`."""

import sys

if __name__ == "__main__":
    from .cli import main

    sys.exit(main(["generate", *sys.argv[1:]]))
