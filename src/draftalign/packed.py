"""Packed answer sets: many target answers in a few compressed arrays, read as rows.

The reference drafter's distillation data ships this way
(``data/distill/smollm2-135m-reference/``: 10,240 answers, 1.7M tokens in 2.7 MB):

- ``pool.jsonl.gz``: the prompts in order (``id``, ``category``, ``prompt``, ``source``);
- ``answers.npz.xz``: an lzma-compressed ``.npz`` with, per answer, ``kind`` (0 greedy,
  1 sampled), ``prompt`` (index into the pool), ``finished`` (ended with the end-of-turn
  token) and ``lengths``, and ``ids`` (every answer's tokens concatenated, uint16).

:func:`read_packed_answers` turns them into the rows every other reader of distillation
data takes (those of :func:`draftalign.answers.read_distillation_rows`, plus ``kind``), so
Chapter 4 (the ``colab`` profile) and ``tools/unpack_reference.py`` read one format. Reads
only; writes nothing.
"""

from __future__ import annotations

import gzip
import io
import json
import lzma
from pathlib import Path

import numpy as np

__all__ = ["KINDS", "is_packed", "read_pool", "read_packed_arrays", "read_packed_answers"]

KINDS = ("greedy", "sampled")  # the codes 0 and 1 of ``kind``
_POOL, _ANSWERS = "pool.jsonl.gz", "answers.npz.xz"


def is_packed(folder) -> bool:
    """Whether ``folder`` holds a packed answer set."""
    return (Path(folder) / _ANSWERS).exists() and (Path(folder) / _POOL).exists()


def read_pool(path) -> list[dict]:
    """The prompt pool at ``path`` (``.jsonl`` or ``.jsonl.gz``), in order."""
    path = Path(path)
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return [json.loads(line) for line in raw.decode("utf-8").splitlines() if line.strip()]


def read_packed_arrays(path) -> dict[str, np.ndarray]:
    """The arrays of an ``answers.npz.xz`` file, checked for consistency."""
    z = np.load(io.BytesIO(lzma.decompress(Path(path).read_bytes())))
    arrays = {k: z[k] for k in ("kind", "prompt", "finished", "lengths", "ids")}
    n = len(arrays["kind"])
    if any(len(arrays[k]) != n for k in ("prompt", "finished", "lengths")):
        raise ValueError(f"{path}: kind, prompt, finished and lengths differ in length")
    if int(arrays["lengths"].sum()) != len(arrays["ids"]):
        raise ValueError(f"{path}: the lengths add up to {int(arrays['lengths'].sum())} tokens, "
                         f"ids holds {len(arrays['ids'])}")
    if n and (arrays["lengths"].min() < 1 or arrays["kind"].max() >= len(KINDS)):
        raise ValueError(f"{path}: an empty answer or an unknown kind")
    return arrays


def read_packed_answers(folder, tokenizer, *, kinds: tuple[str, ...] = KINDS, pool: list[dict] | None = None,
                        answers=None, max_rows: int | None = None) -> list[dict]:
    """The answers in ``folder`` as distillation rows: ``index`` (row order), ``prompt``,
    ``category``, ``prompt_ids`` (the prompt in the tokenizer's chat template, as the
    target saw it), ``response`` (text), ``response_ids``, ``finish_reason`` (``stop`` or
    ``length``) and ``kind``. ``kinds`` picks greedy and/or sampled answers; ``max_rows``
    keeps the first rows of that selection; ``pool`` replaces the folder's prompt pool (a
    longer pool of the same run: pools only grow) and ``answers`` the folder's
    ``answers.npz.xz`` (a path; ``folder`` may then be ``None``)."""
    from .chat import generation_prefix_ids

    if folder is not None and not ((pool is not None or (Path(folder) / _POOL).exists())
                                   and (answers is not None or (Path(folder) / _ANSWERS).exists())):
        raise FileNotFoundError(f"{folder} holds no packed answer set ({_POOL} and {_ANSWERS})")
    if folder is None and (pool is None or answers is None):
        raise ValueError("without a folder, give both pool and answers")
    unknown = set(kinds) - set(KINDS)
    if unknown or not kinds:
        raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {kinds!r}")
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_rows must be at least 1, got {max_rows}")
    pool = pool if pool is not None else read_pool(Path(folder) / _POOL)
    answers = Path(answers) if answers is not None else Path(folder) / _ANSWERS
    z = read_packed_arrays(answers)
    if len(z["prompt"]) and int(z["prompt"].max()) >= len(pool):
        raise ValueError(f"{answers}: an answer points at prompt {int(z['prompt'].max())}, "
                         f"the pool holds {len(pool)}")
    starts = np.concatenate([[0], np.cumsum(z["lengths"])])
    codes = {KINDS.index(k) for k in kinds}
    chosen = [i for i in range(len(z["kind"])) if int(z["kind"][i]) in codes]
    if max_rows is not None:
        chosen = chosen[:max_rows]
    prefix_cache: dict[int, list[int]] = {}  # a prompt answered twice is templated once
    rows = []
    for n, i in enumerate(chosen):
        p = int(z["prompt"][i])
        if p not in prefix_cache:
            prefix_cache[p] = generation_prefix_ids(tokenizer, pool[p]["prompt"])
        ids = [int(t) for t in z["ids"][starts[i]:starts[i + 1]]]
        rows.append({"index": n, "prompt": pool[p]["prompt"], "category": pool[p].get("category"),
                     "prompt_ids": prefix_cache[p], "response": tokenizer.decode(ids, skip_special_tokens=True),
                     "response_ids": ids, "finish_reason": "stop" if bool(z["finished"][i]) else "length",
                     "kind": KINDS[int(z["kind"][i])]})
    return rows
