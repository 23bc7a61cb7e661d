"""Prompts for distillation and evaluation: the built-in sets, public datasets, and
prompts the target writes itself.

Reads the package's ``prompts/{distill,eval,mt_bench}.jsonl`` (written by the project, one category per
prompt; ``data/README.md`` says where they come from), or public instruction datasets through ``datasets`` (the ``gpu`` profile);
writes nothing. Chapter 3 turns these prompts into the distillation dataset; every
chapter measures tau on the evaluation set, per category. The pretraining corpus and
packing live in :mod:`draftalign.corpus` and are re-exported here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from .corpus import pack_blocks, pretraining_texts, stdlib_docstrings, web_texts  # noqa: F401
from .models import hub_reachable

__all__ = ["CATEGORIES", "SPLITS", "load_prompts", "load_hub_prompts", "self_instruct_prompts", "self_instruct_round",
           "keep_self_instruct", "held_out_split", "pick_prompts", "first_per_category",
           "pack_blocks", "pretraining_texts", "stdlib_docstrings", "web_texts", "prompts_dir"]

CATEGORIES = ("open_qa", "creative_writing", "brainstorming", "summarization", "rewriting",
              "classification", "extraction", "code", "math")

# Dolly's category names mapped onto ours.
_DOLLY = {"open_qa": "open_qa", "general_qa": "open_qa", "closed_qa": "extraction",
          "creative_writing": "creative_writing", "brainstorming": "brainstorming",
          "summarization": "summarization", "classification": "classification",
          "information_extraction": "extraction"}


def prompts_dir() -> Path:
    """The built-in prompt sets: package data (``draftalign/prompts/``), so they load from an
    installed package as from a checkout."""
    return Path(__file__).resolve().parent / "prompts"


SPLITS = ("distill", "eval", "mt_bench")


def load_prompts(split: str = "distill", *, categories=None, limit_per_category: int | None = None) -> list[dict]:
    """A built-in prompt set: dicts with ``id``, ``category`` and ``prompt``, in file order.

    ``split``: ``"distill"`` (the target answers them for distillation), ``"eval"`` (the
    book's held-out evaluation prompts) or ``"mt_bench"`` (the first turns of the 80
    MT-Bench questions, a public benchmark with its own eight categories; see
    ``data/README.md`` for where it comes from). ``limit_per_category`` keeps the first
    prompts of each category (so small profiles keep the category mix)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    path = prompts_dir() / f"{split}.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: the package was installed without its prompt sets "
                                f"(reinstall draftalign)")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if categories is not None:
        known = sorted({r["category"] for r in rows})
        unknown = set(categories) - set(known)
        if unknown:
            raise ValueError(f"unknown categories {sorted(unknown)} for split {split!r}; known: {known}")
        rows = [r for r in rows if r["category"] in set(categories)]
    return rows if limit_per_category is None else first_per_category(rows, limit_per_category)


def first_per_category(rows: list[dict], n: int) -> list[dict]:
    """The first ``n`` rows of each ``category``, in their order."""
    seen: dict[str, int] = {}
    kept = []
    for r in rows:
        if seen.get(r["category"], 0) < n:
            kept.append(r)
            seen[r["category"]] = seen.get(r["category"], 0) + 1
    return kept


