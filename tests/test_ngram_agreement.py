"""The n-gram reference of Chapter 4 (:func:`draftalign.evaluate.ngram_agreement`)."""

from __future__ import annotations

import random

import pytest

from draftalign.ngram import ngram_agreement


def _rows(rule, n_rows=30, length=12, seed=0, vocab=8):
    """Answers whose labels follow ``rule(context) -> token``."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n_rows):
        prompt = [rng.randrange(vocab) for _ in range(3)]
        answer = [rng.randrange(vocab) for _ in range(length)]
        full = prompt + answer
        labels = [rule(full[:len(prompt) + j]) for j in range(length)]
        rows.append({"prompt_ids": prompt, "response_ids": answer, "labels": labels})
    return rows


def test_a_bigram_rule_is_learned_exactly_from_two_tokens_of_context():
    rule = lambda ctx: (ctx[-1] * 3 + 1) % 8  # noqa: E731
    train, held = _rows(rule, seed=0), _rows(rule, seed=1)
    assert ngram_agreement(train, held, n=2) == 1.0
    assert ngram_agreement(train, held, n=4) > 0.9  # longer contexts back off when unseen
    assert ngram_agreement(train, held, n=1) < 0.5  # one label for every context


def test_unigram_predicts_the_most_common_label():
    labels = [5, 5, 5, 2]
    train = [{"prompt_ids": [1], "response_ids": [0, 0, 0, 0], "labels": labels}]
    held = [{"prompt_ids": [7], "response_ids": [3, 3, 3, 3, 3], "labels": [5, 2, 5, 5, 2]}]
    assert ngram_agreement(train, held, n=1) == pytest.approx(3 / 5)


def test_backs_off_to_shorter_contexts():
    # context (9,) -> 4 in training; held-out context (8, 9) is unseen with 2 tokens
    train = [{"prompt_ids": [7], "response_ids": [9, 1], "labels": [9, 4]},
             {"prompt_ids": [3], "response_ids": [6, 6], "labels": [6, 6]}]
    held = [{"prompt_ids": [8], "response_ids": [9, 0], "labels": [6, 4]}]
    # position 0: context (8,) unseen -> unigram 6 (three 6s) -> hit; position 1: (8, 9) unseen -> (9,) -> 4 -> hit
    assert ngram_agreement(train, held, n=3) == 1.0


def test_bad_inputs():
    row = {"prompt_ids": [1], "response_ids": [2, 3], "labels": [2]}
    with pytest.raises(ValueError, match="one token per answer token"):
        ngram_agreement([row], [row])
    ok = {"prompt_ids": [1], "response_ids": [2], "labels": [2]}
    with pytest.raises(ValueError, match="n must be"):
        ngram_agreement([ok], [ok], n=0)
    with pytest.raises(ValueError, match="no training positions"):
        ngram_agreement([], [ok])
    with pytest.raises(ValueError, match="no held-out positions"):
        ngram_agreement([ok], [])
