"""The reference drafter: the book's pipeline at the ``reference`` profile, stage by stage.

    draftalign reference                      # every stage (what `make reference` runs)
    draftalign reference --stages kd --budget kd=600

Reads the ``reference`` profile (:mod:`draftalign.book.profiles`), the target, the built-in
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
| ``bench`` | ``bench-<device>-<dtype>.json`` | wall clock against plain decoding, interleaved rounds |
| ``export`` | ``data/drafts/<name>/`` | the shipped draft as a standard Hugging Face folder |

The corpus, pretraining and distillation stages are the book's own
(:mod:`draftalign.book.pipeline`: the same artifacts, specs and stage helper); the prompt
pool and the sharded answers are this run's data recipe; the measurements are in
:mod:`draftalign.book.reference_measure`. Every stage reuses a finished artifact built with
the same spec, resumes an interrupted one and shows progress. ``--budget STAGE=SECONDS``
fits a stage into a time budget: a training stage times a few steps and chooses its step
count (saved in ``plan-<stage>.json``, so a rerun resumes the same plan); a generation
stage stops between batches (a rerun without a budget completes it).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from ..answers import generate_distillation_rows
from ..artifacts import atomic_write, clear_finished, is_complete, resume_or_restart, write_manifest
from ..models import target_id
from ..prompt_pool import build_prompt_pool
from . import pipeline
from . import reference_measure as measure
from .profiles import DRAFTER_NAME, REFERENCE_STAGES
from .reference_run import Run, best_draft_name, drafts
from .stages import deadline

__all__ = ["STAGES", "DRAFTER_NAME", "Run", "prompts", "answers", "kd", "finetune", "drafts", "run_stages"]

STAGES = REFERENCE_STAGES


# -- step 2: distillation data ---------------------------------------------------------------------------

def prompts(run: Run) -> list[dict]:
    """The prompt pool (built-in, passages, Magpie); complete when its manifest exists."""
    P, folder = run.P, run.root / "prompts"
    spec = {"stage": "prompts", "target": target_id(run.target), "builtin": P.ref_builtin_per_category,
            "self_instruct": P.ref_self_instruct, "passages": P.ref_passages, "batch": P.ref_prompt_batch,
            "seed": P.seed}
    if is_complete(folder, spec):
        return [json.loads(line) for line in (folder / "pool.jsonl").read_text(encoding="utf-8").splitlines()]
    clear_finished(folder)
    _, passages = pipeline.corpus(run.tokenizer, P)
    start = time.time()
    pool = build_prompt_pool(run.target, run.tokenizer, folder, n_self_instruct=P.ref_self_instruct,
                             passages=passages, n_passage=P.ref_passages, batch_size=P.ref_prompt_batch,
                             seed=P.seed, builtin_per_category=P.ref_builtin_per_category,
                             deadline=deadline(run.budgets.get("prompts")), progress=run.progress)
    atomic_write(folder / "pool.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in pool))
    counts = {s: sum(r["source"] == s for r in pool) for s in ("builtin", "passage", "magpie")}
    if counts["magpie"] >= P.ref_self_instruct:
        write_manifest(folder, spec, results={"prompts": len(pool), **counts, "seconds_this_call": time.time() - start})
    else:
        run.log(f"prompts: {counts['magpie']} of {P.ref_self_instruct} self-instruct prompts (budget); rerun to finish")
    return pool


def answers(run: Run) -> list[dict]:
    """The target's answers to the pool, greedy and sampled, shard by shard (a shard is
    final once the pool has grown past it). Returns every answer on disk
    (:func:`draftalign.book.pipeline.answer_shard_rows`)."""
    P = run.P
    pool = prompts(run)
    stop = deadline(run.budgets.get("answers"))
    size = P.ref_shard
    for k in range(0, len(pool), size):
        for kind, temp in (("greedy", 0.0), ("sampled", P.ref_sampled_temperature)):
            if stop is not None and time.time() > stop:
                break
            part, folder = pool[k:k + size], run.root / f"answers-{kind}" / f"shard-{k // size:04d}"
            texts = [p["prompt"] for p in part]
            spec = {"stage": "answers", "target": target_id(run.target), "temperature": temp,
                    "max_new_tokens": P.ref_answer_max_new_tokens, "seed": P.seed + k // size,
                    "prompts_sha256": hashlib.sha256("\0".join(texts).encode("utf-8")).hexdigest()}
            if is_complete(folder, spec):
                continue
            clear_finished(folder)
            start = time.time()
            # a partial last shard of a pool that has grown since has other settings: restarted
            rows = resume_or_restart(lambda: generate_distillation_rows(
                run.target, run.tokenizer, texts, folder, categories=[p["category"] for p in part],
                max_new_tokens=P.ref_answer_max_new_tokens, temperature=temp, top_p=1.0 if temp == 0 else 0.95,
                batch_size=P.ref_answer_batch, seed=P.seed + k // size, progress=run.progress, deadline=stop))
            tokens = sum(len(r["response_ids"]) for r in rows)
            run.log(f"{folder.parent.name}/{folder.name}: {len(rows)} of {len(part)} answers, {tokens} tokens, "
                    f"{time.time() - start:.0f} s")
            if len(rows) == len(part):
                write_manifest(folder, spec, results={"rows": len(rows), "tokens": tokens,
                                                      "seconds_this_call": time.time() - start})
    return pipeline.answer_shard_rows(P)


# -- step 3: distillation --------------------------------------------------------------------------------

def kd(run: Run, loss: str):
    """The pretrained draft distilled with ``loss`` on the first answer shards (the book's
    :func:`~draftalign.book.pipeline.distilled_draft`, target online, one step plan for
    every loss): ``(draft, history, manifest)``."""
    return pipeline.distilled_draft(run.target, run.tokenizer, run.P, loss, budget=run.budgets.get("kd"),
                                    progress=run.progress)


def finetune(run: Run):
    """The best loss's draft (by greedy agreement on held-out answers: the ``agreement``
    stage, run here if it has not been) trained further on every answer
    (:func:`~draftalign.book.pipeline.finetuned_draft`)."""
    best = best_draft_name(run) or measure.agreement(run).get("best")
    if best is None:
        raise RuntimeError("no distilled draft is finished; run the kd stage first")
    return pipeline.finetuned_draft(run.target, run.tokenizer, run.P, best,
                                    budget=run.budgets.get("finetune"), progress=run.progress)


def run_stages(run: Run, stages, *, out: Path | None = None) -> None:
    """Run ``stages`` (names of :data:`STAGES`) in order, each logged with its time."""
    steps = {"corpus": lambda: pipeline.corpus(run.tokenizer, run.P),
             "pretrain": lambda: pipeline.pretrained_draft(run.target, run.tokenizer, run.P,
                                                          budget=run.budgets.get("pretrain"), progress=run.progress),
             "prompts": lambda: prompts(run), "answers": lambda: answers(run),
             "kd": lambda: [kd(run, loss) for loss in run.P.kd_losses], "finetune": lambda: finetune(run),
             "agreement": lambda: measure.agreement(run), "tau": lambda: measure.tau(run),
             "bench": lambda: measure.bench(run),
             "export": lambda: run.log(f"exported to {measure.export(run, out)}")}
    for stage in stages:
        if stage not in steps:
            raise ValueError(f"unknown stage {stage!r}; choose from {STAGES}")
        start = time.time()
        run.log(f"stage {stage} ...")
        steps[stage]()
        run.log(f"stage {stage} done in {time.time() - start:.0f} s")
