"""The pretraining corpus of the draft, and packing text into fixed-length blocks.

Reads, offline: the docstrings of Python's standard library (English prose about
programming, present on every machine that runs this package, so the corpus is the
same wherever the same Python version runs); with network access (the ``gpu``
profile): a public web-text corpus streamed through ``datasets``. Writes nothing;
Chapter 2 packs the texts with the target's tokenizer and pretrains the draft on them.
"""

from __future__ import annotations

import ast
import hashlib
import sysconfig
from pathlib import Path

import torch

__all__ = ["CORPORA", "stdlib_docstrings", "package_docstrings", "web_texts", "pretraining_texts", "pack_blocks", "texts_digest"]


def stdlib_docstrings(*, min_chars: int = 200, max_texts: int | None = None) -> list[str]:
    """English text that ships with Python: the reference manual's topics bundled for
    ``help()`` (``pydoc_data.topics``), then the module, class and function docstrings of
    the standard library; each at least ``min_chars`` long, whitespace-normalised,
    deduplicated, in a fixed order. Tests and site-packages are skipped."""
    from pydoc_data.topics import topics

    root = Path(sysconfig.get_paths()["stdlib"])
    texts, seen = [], set()
    for key in sorted(topics):
        for part in topics[key].split("\n\n\n"):
            text = "\n".join(" ".join(p.split()) for p in part.split("\n\n") if p.strip())
            if len(text) >= min_chars and text not in seen:
                seen.add(text)
                texts.append(text)
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).parts
        if rel[0] in ("site-packages", "test", "idlelib", "lib2to3") or "tests" in rel:
            continue
        for text in _docstrings_of(path, min_chars):
            if text in seen:
                continue
            seen.add(text)
            texts.append(text)
            if max_texts is not None and len(texts) >= max_texts:
                return texts
    return texts


def _docstrings_of(path: Path, min_chars: int):
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc:
                text = "\n".join(" ".join(p.split()) for p in doc.split("\n\n") if p.strip())
                if len(text) >= min_chars:
                    yield text


def package_docstrings(*, min_chars: int = 200, max_texts: int | None = None) -> list[str]:
    """A larger offline corpus: :func:`stdlib_docstrings`, then the docstrings of every
    package installed beside this one (``site-packages``: numpy, pandas, torch,
    transformers, ... ; tests skipped), deduplicated, in a fixed order. About 9M tokens of
    English prose about programming with this package's dependencies; which texts it
    holds depends on the installed versions, so record :func:`texts_digest` with it."""
    texts = stdlib_docstrings(min_chars=min_chars, max_texts=max_texts)
    seen = set(texts)
    root = Path(sysconfig.get_paths()["purelib"])
    for path in sorted(root.rglob("*.py")):
        if max_texts is not None and len(texts) >= max_texts:
            break
        rel = path.relative_to(root).parts
        if any(part in ("test", "tests", "testing") for part in rel):
            continue
        for text in _docstrings_of(path, min_chars):
            if text not in seen:
                seen.add(text)
                texts.append(text)
    return texts[:max_texts] if max_texts is not None else texts


def web_texts(name: str = "HuggingFaceFW/fineweb-edu", *, config: str | None = "sample-10BT",
              n_texts: int = 10_000, min_chars: int = 300) -> list[str]:
    """The first ``n_texts`` documents of a public web-text corpus, streamed (no full
    download). Raises ``RuntimeError`` naming the corpus when the hub is unreachable."""
    import datasets

    from .models import hub_reachable

    if not hub_reachable():
        raise RuntimeError(f"could not stream {name!r}: the Hugging Face hub is unreachable; "
                           f"offline, use draftalign.corpus.stdlib_docstrings()")
    try:
        stream = datasets.load_dataset(name, config, split="train", streaming=True)
        texts = []
        for row in stream:
            if len(row["text"]) >= min_chars:
                texts.append(row["text"])
                if len(texts) >= n_texts:
                    break
        return texts
    except Exception as exc:
        raise RuntimeError(f"could not stream {name!r} from the Hugging Face hub ({type(exc).__name__}); "
                           f"offline, use draftalign.corpus.stdlib_docstrings()") from exc


CORPORA = ("stdlib", "docs", "web")


def pretraining_texts(source: str, *, n_texts: int | None = None) -> list[str]:
    """Texts for pretraining by name: ``"stdlib"`` (offline, Python's own docs), ``"docs"``
    (offline, those and every installed package's docstrings) or ``"web"`` (streamed)."""
    if source == "stdlib":
        return stdlib_docstrings(max_texts=n_texts)
    if source == "docs":
        return package_docstrings(max_texts=n_texts)
    if source == "web":
        return web_texts(n_texts=n_texts or 10_000)
    raise ValueError(f"unknown corpus {source!r}; choose one of {CORPORA}")


def texts_digest(texts: list[str]) -> str:
    """sha256 of the texts (a corpus fingerprint for manifests)."""
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def pack_blocks(tokenizer, texts: list[str], block_size: int, *, max_blocks: int | None = None) -> torch.Tensor:
    """Tokenize ``texts``, join them with the EOS token between documents, and cut the
    stream into ``[N, block_size]`` blocks (the remainder is dropped). No padding: every
    position is a real next-token target."""
    if block_size < 2:
        raise ValueError(f"block_size must be >= 2, got {block_size}")
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    needed = None if max_blocks is None else max_blocks * block_size
    for text in texts:
        stream.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        stream.append(eos)
        if needed is not None and len(stream) >= needed:
            break
    n = len(stream) // block_size
    if max_blocks is not None:
        n = min(n, max_blocks)
    if n == 0:
        raise ValueError(f"the texts hold {len(stream)} tokens, fewer than one block of {block_size}")
    return torch.tensor(stream[: n * block_size], dtype=torch.long).view(n, block_size)
