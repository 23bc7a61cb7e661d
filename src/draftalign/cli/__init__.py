"""The ``draftalign`` command: every entry point of the project, one subcommand each.

    draftalign pretrain --target HuggingFaceTB/SmolLM2-135M-Instruct --out drafts/pre
    draftalign generate --target ... --out data/answers --prompts distill --samples 2
    draftalign distill  --target ... --draft drafts/pre --data data/answers --out drafts/fkl --loss fkl
    draftalign evaluate --target ... --draft drafts/fkl --prompts eval --gamma 4
    draftalign export   --target ... --draft drafts/fkl --out drafts/fkl-hf --gguf drafts/fkl.gguf
    draftalign check    --target ... --draft drafts/fkl-hf
    draftalign bench    --target ... --draft drafts/fkl-hf --gammas 1,2,4
    draftalign book     --profile cpu --build          # the chapters (the book's own commands)
    draftalign reference --stages kd                   # the reference drafter
    draftalign study    --stages topk,offline          # the loss study
    draftalign recipe   --loss fkl --steps 250         # one distillation recipe, measured

Reads a target (hub id or folder) and the stage's inputs; writes what each subcommand
names. Every argument is checked before any model loads, so a typo costs a second, not a
training run. The library's subcommands (:mod:`draftalign.cli.library`) call the library
only; the book's (:mod:`draftalign.cli.book`) import :mod:`draftalign.book` when they run.
``python -m draftalign.generate`` and ``python -m draftalign.reference`` are aliases of
``draftalign generate`` and ``draftalign reference`` (shipped provenance records them).
"""

from __future__ import annotations

import argparse
import sys

import draftalign.cli.book as book_commands
from . import library

__all__ = ["main", "build_parser", "EXAMPLES"]

EXAMPLES = {**library.EXAMPLES, **book_commands.EXAMPLES}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="draftalign", description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="examples:\n  " + "\n  ".join(EXAMPLES.values()))
    sub = ap.add_subparsers(dest="command", required=True)
    for module in (library, book_commands):
        for name, (help_text, add) in module.COMMANDS.items():
            p = sub.add_parser(name, help=help_text, description=help_text, epilog=f"example:\n  {EXAMPLES[name]}",
                               formatter_class=argparse.RawDescriptionHelpFormatter)
            if module is library:
                library.model_options(p)
            add(p)
            p.set_defaults(handler=getattr(module, f"cmd_{name}"))
    return ap


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    book_commands.check_book(ap, args)
    code = args.handler(args)
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
