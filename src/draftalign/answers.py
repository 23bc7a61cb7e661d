"""Distillation data: the chat target answers instruction prompts.

Reads a target, its tokenizer and a list of user messages; writes ``out_dir/`` with
``settings.json`` (sampling settings, model, prompt fingerprint), ``records.jsonl`` (one
JSON line per answered prompt, appended batch by batch) and returns the finished
``datasets.Dataset`` (or plain dicts: :func:`generate_distillation_rows`). Chapter 3 builds the distillation set with it; Chapter 4 trains on
it.

Resumable: each batch's records are written in one append, flushed and fsynced; a run
killed at any point and started again with the same arguments skips the prompts already
answered, drops a half-written last line if the kill came mid-write, and finishes the
rest. Each batch is sampled with its own seed (``seed`` + batch index), so a resumed run
writes exactly what an uninterrupted run would have written.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import hashlib
import io
import json
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.std import tqdm

from .artifacts import CorruptFile, SettingsMismatch, atomic_write
from .chat import generation_prefix_ids
from .models import target_id

if TYPE_CHECKING:  # datasets is imported when a Dataset is built, not with this module
    import datasets

__all__ = ["generate_distillation_data", "generate_distillation_rows", "load_distillation_data",
           "read_distillation_rows", "load_topk", "compute_topk"]

_RECORDS = "records.jsonl"
_SETTINGS = "settings.json"


def _fingerprint(prompts: list[str]) -> str:
    return hashlib.sha256("\0".join(prompts).encode("utf-8")).hexdigest()


def _read_records(path: Path) -> dict[int, dict]:
    """Complete records by index.

    A torn last line (a kill mid-write, or such a line saved with a newline by an editor)
    is cut off the file with a warning: its prompts are answered again. A line that is not
    a record anywhere else raises :class:`CorruptFile` naming the file and the line: that
    is not what an interrupted run leaves, so nothing is dropped without asking.
    """
    if not path.exists():
        return {}
    raw = path.read_bytes()
    keep = raw[: raw.rfind(b"\n") + 1]  # everything up to the last complete line
    lines = keep.decode("utf-8", errors="replace").split("\n")[:-1] if keep else []
    records, good_bytes = {}, 0
    for number, line in enumerate(lines, 1):
        try:
            rec = json.loads(line) if line.strip() else None
            if rec is not None and not isinstance(rec.get("index"), int):
                raise ValueError("no integer 'index'")
        except ValueError as exc:
            if number == len(lines):  # the last line: torn by a kill, then saved
                break
            raise CorruptFile(f"{path}, line {number} is not a record ({exc}); it was not written by an "
                              f"interrupted run. Delete that line (its prompt is then answered again) "
                              f"or the whole folder.", path) from None
        if rec is not None:
            records.setdefault(rec["index"], rec)
        good_bytes += len(line.encode("utf-8", errors="replace")) + 1
    if good_bytes != len(raw):
        warnings.warn(f"{path}: dropped a torn last line ({len(raw) - good_bytes} bytes); its prompts are "
                      f"answered again", stacklevel=3)
        with open(path, "r+b") as f:
            f.truncate(good_bytes)
    return records


def _save_topk(path: Path, kept: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    index = np.array([i for i, _, _ in kept], dtype=np.int64)
    lengths = np.array([len(t) for _, t, _ in kept], dtype=np.int64)
    ids = np.concatenate([t for _, t, _ in kept])
    ids = ids.astype(np.uint16 if ids.max(initial=0) < 2**16 else np.int32)
    logprobs = np.concatenate([v for _, _, v in kept]).astype(np.float16)
    buffer = io.BytesIO()
    np.savez(buffer, index=index, lengths=lengths, ids=ids, logprobs=logprobs)
    atomic_write(path, buffer.getvalue())


def load_topk(out_dir) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """The cached top-k of each answer: ``{index: (ids [L, k] long, logprobs [L, k] float)}``."""
    out = {}
    for path in sorted((Path(out_dir) / "topk").glob("batch-*.npz")):
        if path.name.endswith(".tmp.npz"):
            continue
        z = np.load(path)
        starts = np.concatenate([[0], np.cumsum(z["lengths"])])
        for n, i in enumerate(z["index"]):
            a, b = starts[n], starts[n + 1]
            out[int(i)] = (torch.from_numpy(z["ids"][a:b].astype(np.int64)),
                           torch.from_numpy(z["logprobs"][a:b].astype(np.float32)))
    return out


@torch.inference_mode()
def compute_topk(target, rows, out_dir, *, topk: int = 16, chunk: int = 64, batch_size: int = 8,
                 progress: bool = True) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """The target's top-k at every answer token of ``rows``, for an answer set made without
    it (e.g. the shipped reference answers): one teacher-forced target pass per answer.

    ``rows``: dicts with ``index``, ``prompt_ids`` and ``response_ids``. Writes
    ``out_dir/topk/batch-NNNNN.npz`` (the format :func:`load_topk` reads, ``chunk`` rows
    each) beside ``out_dir/topk/settings.json`` (target, ``topk``, a digest of the rows);
    resumable chunk by chunk: a finished chunk is never computed again, and a folder made
    for other rows or another target raises :class:`SettingsMismatch`. Returns
    :func:`load_topk` of ``out_dir``. Log-probabilities at temperature 1, as generation caches them.
    """
    rows = list(rows)
    if not rows or topk < 1 or chunk < 1 or batch_size < 1:
        raise ValueError("need rows, topk >= 1, chunk >= 1 and batch_size >= 1")
    if any(not len(r["prompt_ids"]) for r in rows):
        raise ValueError("a row has no prompt_ids: no position predicts its first answer token")
    folder = Path(out_dir) / "topk"
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(json.dumps([[int(r["index"]), list(map(int, r["prompt_ids"])),
                                         list(map(int, r["response_ids"]))] for r in rows]).encode()).hexdigest()
    settings = {"model": target_id(target), "topk": topk, "rows": len(rows), "rows_sha256": digest, "chunk": chunk}
    path = folder / "settings.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old != settings:
            diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
            raise SettingsMismatch(f"{folder} holds a top-k made with other settings {diff}; delete it", folder)
    else:
        if any(folder.glob("batch-*.npz")):
            raise SettingsMismatch(f"{folder} holds a top-k of unknown settings; delete it", folder)
        path.write_text(json.dumps(settings, indent=2))
    device = next(target.parameters()).device
    chunks = [rows[i:i + chunk] for i in range(0, len(rows), chunk)]
    todo = [(c, part) for c, part in enumerate(chunks) if not (folder / f"batch-{c:05d}.npz").exists()]
    bar = tqdm(total=len(rows), initial=len(rows) - sum(len(p) for _, p in todo), desc="target top-k",
               unit="answer", disable=not progress, mininterval=10)
    for c, part in todo:
        kept = {}
        order = sorted(range(len(part)), key=lambda j: len(part[j]["prompt_ids"]) + len(part[j]["response_ids"]))
        for s in range(0, len(order), batch_size):  # similar lengths together: little padding
            group = [part[j] for j in order[s:s + batch_size]]
            seqs = [list(r["prompt_ids"]) + list(r["response_ids"]) for r in group]
            width = max(len(q) for q in seqs)
            ids = torch.zeros((len(seqs), width), dtype=torch.long)
            attn = torch.zeros((len(seqs), width), dtype=torch.long)
            for j, q in enumerate(seqs):  # right padding: positions as unpadded
                ids[j, :len(q)], attn[j, :len(q)] = torch.tensor(q), 1
            hidden = target.base_model(input_ids=ids.to(device), attention_mask=attn.to(device)).last_hidden_state
            for j, r in enumerate(group):
                m, n = len(r["prompt_ids"]), len(r["response_ids"])
                logits = target.get_output_embeddings()(hidden[j, m - 1:m + n - 1]).float()  # [n, V]
                values, tokens = logits.log_softmax(-1).topk(topk, dim=-1)  # [n, k]
                kept[int(r["index"])] = (tokens.cpu().numpy(), values.cpu().numpy())
        _save_topk(folder / f"batch-{c:05d}.npz", [(int(r["index"]), *kept[int(r["index"])]) for r in part])
        bar.update(len(part))
    bar.close()
    return load_topk(out_dir)


def read_distillation_rows(out_dir) -> list[dict]:
    """The rows in ``out_dir`` as plain dicts (prompt order), without ``datasets``."""
    path = Path(out_dir) / _RECORDS
    if not path.exists():
        raise FileNotFoundError(f"no distillation data in {out_dir}")
    return sorted(_read_records(path).values(), key=lambda r: r["index"])


def load_distillation_data(out_dir) -> datasets.Dataset:
    """The dataset in ``out_dir`` (rows in prompt order)."""
    import datasets

    return datasets.Dataset.from_list(read_distillation_rows(out_dir))


def generate_distillation_data(target, tokenizer, prompts: list[str], out_dir, **kwargs) -> datasets.Dataset:
    """:func:`generate_distillation_rows` (same arguments), returned as a ``datasets.Dataset``."""
    generate_distillation_rows(target, tokenizer, prompts, out_dir, **kwargs)
    return load_distillation_data(out_dir)


@torch.inference_mode()
def generate_distillation_rows(target, tokenizer, prompts: list[str], out_dir, *, max_new_tokens: int,
                               temperature: float, top_p: float, batch_size: int, seed: int,
                               categories: list[str] | None = None, system: str | None = None,
                               topk: int = 0, progress: bool = True,
                               on_batch: Callable[[int], None] | None = None,
                               deadline: float | None = None) -> list[dict]:
    """Let ``target`` answer every prompt in its chat template; one row per prompt.

    Columns: ``index``, ``prompt``, ``category``, ``prompt_ids`` (the templated prompt),
    ``response`` (text), ``response_ids`` (the target's tokens, ending with the
    end-of-turn token when it finished), ``finish_reason`` ("stop" or "length").
    ``temperature = 0`` is greedy. ``on_batch(n_done)`` is called after each batch is
    safely on disk. ``deadline`` (a ``time.time()`` value) stops between batches once
    passed and returns the rows done so far; calling again later finishes the rest.

    ``topk > 0`` also keeps, for every answer token, the target's ``topk`` most likely
    tokens and their log-probabilities at temperature 1 (from the logits generation
    computes anyway, so almost free): ``topk/batch-NNNNN.npz``, read back with
    :func:`load_topk`. Distillation can train on them instead of running the target.
    """
    if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise ValueError("prompts must be a non-empty list of non-empty strings")
    if categories is not None and len(categories) != len(prompts):
        raise ValueError(f"{len(categories)} categories for {len(prompts)} prompts")
    if max_new_tokens < 1 or batch_size < 1 or temperature < 0 or not 0 < top_p <= 1:
        raise ValueError("need max_new_tokens >= 1, batch_size >= 1, temperature >= 0, 0 < top_p <= 1")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = {"model": target_id(target),
                "n_prompts": len(prompts), "prompts_sha256": _fingerprint(prompts),
                "max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p,
                "batch_size": batch_size, "seed": seed, "system": system, "topk": topk}
    settings_path = out_dir / _SETTINGS
    records_path = out_dir / _RECORDS
    if settings_path.exists():
        try:
            old = json.loads(settings_path.read_text())
        except ValueError:
            raise CorruptFile(f"{settings_path} is not JSON: the settings of the answers in {out_dir} are "
                              f"unknown; delete the folder to start afresh", settings_path) from None
        if old != settings:
            diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
            raise SettingsMismatch(f"{out_dir} holds a run with other settings {diff}; use another out_dir "
                                   f"or delete it", out_dir)
    elif records_path.exists() and records_path.stat().st_size:
        raise SettingsMismatch(f"{out_dir} holds answers but no {_SETTINGS}: how they were made is unknown, "
                               f"so they cannot be reused; restore {_SETTINGS} or delete the folder", out_dir)
    else:
        settings_path.write_text(json.dumps(settings, indent=2))
    done = _read_records(records_path)
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    batches = [list(range(i, min(i + batch_size, len(prompts)))) for i in range(0, len(prompts), batch_size)]
    todo = [(b, idx) for b, idx in enumerate(batches) if not all(i in done for i in idx)]
    bar = tqdm(total=len(prompts), initial=len(prompts) - sum(len(i) for _, i in todo),
               desc="target answers", unit="prompt", disable=not progress, mininterval=10)
    new_tokens, start = 0, time.perf_counter()
    device = next(target.parameters()).device
    for b, idx in todo:
        if deadline is not None and time.time() > deadline:
            break
        encoded = [generation_prefix_ids(tokenizer, prompts[i], system=system) for i in idx]
        width = max(len(e) for e in encoded)
        ids = torch.full((len(idx), width), pad, dtype=torch.long, device=device)
        mask = torch.zeros((len(idx), width), dtype=torch.long, device=device)
        for j, e in enumerate(encoded):  # left padding: every prompt ends at the same column
            ids[j, width - len(e):] = torch.tensor(e, device=device)
            mask[j, width - len(e):] = 1
        torch.manual_seed(seed + b)
        # top_k=0: no hidden top-k on top of temperature and top-p (transformers' default is 50)
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0} \
            if temperature > 0 else {"do_sample": False}
        out = target.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                              pad_token_id=pad, return_dict_in_generate=True, output_logits=topk > 0,
                              **sampling)
        lines, kept = [], []
        for j, i in enumerate(idx):
            row = out.sequences[j, width:].tolist()
            finished = eos in row
            response_ids = row[: row.index(eos) + 1] if finished else row
            new_tokens += len(response_ids)
            if topk:
                steps = torch.stack([step[j] for step in out.logits[: len(response_ids)]]).float()  # [L, V]
                values, tokens = steps.log_softmax(-1).topk(topk, dim=-1)  # [L, k]
                kept.append((i, tokens.cpu().numpy(), values.cpu().numpy()))
            if i in done:
                continue
            lines.append(json.dumps({
                "index": i, "prompt": prompts[i], "category": categories[i] if categories else None,
                "prompt_ids": encoded[j], "response": tokenizer.decode(response_ids, skip_special_tokens=True),
                "response_ids": response_ids, "finish_reason": "stop" if finished else "length",
            }, ensure_ascii=False))
        if topk:  # written before the records: a record on disk always has its top-k
            _save_topk(out_dir / "topk" / f"batch-{b:05d}.npz", kept)
        with open(records_path, "a", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in lines))
            f.flush()
            os.fsync(f.fileno())
        for i in idx:
            done.setdefault(i, True)
        bar.update(len(lines))
        bar.set_postfix(tok_s=f"{new_tokens / (time.perf_counter() - start):.0f}", refresh=False)
        if on_batch is not None:
            on_batch(len(done))
    bar.close()
    return read_distillation_rows(out_dir) if records_path.exists() else []