def _cap_words(text: str, n: int) -> str:
    """``text`` cut to its first ``n`` words (at the last sentence end before them, if any)."""
    words = text.split()
    if len(words) <= n:
        return text
    cut = " ".join(words[:n])
    return cut[: cut.rindex(".") + 1] if "." in cut[len(cut) // 2:] else cut


def load_hub_prompts(name: str = "databricks/databricks-dolly-15k", *, limit: int | None = None,
                     seed: int = 0, max_context_words: int = 300) -> list[dict]:
    """Prompts from a public instruction dataset on the Hugging Face hub (the ``gpu``
    profile). Supported: ``databricks/databricks-dolly-15k`` (instruction + context,
    categories mapped onto ours) and ``OpenAssistant/oasst1`` (first user turns in English).

    A Dolly context longer than ``max_context_words`` is cut there (at a sentence end), so
    prompts stay a few hundred tokens wide in a batch. Offline this raises ``RuntimeError``
    naming the dataset; use :func:`load_prompts`.
    """
    import datasets

    if not hub_reachable():
        raise RuntimeError(f"could not load {name!r}: the Hugging Face hub is unreachable; offline, "
                           f"use the built-in sets: draftalign.data.load_prompts()")
    try:
        ds = datasets.load_dataset(name, split="train")
    except Exception as exc:
        raise RuntimeError(f"could not load {name!r} from the Hugging Face hub ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}); offline, use the built-in "
                           f"sets: draftalign.data.load_prompts()") from exc
    ds = ds.shuffle(seed=seed)
    rows = []
    if "dolly" in name:
        for r in ds:
            text = r["instruction"].strip()
            if r.get("context"):  # capped: a few Dolly contexts run to thousands of tokens
                text += "\n\n" + _cap_words(r["context"].strip(), max_context_words)
            rows.append({"id": f"dolly-{len(rows)}", "category": _DOLLY.get(r["category"], "open_qa"),
                         "prompt": text})
            if limit and len(rows) >= limit:
                break
    elif "oasst" in name:
        for r in ds:
            if r["role"] == "prompter" and r["parent_id"] is None and r["lang"] == "en":
                rows.append({"id": f"oasst-{len(rows)}", "category": "open_qa", "prompt": r["text"].strip()})
                if limit and len(rows) >= limit:
                    break
    else:
        raise ValueError(f"no loader for {name!r}; supported: dolly-15k, oasst1")
    return rows


def _user_turn_prefix(tokenizer) -> str:
    """The chat template's text up to where a user's message begins (with the template's
    default system turn, if any): Magpie's "pre-query template"."""
    marker = "\u2063QUERY\u2063"
    text = tokenizer.apply_chat_template([{"role": "user", "content": marker}], tokenize=False)
    return text[: text.index(marker)]


def _normalise(text: str) -> str:
    return re.sub(r"\W+", " ", text.lower()).strip()


@torch.inference_mode()
def self_instruct_prompts(target, tokenizer, n: int, *, temperature: float = 1.0, top_p: float = 0.95,
                          max_new_tokens: int = 60, batch_size: int = 8, seed: int = 0,
                          max_rounds: int | None = None) -> list[dict]:
    """Prompts written by the target itself (Magpie, Xu et al. 2024): feed the chat
    template up to an empty user turn and let the target write the user's message.

    Keeps messages that pass :func:`keep_self_instruct` and are not duplicates (after
    lower-casing and dropping punctuation). Generates ``batch_size`` candidates per round
    until ``n`` are kept; ``max_rounds`` (default: enough for ``n`` at a keep rate of one
    in four, at least 20) bounds the work. Returns up to ``n`` dicts with ``id``,
    ``category`` ("self_instruct") and ``prompt``.
    """
    if n < 1 or batch_size < 1:
        raise ValueError(f"n and batch_size must be >= 1, got {n}, {batch_size}")
    if max_rounds is None:
        max_rounds = max(20, -(-4 * n // batch_size))
    kept, seen = [], set()
    for r in range(max_rounds):
        for text in self_instruct_round(target, tokenizer, batch_size=batch_size, seed=seed + r,
                                        temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens):
            key = _normalise(text)
            if key in seen:
                continue
            seen.add(key)
            kept.append({"id": f"self-{len(kept):04d}", "category": "self_instruct", "prompt": text})
            if len(kept) >= n:
                return kept
    return kept


def keep_self_instruct(text: str) -> bool:
    """Whether a self-written user message is worth answering: 4 to 80 words, mostly ASCII letters."""
    letters = sum(c.isascii() and c.isalpha() for c in text)
    return 4 <= len(text.split()) <= 80 and letters >= 0.6 * len(text)


@torch.inference_mode()
def self_instruct_round(target, tokenizer, *, batch_size: int, seed: int, temperature: float = 1.0,
                        top_p: float = 0.95, max_new_tokens: int = 60) -> list[str]:
    """One round of Magpie: ``batch_size`` user messages sampled with ``seed``, those that
    ended their turn and pass :func:`keep_self_instruct`, in order (duplicates included)."""
    prefix = tokenizer(_user_turn_prefix(tokenizer), add_special_tokens=False, return_tensors="pt")
    ids = prefix["input_ids"].to(target.device)
    eos = tokenizer.eos_token_id
    torch.manual_seed(seed)
    out = target.generate(ids.expand(batch_size, -1), attention_mask=torch.ones_like(ids).expand(batch_size, -1),
                          do_sample=True, temperature=temperature, top_p=top_p, top_k=0,
                          max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id)
    texts = []
    for row in out[:, ids.shape[1]:].tolist():
        if eos not in row:
            continue  # did not finish its turn
        text = tokenizer.decode(row[: row.index(eos)], skip_special_tokens=True).strip()
        if keep_self_instruct(text):
            texts.append(text)
    return texts


# -- the one held-out split ---------------------------------------------------------------------------

def held_out_split(data, *, share: float = 0.05):
    """``(train, held_out)`` rows of a distillation dataset, held out *by prompt*: every
    answer to a held-out prompt is held out (a second sample of a prompt seen in training
    would leak it), and each category gives the same share of its distinct prompts, at
    least one (none from a category with a single prompt; one prompt overall when every
    category has one), chosen by a hash of the prompt text (stable across runs). The
    one split of the book: the distilled drafts' held-out metrics and every held-out
    number of Chapter 4, the reference run and the loss study use it."""
    import hashlib
    from collections import defaultdict

    by_category = defaultdict(set)
    for row in data:
        by_category[row.get("category")].add(row["prompt"])
    def ranked(prompts):
        return sorted(prompts, key=lambda t: hashlib.sha256(t.encode("utf-8")).hexdigest())

    held = set()
    for prompts in by_category.values():  # a category with one prompt keeps it for training
        n = len(prompts)
        held.update(ranked(prompts)[: min(n - 1, max(1, round(share * n)))])
    everything = {row["prompt"] for row in data}
    if not held:  # tiny sets (one prompt per category): one prompt overall
        if len(everything) < 2:
            raise ValueError("too few prompts to hold any out: a split needs at least two")
        held = set(ranked(everything)[:1])
    train_idx = [i for i, row in enumerate(data) if row["prompt"] not in held]
    held_idx = [i for i, row in enumerate(data) if row["prompt"] in held]
    pick = (lambda idx: data.select(idx)) if hasattr(data, "select") else (lambda idx: [data[i] for i in idx])
    return pick(train_idx), pick(held_idx)


def pick_prompts(held_rows, per_category: int) -> list[dict]:
    """Up to ``per_category`` distinct prompts of each category among distillation rows
    (e.g. the held-out rows of :func:`held_out_split`), chosen by a hash of the text (stable
    across runs), as dicts with ``id``, ``category``, ``prompt`` and ``prompt_ids``."""
    import hashlib
    from collections import defaultdict

    by_category = defaultdict(dict)
    for row in held_rows:
        by_category[row.get("category")].setdefault(row["prompt"], list(row["prompt_ids"]))
    chosen = []
    for cat in sorted(by_category, key=str):
        ranked = sorted(by_category[cat], key=lambda t: hashlib.sha256(t.encode("utf-8")).hexdigest())
        chosen += [{"id": f"{cat}-{i}", "category": cat, "prompt": t, "prompt_ids": by_category[cat][t]}
                   for i, t in enumerate(ranked[:per_category])]
    return chosen
