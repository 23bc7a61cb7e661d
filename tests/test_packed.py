"""Packed answer sets (:mod:`draftalign.packed`): the compressed arrays read back as the
rows every distillation reader takes, with clear errors on inconsistent files; the shipped
reference answers read whole."""

from __future__ import annotations

import gzip
import io
import json
import lzma

import numpy as np
import pytest

from draftalign.chat import generation_prefix_ids
from draftalign.packed import is_packed, read_packed_answers, read_pool
from draftalign.book.profiles import repo_root


def write_packed(folder, tokenizer, pool, answers):
    """``answers``: (kind, prompt index, text, finished) tuples."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pool.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps(p) + "\n" for p in pool).encode()))
    ids = [tokenizer.encode(text, add_special_tokens=False) + ([2] if done else []) for _, _, text, done in answers]
    buf = io.BytesIO()
    np.savez(buf, kind=np.array([a[0] for a in answers], np.uint8), prompt=np.array([a[1] for a in answers], np.int32),
             finished=np.array([a[3] for a in answers], bool), lengths=np.array([len(i) for i in ids], np.int32),
             ids=np.array([t for i in ids for t in i], np.uint16))
    (folder / "answers.npz.xz").write_bytes(lzma.compress(buf.getvalue()))
    return ids


POOL = [{"id": "a", "category": "math", "prompt": "What is 2 + 2?", "source": "builtin"},
        {"id": "b", "category": "writing", "prompt": "Write a haiku about rain.", "source": "magpie"}]


def test_rows_carry_the_template_the_answer_and_its_kind(tmp_path, tokenizer):
    answers = [(0, 0, "2 + 2 = 4.", True), (0, 1, "Rain on the roof", False), (1, 0, "Four.", True)]
    ids = write_packed(tmp_path / "set", tokenizer, POOL, answers)
    assert is_packed(tmp_path / "set") and not is_packed(tmp_path)
    rows = read_packed_answers(tmp_path / "set", tokenizer)
    assert [r["index"] for r in rows] == [0, 1, 2]
    assert [r["kind"] for r in rows] == ["greedy", "greedy", "sampled"]
    assert [r["finish_reason"] for r in rows] == ["stop", "length", "stop"]
    assert [r["response_ids"] for r in rows] == ids
    assert rows[1]["prompt"] == POOL[1]["prompt"] and rows[1]["category"] == "writing"
    assert rows[0]["prompt_ids"] == generation_prefix_ids(tokenizer, POOL[0]["prompt"])
    assert rows[0]["response"] == "2 + 2 = 4."
    sampled = read_packed_answers(tmp_path / "set", tokenizer, kinds=("sampled",))
    assert [r["response"] for r in sampled] == ["Four."] and sampled[0]["index"] == 0
    assert len(read_packed_answers(tmp_path / "set", tokenizer, max_rows=2)) == 2


def test_inconsistent_or_missing_sets_are_refused(tmp_path, tokenizer):
    with pytest.raises(FileNotFoundError, match="no packed answer set"):
        read_packed_answers(tmp_path, tokenizer)
    write_packed(tmp_path / "bad", tokenizer, POOL[:1], [(0, 1, "out of range", True)])
    with pytest.raises(ValueError, match="points at prompt 1"):
        read_packed_answers(tmp_path / "bad", tokenizer)
    write_packed(tmp_path / "ok", tokenizer, POOL, [(0, 0, "4", True)])
    with pytest.raises(ValueError, match="kinds"):
        read_packed_answers(tmp_path / "ok", tokenizer, kinds=("beam",))
    with pytest.raises(ValueError, match="max_rows"):
        read_packed_answers(tmp_path / "ok", tokenizer, max_rows=0)
    z = dict(np.load(io.BytesIO(lzma.decompress((tmp_path / "ok" / "answers.npz.xz").read_bytes()))))
    z["lengths"] = z["lengths"] + 1
    buf = io.BytesIO()
    np.savez(buf, **z)
    (tmp_path / "ok" / "answers.npz.xz").write_bytes(lzma.compress(buf.getvalue()))
    with pytest.raises(ValueError, match="add up to"):
        read_packed_answers(tmp_path / "ok", tokenizer)


def test_the_shipped_reference_answers_read_whole(tokenizer):
    folder = repo_root() / "data" / "distill" / "smollm2-135m-reference"
    provenance = json.loads((folder / "provenance.json").read_text())
    rows = read_packed_answers(folder, tokenizer)
    assert len(rows) == provenance["rows"]
    assert sum(r["kind"] == "greedy" for r in rows) == provenance["greedy_rows"]
    assert sum(len(r["response_ids"]) for r in rows) == provenance["answer_tokens"]
    pool = read_pool(folder / "pool.jsonl.gz")
    assert {r["prompt"] for r in rows} <= {p["prompt"] for p in pool}
    assert all(len(r["response_ids"]) <= provenance["max_new_tokens"] for r in rows)
