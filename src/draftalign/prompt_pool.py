"""A large pool of instruction prompts for distillation, none overlapping the evaluation sets.

Reads the target (it writes the Magpie prompts), the built-in prompt sets and a list of
passages; writes ``out_dir/rounds.jsonl`` (one JSON line per round of self-instruct
generation) and returns the pool as prompt dicts (``id``, ``category``, ``prompt``,
``source``). The reference drafter (:mod:`draftalign.book.reference`) answers these with the
target.

Three sources, in this order:

1. the built-in distillation prompts (the package's ``prompts/distill.jsonl``; pools built
   before this check existed, the shipped drafter's among them, hold three that share
   template wording with evaluation prompts: :func:`decontaminate`);
2. passage tasks (summarise, rewrite, extract, classify, ...) over given passages, so the
   draft also sees answers that copy from the prompt, as the evaluation's summarization,
   extraction and rewriting prompts ask for;
3. Magpie self-instruct prompts (:func:`draftalign.data.self_instruct_round`), generated
   round by round until ``n_self_instruct`` are kept or a deadline passes.

Every candidate, built-in ones included, is checked against the held-out prompts (the book's evaluation set and
MT-Bench): one shared run of 8 words (after lower-casing and dropping punctuation)
excludes it. Resume is exact: round ``r`` always samples with ``seed + r``, a round is
written as one line (a torn last line is dropped and the round redone), and duplicates are
judged against everything kept before, rebuilt from the file.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from pathlib import Path

from tqdm.std import tqdm

from .data import first_per_category, load_prompts, self_instruct_round

__all__ = ["PASSAGE_TASKS", "word_ngrams", "Decontaminator", "decontaminate", "passage_prompts",
           "build_prompt_pool", "held_out_prompts"]

# Instructions applied to a passage; "{passage}" is replaced by the text.
PASSAGE_TASKS = (
    "Summarize the following text in two sentences.\n\n{passage}",
    "Write a one-paragraph summary of this passage:\n\n{passage}",
    "Rewrite the following paragraph in simpler words.\n\n{passage}",
    "List the key terms that appear in this text, one per line.\n\n{passage}",
    "What is the main idea of the passage below?\n\n{passage}",
    "Extract three facts stated in the following text.\n\n{passage}",
    "Rewrite this text as a short bulleted list.\n\n{passage}",
    "Give this passage a title and explain your choice in one sentence.\n\n{passage}",
    "Is the tone of the following text formal or informal? Answer and explain briefly.\n\n{passage}",
    "Explain the following text to a beginner.\n\n{passage}",
)


def _words(text: str) -> list[str]:
    return re.sub(r"\W+", " ", text.lower()).split()


def word_ngrams(text: str, n: int = 8) -> set[tuple[str, ...]]:
    """The runs of ``n`` words of ``text`` (lower-cased, punctuation dropped); a text with
    fewer words gives itself as one run."""
    words = _words(text)
    if len(words) < n:
        return {tuple(words)} if words else set()
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


class Decontaminator:
    """``clean(text)`` is False when ``text`` shares a run of ``n`` words with any held-out
    prompt (or equals a shorter one)."""

    def __init__(self, held_out: list[str], n: int = 8):
        self.n = n
        self.grams: set[tuple[str, ...]] = set()
        for text in held_out:
            self.grams |= word_ngrams(text, n)

    def clean(self, text: str) -> bool:
        return not (word_ngrams(text, self.n) & self.grams)


def held_out_prompts() -> list[str]:
    """Every prompt the book evaluates on: ``eval`` and ``mt_bench``."""
    return [r["prompt"] for split in ("eval", "mt_bench") for r in load_prompts(split)]


def decontaminate(rows: list[dict], held_out: list[str] | None = None, *, n: int = 8) -> list[dict]:
    """``rows`` (prompt dicts) without those sharing a run of ``n`` words with a held-out
    prompt (default :func:`held_out_prompts`). The built-in distillation set has three
    (d0115, d0229, d0296: template wording such as "Summarize the following passage in two
    sentences", shared with e0025, e0049, e0062); hub datasets may have any number."""
    guard = Decontaminator(held_out_prompts() if held_out is None else held_out, n)
    return [r for r in rows if guard.clean(r["prompt"])]


def passage_prompts(passages: list[str], n: int, *, seed: int = 0, min_words: int = 40,
                    max_words: int = 160) -> list[dict]:
    """Up to ``n`` prompts applying a :data:`PASSAGE_TASKS` instruction to a passage: each
    passage (cut to at most ``max_words`` words at a sentence end where possible; shorter
    than ``min_words`` skipped) used once, in a seeded order, tasks in rotation."""
    rng = random.Random(seed)
    order = list(range(len(passages)))
    rng.shuffle(order)
    rows = []
    for i in order:
        words = passages[i].split()
        if len(words) < min_words:
            continue
        text = " ".join(words[:max_words])
        if len(words) > max_words and "." in text[len(text) // 2:]:
            text = text[: text.rindex(".") + 1]
        task = PASSAGE_TASKS[len(rows) % len(PASSAGE_TASKS)]
        rows.append({"id": f"passage-{len(rows):05d}", "category": "passage",
                     "prompt": task.format(passage=text), "source": "passage"})
        if len(rows) >= n:
            break
    return rows


def _read_rounds(path: Path) -> list[dict]:
    if not path.exists():
        return []
    raw = path.read_bytes()
    keep = raw[: raw.rfind(b"\n") + 1]
    if len(keep) != len(raw):  # a round torn by a kill: drop it, it is redone
        with open(path, "r+b") as f:
            f.truncate(len(keep))
    rounds = []
    for number, line in enumerate(keep.decode("utf-8").splitlines(), 1):
        try:
            rounds.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}, line {number}: not JSON ({exc.msg}); delete that line "
                             f"(its round is then generated again)") from exc
    return rounds


