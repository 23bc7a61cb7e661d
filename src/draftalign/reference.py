"""The reference drafter: the paper's three steps at full scale, as resumable stages.

    python -m draftalign.reference                      # every stage (what `make reference` runs)
    python -m draftalign.reference --stages kd --budget kd=600

Reads the ``reference`` profile (:mod:`draftalign.profiles`), the target, the built-in
prompt sets and the pretraining corpus; writes ``runs/reference/`` (or under
``$DRAFTALIGN_RUNS``):

| stage | writes | what |
|---|---|---|
| ``corpus`` | ``corpus/`` | the pretraining corpus as token ids, and passages for prompts |
| ``pretrain`` | ``draft-pretrained/`` | the draft pretrained on the corpus (step 1 of the paper) |
| ``prompts`` | ``prompts/`` | built-in, passage and Magpie prompts, none overlapping the evaluation sets |
| ``answers`` | ``answers-greedy/``, ``answers-sampled/`` | the target's answers (step 2), in shards |
| ``kd`` | ``draft-<loss>/`` | KD fine-tuning with each loss at the same budget (step 3) |
| ``finetune`` | ``draft-finetuned/`` | the best loss's draft trained on every answer (sequence-level KD) |
| ``agreement`` | ``evaluation.json`` | greedy agreement on held-out answers; picks the best loss |
| ``tau`` | ``tau.json`` | block efficiency for every gamma on the evaluation sets |
| ``bench`` | ``bench-<device>.json`` | wall clock against plain decoding, interleaved rounds |
| ``export`` | ``data/drafts/<name>/`` | the best draft as a standard Hugging Face folder |

Every stage reuses a finished artifact built with the same spec, resumes an interrupted
one (training from its last checkpoint, generation from its last batch, measurements from
their last entry) and shows progress with an ETA. ``--budget STAGE=SECONDS`` fits a
stage into a time budget: a training stage times a few steps and chooses its step count
(saved in ``plan.json``, so a rerun resumes the same plan); a generation stage stops
between batches (a rerun without a budget completes it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from .artifacts import clear_finished, is_complete, read_manifest, resume_or_restart, write_manifest
from .corpus import pretraining_texts, texts_digest
from .distill import kd_loss_fn
from .generate import generate_distillation_rows, read_distillation_rows
from .models import count_parameters, init_from_target, load_target, make_draft, target_id
from .profiles import Profile, get_profile, repo_root, runs_dir
from .prompt_pool import build_prompt_pool
from .reference_measure import DRAFTER_NAME, Measurements, _atomic_json, _read_json
from .provenance import versions
from .train import Batches, TrainConfig, steps_for_budget, train

__all__ = ["STAGES", "Run", "DRAFTER_NAME", "answer_ce", "main"]

STAGES = ("corpus", "pretrain", "prompts", "answers", "kd", "finetune", "agreement", "tau", "bench", "export")


class Run(Measurements):
    """One reference run: the profile, the run folder, the target (loaded on first use)
    and the budgets of the stages."""

    def __init__(self, P: Profile, *, dtype=None, budgets: dict[str, float] | None = None,
                 progress: bool = True):
        self.P, self.dtype, self.budgets, self.progress = P, dtype, budgets or {}, progress
        self.root = runs_dir(P)
        self.root.mkdir(parents=True, exist_ok=True)
        self._target = None

    # -- shared pieces -------------------------------------------------------------------
    @property
    def target(self):
        if self._target is None:
            self._target = load_target(self.P.target, dtype=self.dtype)
        return self._target[0]

    @property
    def tokenizer(self):
        self.target  # noqa: B018 (loads both)
        return self._target[1]

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    @property
    def target_name(self) -> str:
        return target_id(self.target)

    def deadline(self, stage: str) -> float | None:
        """When a stage with a budget must stop: its budget from now; training stages plan
        their steps to fit it, so for them the deadline is only a safety net (1.3 times)."""
        if stage not in self.budgets:
            return None
        slack = 1.3 if stage in ("pretrain", "kd") else 1.0
        return time.time() + slack * self.budgets[stage]

    def log(self, text: str) -> None:
        print(f"[reference] {text}", flush=True)

    def _plan(self, name: str, stage: str, default: int, probe) -> int:
        """Steps of a training stage: the saved plan, else fitted to the stage's budget
        (``probe()`` times it), else the profile's ``default``."""
        path = self.root / f"plan-{name}.json"
        plan = _read_json(path)
        if plan is not None:
            return int(plan["steps"])
        if stage not in self.budgets:
            return default
        steps = probe(self.budgets[stage])
        _atomic_json(path, {"steps": steps, "budget_s": self.budgets[stage], "hardware": versions()["hardware"]})
        self.log(f"{name}: {steps} steps fit the budget of {self.budgets[stage]:.0f} s")
        return steps

    def fresh_draft(self):
        """A new draft of the profile's shape in fp32 (master weights; bf16 autocast on CUDA)."""
        P = self.P
        draft = make_draft(self.target, hidden_size=P.draft_hidden, num_layers=P.draft_layers,
                           num_heads=P.draft_heads, intermediate_size=P.draft_intermediate, seed=P.seed).float()
        if P.draft_init == "target":
            init_from_target(draft, self.target)
        elif P.draft_init != "random":
            raise ValueError(f"draft_init must be 'random' or 'target', got {P.draft_init!r}")
        return draft

    def load_draft(self, folder, dtype=torch.float32):
        from .models import vocab_size
        from .subvocab import load_draft

        return load_draft(folder, dtype=dtype, device=self.target.device, vocab_size=vocab_size(self.target)).eval()

    # -- step 1: pretraining -------------------------------------------------------------
    def corpus(self):
        """Token ids ``[N]`` of the pretraining corpus (EOS between texts) and passages."""
        P, folder = self.P, self.root / "corpus"
        spec = {"stage": "corpus", "corpus": P.pretrain_corpus, "texts": P.pretrain_texts, "passages": P.ref_passages,
                "vocab": len(self.tokenizer)}
        if not is_complete(folder, spec):
            folder.mkdir(parents=True, exist_ok=True)
            self.log(f"corpus: collecting {P.pretrain_corpus!r} texts")
            texts = pretraining_texts(P.pretrain_corpus, n_texts=P.pretrain_texts)
            eos = self.tokenizer.eos_token_id
            ids = []
            for start in range(0, len(texts), 2048):
                for row in self.tokenizer(texts[start:start + 2048], add_special_tokens=False)["input_ids"]:
                    ids.extend(row)
                    ids.append(eos)
            dtype = np.uint16 if len(self.tokenizer) < 2**16 else np.int32
            np.savez_compressed(folder / "tokens.npz", tokens=np.asarray(ids, dtype=dtype))
            rng = random.Random(P.seed)
            passages = [t[:1200] for t in texts if _prose(t)]
            rng.shuffle(passages)
            with open(folder / "passages.jsonl", "w", encoding="utf-8") as f:
                for t in passages[: max(100, P.ref_passages)]:
                    f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
            write_manifest(folder, spec, inputs={"texts": len(texts), "corpus_sha256": texts_digest(texts)},
                           results={"tokens": len(ids)})
        tokens = np.load(folder / "tokens.npz")["tokens"]
        passages = [json.loads(line)["text"] for line in (folder / "passages.jsonl").read_text().splitlines()]
        shipped = repo_root() / "data" / "distill" / "smollm2-135m-t0.7"
        if (shipped / "records.jsonl").exists():  # general-topic passages: the target's own earlier answers
            passages += [r["response"] for r in read_distillation_rows(shipped) if r["finish_reason"] == "stop"]
        return tokens, passages

    def pretrain(self):
        """The draft pretrained on the corpus: ``(draft, manifest)``."""
        P, folder = self.P, self.root / "draft-pretrained"
        tokens, _ = self.corpus()
        n = len(tokens) // P.pretrain_block
        blocks = torch.from_numpy(tokens[: n * P.pretrain_block].astype(np.int64)).view(n, P.pretrain_block)
        eval_blocks, train_blocks = blocks[-P.pretrain_eval_blocks:], blocks[: -P.pretrain_eval_blocks]
        data = Batches({"input_ids": train_blocks}, seed=P.seed)

        def config(steps):
            return TrainConfig(max_steps=steps, batch_size=P.pretrain_batch, lr=P.pretrain_lr,
                               warmup_steps=min(P.pretrain_warmup, max(1, steps // 20)),
                               eval_every=max(1, steps // 10), checkpoint_every=max(1, steps // 20), seed=P.seed)

        # margin 0.8: pretraining may share the machine with the data stage (see tools/)
        steps = self._plan("pretrain", "pretrain", P.pretrain_steps, lambda s: steps_for_budget(
            self.fresh_draft(), data, config(1_000), s, margin=0.8))
        cfg = config(steps)
        spec = {"stage": "pretrain", "target": self.target_name, "corpus": read_manifest(self.root / "corpus")["inputs"],
                "shape": [P.draft_hidden, P.draft_layers, P.draft_heads, P.draft_intermediate],
                "init": P.draft_init, "block": P.pretrain_block, "train": asdict(cfg)}
        if not is_complete(folder, spec):
            clear_finished(folder)
            draft = self.fresh_draft()
            start = time.time()
            history = resume_or_restart(lambda: train(
                draft, data, cfg, folder, eval_data=Batches({"input_ids": eval_blocks}), progress=self.progress,
                desc="pretraining", deadline=self.deadline("pretrain")))
            if len(history) < cfg.max_steps:
                self.log(f"pretrain: stopped at step {len(history)} of {cfg.max_steps} (budget); rerun to finish")
                return draft, None
            self.tokenizer.save_pretrained(folder)
            last = history.iloc[-1]
            write_manifest(folder, spec, inputs={"train_blocks": len(train_blocks), "eval_blocks": len(eval_blocks),
                                                 "tokens_seen": int(history.tokens.sum())},
                           results={"eval_loss": float(last.get("eval_loss", float("nan"))),
                                    "eval_top1": float(last.get("eval_top1", float("nan"))),
                                    "parameters": count_parameters(draft),
                                    "train_seconds": float(history.seconds.sum()),
                                    "wall_seconds_this_call": time.time() - start})
        return self.load_draft(folder), read_manifest(folder)

    # -- step 2: distillation data --------------------------------------------------------
    def prompts(self) -> list[dict]:
        """The prompt pool (built-in, passages, Magpie); complete when its manifest exists."""
        if getattr(self, "_pool", None) is not None:  # built (or cut by its budget) earlier in this run
            return self._pool
        P, folder = self.P, self.root / "prompts"
        spec = {"stage": "prompts", "target": self.target_name, "builtin": P.ref_builtin_per_category,
                "self_instruct": P.ref_self_instruct,
                "passages": P.ref_passages, "batch": P.ref_prompt_batch, "seed": P.seed}
        if is_complete(folder, spec):
            self._pool = [json.loads(line) for line in (folder / "pool.jsonl").read_text().splitlines()]
            return self._pool
        clear_finished(folder)
        _, passages = self.corpus()
        start = time.time()
        pool = build_prompt_pool(self.target, self.tokenizer, folder, n_self_instruct=P.ref_self_instruct,
                                 passages=passages, n_passage=P.ref_passages, batch_size=P.ref_prompt_batch,
                                 seed=P.seed, builtin_per_category=P.ref_builtin_per_category,
                                 deadline=self.deadline("prompts"), progress=self.progress)
        tmp = folder / "pool.jsonl.tmp"
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in pool), encoding="utf-8")
        tmp.replace(folder / "pool.jsonl")
        counts = {s: sum(r["source"] == s for r in pool) for s in ("builtin", "passage", "magpie")}
        if counts["magpie"] >= P.ref_self_instruct:
            write_manifest(folder, spec, results={"prompts": len(pool), **counts,
                                                  "seconds_this_call": time.time() - start})
        else:
            self.log(f"prompts: {counts['magpie']} of {P.ref_self_instruct} self-instruct prompts (budget); "
                     f"rerun to finish")
        self._pool = pool
        return pool

    def _shards(self, pool: list[dict]) -> list[tuple[str, float, int, list[dict]]]:
        """(folder name, temperature, shard number, prompts), greedy and sampled interleaved."""
        out = []
        size = self.P.ref_shard
        for k in range(0, len(pool), size):
            for kind, temp in (("greedy", 0.0), ("sampled", self.P.ref_sampled_temperature)):
                out.append((f"answers-{kind}/shard-{k // size:04d}", temp, k // size, pool[k:k + size]))
        return out

    def answers(self) -> list[dict]:
        """The target's answers to the pool: greedy and sampled, shard by shard. Returns the
        rows answered so far (each with ``kind`` and ``prompt_key``)."""
        P = self.P
        pool = self.prompts()
        deadline = self.deadline("answers")
        for name, temp, k, prompts in self._shards(pool):
            folder = self.root / name
            if deadline is not None and time.time() > deadline:
                break
            spec = {"stage": "answers", "target": self.target_name, "temperature": temp,
                    "max_new_tokens": P.ref_answer_max_new_tokens, "seed": P.seed + k,
                    "prompts_sha256": _digest([p["prompt"] for p in prompts])}
            if is_complete(folder, spec):
                continue
            clear_finished(folder)
            start = time.time()
            # a partial last shard of a pool that has grown since has other settings: restarted
            ds = resume_or_restart(lambda: generate_distillation_rows(
                self.target, self.tokenizer, [p["prompt"] for p in prompts], folder,
                categories=[p["category"] for p in prompts], max_new_tokens=P.ref_answer_max_new_tokens,
                temperature=temp, top_p=1.0 if temp == 0 else 0.95, batch_size=P.ref_answer_batch,
                seed=P.seed + k, progress=self.progress, deadline=deadline))
            tokens = sum(len(r["response_ids"]) for r in ds)
            self.log(f"{name}: {len(ds)} of {len(prompts)} answers, {tokens} tokens, "
                     f"{time.time() - start:.0f} s")
            if len(ds) == len(prompts):
                write_manifest(folder, spec, results={"rows": len(ds), "tokens": tokens,
                                                      "seconds_this_call": time.time() - start})
        self._rows = None
        return self.answer_rows()

    def answer_rows(self) -> list[dict]:
        """Every answer on disk (finished or not), with ``kind`` and ``prompt_key`` (read
        once per run object)."""
        if getattr(self, "_rows", None) is not None:
            return self._rows
        rows = []
        for kind in ("greedy", "sampled"):
            for folder in sorted((self.root / f"answers-{kind}").glob("shard-*")):
                if (folder / "records.jsonl").exists():
                    for r in read_distillation_rows(folder):
                        r["kind"] = kind
                        r["shard"] = int(folder.name.split("-")[1])
                        r["prompt_key"] = hashlib.sha256(r["prompt"].encode("utf-8")).hexdigest()
                        rows.append(r)
        self._rows = rows
        return rows

    def split(self, rows: list[dict]) -> tuple[list[dict], list[dict]]:
        """(train, validation): ``ref_val_percent`` percent of the prompts (by a hash of the
        prompt text, so both answers of a prompt fall on the same side) held out."""
        val = [r for r in rows if int(r["prompt_key"][:8], 16) % 100 < self.P.ref_val_percent]
        keys = {r["prompt_key"] for r in val}
        return [r for r in rows if r["prompt_key"] not in keys], val

    # -- step 3: KD fine-tuning -----------------------------------------------------------
    def kd_config(self, steps: int) -> TrainConfig:
        P = self.P
        return TrainConfig(max_steps=steps, batch_size=P.kd_batch, lr=P.kd_lr,
                           warmup_steps=min(P.kd_warmup, max(1, steps // 20)), eval_every=max(1, steps // 5),
                           eval_batches=2, checkpoint_every=max(1, steps // 10), seed=P.seed)

    def kd(self, loss: str):
        """The pretrained draft fine-tuned with ``loss`` on the answers: ``(draft, manifest)``."""
        P, folder = self.P, self.root / f"draft-{loss}"
        base, base_manifest = self.pretrain()
        if base_manifest is None:
            raise RuntimeError("the pretrained draft is not finished; run the pretrain stage first")
        rows = self.answer_rows()
        if P.ref_kd_shards is not None:  # the comparison's data: the first shards only
            rows = [r for r in rows if r["shard"] < P.ref_kd_shards]
        train_rows, val_rows = self.split(rows)
        if not train_rows:
            raise RuntimeError("no distillation data; run the answers stage first")
        from .distill import distill_examples

        examples = Batches(distill_examples(train_rows, max_length=P.kd_max_length),
                           pad_id=self.pad_id, seed=P.seed)
        loss_fn = kd_loss_fn(self.target, loss)
        steps = self._plan("kd", "kd", P.kd_steps,
                           lambda s: steps_for_budget(base, examples, self.kd_config(1_000), s, loss_fn=loss_fn))
        cfg = self.kd_config(steps)
        spec = {"stage": "kd", "loss": loss, "base": base_manifest["spec"], "train_rows": len(train_rows),
                "val_rows": len(val_rows), "max_length": P.kd_max_length, "target_logits": "online",
                "train": asdict(cfg)}
        if not is_complete(folder, spec):
            clear_finished(folder)
            draft = self.load_draft(self.root / "draft-pretrained")
            val = [r for r in val_rows if r["kind"] == "greedy"
                   and len(r["prompt_ids"]) < P.kd_max_length][: 2 * P.kd_batch]
            start = time.time()
            for p in self.target.parameters():
                p.requires_grad_(False)
            eval_data = Batches(distill_examples(val, max_length=P.kd_max_length), pad_id=self.pad_id) if val else None
            history = resume_or_restart(lambda: train(
                draft, examples, cfg, folder, loss_fn=loss_fn, eval_data=eval_data, progress=self.progress,
                desc=f"distilling ({loss})", deadline=self.deadline("kd")))
            if len(history) < cfg.max_steps:
                self.log(f"kd {loss}: stopped at step {len(history)} of {cfg.max_steps} (budget); rerun to finish")
                return draft, None
            self.tokenizer.save_pretrained(folder)
            write_manifest(folder, spec, inputs={"answer_tokens_seen": int(history.tokens.sum()),
                                                 "train_answer_tokens": sum(len(r["response_ids"]) for r in train_rows)},
                           results={"train_seconds": float(history.seconds.sum()),
                                    "wall_seconds_this_call": time.time() - start,
                                    "final_eval_top1": float(history.iloc[-1].get("eval_top1", float("nan")))})
        return self.load_draft(folder), read_manifest(folder)

    def finetune(self):
        """The best loss's draft trained further on every answer (all shards, greedy and
        sampled) with cross-entropy on the target's tokens: sequence-level KD (Kim and Rush
        2016), whose gradient is FKL's on sampled answers and pushes the draft's argmax
        onto the target's on greedy ones. ``(draft, manifest)``."""
        P, folder = self.P, self.root / "draft-finetuned"
        if P.ref_finetune_steps < 1:
            raise ValueError("the profile has ref_finetune_steps = 0: no finetune stage")
        best = self.best_draft_name()
        base = self.drafts()[best]
        train_rows, val_rows = self.split(self.answer_rows())
        from .distill import distill_examples

        def config(steps):
            return TrainConfig(max_steps=steps, batch_size=P.ref_finetune_batch, lr=P.ref_finetune_lr,
                               warmup_steps=min(20, max(1, steps // 20)), eval_every=max(1, steps // 8),
                               eval_batches=4, checkpoint_every=max(1, min(100, steps // 10)), seed=P.seed)

        examples = Batches(distill_examples(train_rows, max_length=P.ref_finetune_max_length),
                           pad_id=self.pad_id, seed=P.seed)
        steps = self._plan("finetune", "finetune", P.ref_finetune_steps, lambda s: steps_for_budget(
            self.load_draft(base), examples, config(1_000), s, loss_fn=answer_ce))
        cfg = config(steps)
        spec = {"stage": "finetune", "base": read_manifest(base)["spec"], "base_name": best,
                "train_rows": len(train_rows), "val_rows": len(val_rows),
                "max_length": P.ref_finetune_max_length, "loss": "answer cross-entropy", "train": asdict(cfg)}
        if not is_complete(folder, spec):
            clear_finished(folder)
            draft = self.load_draft(base)
            val = [r for r in val_rows if r["kind"] == "greedy"
                   and len(r["prompt_ids"]) < P.ref_finetune_max_length]
            start = time.time()
            eval_data = Batches(distill_examples(val, max_length=P.ref_finetune_max_length),
                                pad_id=self.pad_id) if val else None
            history = resume_or_restart(lambda: train(
                draft, examples, cfg, folder, loss_fn=answer_ce, eval_data=eval_data, progress=self.progress,
                desc="fine-tuning", deadline=self.deadline("finetune")))
            if len(history) < cfg.max_steps:
                self.log(f"finetune: stopped at step {len(history)} of {cfg.max_steps}; rerun to finish")
                return draft, None
            self.tokenizer.save_pretrained(folder)
            write_manifest(folder, spec, inputs={"answer_tokens_seen": int(history.tokens.sum()),
                                                 "train_answer_tokens": sum(len(r["response_ids"]) for r in train_rows)},
                           results={"train_seconds": float(history.seconds.sum()),
                                    "wall_seconds_this_call": time.time() - start,
                                    "final_eval_top1": float(history.iloc[-1].get("eval_top1", float("nan"))),
                                    "hardware": versions()["hardware"]})
        return self.load_draft(folder), read_manifest(folder)

    def drafts(self) -> dict[str, Path]:
        """The finished drafts of this run by name (``pretrained``, each loss, ``finetuned``)."""
        names = {"pretrained": self.root / "draft-pretrained"}
        names.update({loss: self.root / f"draft-{loss}" for loss in self.P.kd_losses})
        names["finetuned"] = self.root / "draft-finetuned"
        return {n: f for n, f in names.items() if read_manifest(f) is not None}

    def shipped_draft_name(self) -> str:
        """The draft the run ships: the fine-tuned one when that stage exists, else the best loss's."""
        return "finetuned" if self.P.ref_finetune_steps > 0 else self.best_draft_name()

def answer_ce(draft, batch: dict) -> tuple[torch.Tensor, dict]:
    """Cross-entropy of the draft on the target's answer tokens (the output layer runs at
    answer positions only); stats ``top1`` (greedy agreement) and ``tokens``."""
    from .distill import answer_logits

    ids, attn = batch["input_ids"], batch.get("attention_mask")
    pos = batch["loss_mask"][:, 1:].bool()  # [B, T-1]
    logits = answer_logits(draft, ids, attn, pos)[0]  # [n, V]
    labels = ids[:, 1:][pos]  # [n]
    loss = torch.nn.functional.cross_entropy(logits.float(), labels)
    with torch.no_grad():
        top1 = (logits.argmax(-1) == labels).float().mean()
    return loss, {"top1": float(top1), "tokens": float(pos.sum())}


def _prose(text: str) -> bool:
    """Whether a corpus text reads as prose (for passage prompts): 40 words or more, few
    symbols, none of reStructuredText's section rules or doctest prompts."""
    letters = sum(c.isalpha() or c.isspace() for c in text)
    return (len(text.split()) >= 40 and letters >= 0.9 * len(text)
            and not any(mark in text for mark in ("---", ">>>", "``", "::", "==")))


def _digest(texts: list[str]) -> str:
    return hashlib.sha256("\0".join(texts).encode("utf-8")).hexdigest()


def _profile_override(item: str) -> dict:
    """``FIELD=VALUE`` as ``{field: value}`` of the field's type (tuples comma-separated)."""
    import dataclasses

    key, sep, raw = item.partition("=")
    fields = {f.name: f for f in dataclasses.fields(Profile)}
    if not sep or key not in fields or key == "name":
        raise ValueError(f"--set {item!r}: want FIELD=VALUE with FIELD a profile field")
    default = getattr(get_profile("reference"), key)
    if raw.lower() == "none":
        return {key: None}
    if default is None:
        for kind in (int, float):
            try:
                return {key: kind(raw)}
            except ValueError:
                pass
        return {key: raw}
    if isinstance(default, bool):
        return {key: raw.lower() in ("1", "true", "yes")}
    if isinstance(default, tuple):
        kind = type(default[0]) if default else str
        return {key: tuple(kind(x) for x in raw.split(",") if x)}
    for kind in (int, float):
        if isinstance(default, kind):
            try:
                return {key: kind(raw)}
            except ValueError:
                raise ValueError(f"--set {item!r}: {key} takes a {kind.__name__}") from None
    return {key: raw}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m draftalign.reference",
        description="Build the reference drafter: pretrain, distillation data, KD with each loss, evaluation, "
                    "export. Every stage resumes after a stop.",
        epilog="example: python -m draftalign.reference --stages pretrain --budget pretrain=600")
    ap.add_argument("--profile", default="reference", help="profile (default: reference)")
    ap.add_argument("--stages", default=",".join(STAGES),
                    help=f"comma-separated, from {', '.join(STAGES)} (default: all, in this order)")
    ap.add_argument("--budget", action="append", default=[], metavar="STAGE=SECONDS",
                    help="fit a stage into a time budget (repeatable)")
    ap.add_argument("--dtype", default=None, help="target dtype (default: fp32 on CPU, bf16 on CUDA)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (timings: 1)")
    ap.add_argument("--losses", default=None, help="comma-separated KD losses (default: the profile's)")
    ap.add_argument("--out", default=None, help="export folder (default: data/drafts/" + DRAFTER_NAME + ")")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a profile field, e.g. --set ref_bench_prompts=4 (repeatable)")
    args = ap.parse_args(argv)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    bad = [s for s in stages if s not in STAGES]
    if bad:
        ap.error(f"unknown stage(s) {bad}; choose from {STAGES}")
    budgets = {}
    for item in args.budget:
        stage, _, value = item.partition("=")
        try:
            budgets[stage] = float(value)
        except ValueError:
            ap.error(f"--budget wants STAGE=SECONDS, got {item!r}")
        if stage not in STAGES or budgets[stage] <= 0:
            ap.error(f"--budget {item!r}: the stage must be one of {STAGES} and the seconds positive")
    overrides = {}
    if args.losses:
        from .losses import LOSSES

        losses = tuple(x.strip() for x in args.losses.split(","))
        if any(x not in LOSSES for x in losses):
            ap.error(f"--losses: choose from {sorted(LOSSES)}")
        overrides["kd_losses"] = losses
    for item in args.set:
        try:
            overrides.update(_profile_override(item))
        except ValueError as exc:
            ap.error(str(exc))
    try:
        P = get_profile(args.profile, **overrides)
    except ValueError as exc:
        ap.error(str(exc))
    if args.threads:
        torch.set_num_threads(args.threads)
    run = Run(P, dtype=args.dtype, budgets=budgets)
    for stage in stages:
        start = time.time()
        run.log(f"stage {stage} ...")
        if stage == "kd":
            for loss in P.kd_losses:
                run.kd(loss)
        elif stage == "export":
            run.log(f"exported to {run.export(Path(args.out) if args.out else None)}")
        else:
            getattr(run, stage)()
        run.log(f"stage {stage} done in {time.time() - start:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