def build_prompt_pool(target, tokenizer, out_dir, *, n_self_instruct: int, passages: list[str] = (),
                      n_passage: int = 0, batch_size: int = 256, seed: int = 0, temperature: float = 1.0,
                      top_p: float = 0.95, max_new_tokens: int = 80, max_rounds: int | None = None,
                      builtin_per_category: int | None = None, deadline: float | None = None,
                      progress: bool = True) -> list[dict]:
    """The prompt pool (built-in, passage and self-instruct prompts), decontaminated
    against :func:`held_out_prompts`; see the module docstring. Stops generating once
    ``n_self_instruct`` Magpie prompts are kept, after ``max_rounds`` rounds (default:
    enough for a keep rate of one in four) or once ``deadline`` (``time.time()``) passes;
    calling again continues where it stopped. ``builtin_per_category`` limits the built-in
    prompts (default: all)."""
    if n_self_instruct < 0 or n_passage < 0 or batch_size < 1:
        raise ValueError("n_self_instruct and n_passage must be >= 0, batch_size >= 1")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    guard = Decontaminator(held_out_prompts())
    builtin = [r for r in load_prompts("distill") if guard.clean(r["prompt"])]
    if builtin_per_category is not None:
        builtin = first_per_category(builtin, builtin_per_category)
    pool = [{**r, "source": "builtin"} for r in builtin]
    pool += [r for r in passage_prompts(list(passages), n_passage, seed=seed) if guard.clean(r["prompt"])]
    seen = {" ".join(_words(r["prompt"])) for r in pool}
    path = out_dir / "rounds.jsonl"
    rounds = _read_rounds(path)
    magpie = []
    for rnd in rounds:
        magpie += rnd["rows"]
        seen |= {" ".join(_words(r["prompt"])) for r in rnd["rows"]}
    max_rounds = max_rounds if max_rounds is not None else max(4, -(-4 * n_self_instruct // batch_size))
    bar = tqdm(total=n_self_instruct, initial=min(len(magpie), n_self_instruct), desc="self-instruct prompts",
               unit="prompt", disable=not progress, mininterval=10)
    r = len(rounds)
    while len(magpie) < n_self_instruct and r < max_rounds:
        if deadline is not None and time.time() > deadline:
            break
        rows = []
        for text in self_instruct_round(target, tokenizer, batch_size=batch_size, seed=seed + r,
                                        temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens):
            key = " ".join(_words(text))
            if key in seen or not guard.clean(text):
                continue
            seen.add(key)
            rows.append({"id": f"self-{len(magpie) + len(rows):06d}", "category": "self_instruct",
                         "prompt": text, "source": "magpie"})
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"round": r, "seed": seed + r, "rows": rows}, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        magpie += rows
        bar.update(min(len(rows), n_self_instruct - bar.n))
        r += 1
    bar.close()
    return pool + magpie[:n_self_instruct]
