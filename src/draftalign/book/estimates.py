"""How long each chapter takes on a GPU, estimated from the profile's work counts, and the
measured CPU times of the last full run.

Reads a profile (nothing else); writes nothing. No GPU was lent to this project for the
chapters, so their GPU times are **estimates**: each chapter's work is counted from the
profile (sequential target calls, trained tokens, generated tokens) and priced with unit
costs measured on an H200 by the reference run, scaled to other GPUs. The formula:

    minutes = (calls x t_call + trained_tokens / r_train + generated_steps x t_step) / 60

- ``calls``: target forward passes made one after another (decoding, timings): a 135M
  model on a GPU is bound by kernel launches, about ``t_call`` per call whatever the batch;
  a draft call costs :data:`DRAFT_CALL` of a target call (6 layers against 30);
- ``trained_tokens``: answer tokens (distillation, the target online) or corpus tokens
  (pretraining) pushed through a training step, at ``r_train`` tokens/s, measured for the
  reference drafter's shape and scaled by the profile's draft size (pretraining: the
  draft's parameters; distillation: the target's and the draft's together);
- ``generated_steps``: batched generation steps (one token for a whole batch), each a
  launch-bound pass, ``t_step``.

The tests check that the README's table is this module's output.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

__all__ = ["GPUS", "DRAFT_CALL", "draft_parameters", "work_counts", "estimate_minutes", "estimate_table", "measured_cpu_minutes"]

# Unit costs per GPU. H200: measured by the reference run (pretraining a d = 192 draft
# 330k tokens/s; KD with the target online 54k answer tokens/s; greedy decoding about
# 15 ms per target call). Other GPUs: throughputs scaled by memory bandwidth and 16-bit
# compute (about 15x below an H200 for a T4, 3x for an A100); a launch-bound call costs
# about the same on any of them.
GPUS = {
    "H200": {"t_call": 0.015, "pretrain_tokens_per_s": 330_000, "kd_tokens_per_s": 54_000},
    "A100": {"t_call": 0.015, "pretrain_tokens_per_s": 110_000, "kd_tokens_per_s": 18_000},
    "T4": {"t_call": 0.025, "pretrain_tokens_per_s": 22_000, "kd_tokens_per_s": 3_600},
}
DRAFT_CALL = 0.25  # a draft step (6 layers) against a target call (30 layers): launch-bound
TAU = 1.8  # tokens per target call of the book's distilled drafts at gamma 4 (Chapters 4 and 5)
ANSWER_TOKENS = 0.6  # of max_new_tokens: answers that stop before the limit (measured on the book's sets)


REFERENCE_ROWS = 10_240  # answers in data/distill/smollm2-135m-reference
SHIPPED_ROWS = 684  # answers in data/distill/smollm2-135m-t0.7 (the cpu profile's kd_data)
REFERENCE_DRAFT = 12_978_624  # parameters of the shape the unit costs were measured with
TARGET = 134_515_008


def draft_parameters(P, vocab: int = 49_152) -> int:
    """Parameters of the profile's draft shape (tied embeddings)."""
    d, layers, inter = P.draft_hidden, P.draft_layers, P.draft_intermediate
    return vocab * d + layers * (4 * d * d + 3 * d * inter)


def _decode(tokens: float, gamma: int = 4, tau: float = TAU) -> float:
    """Sequential calls (in target calls) for speculative decoding of ``tokens``."""
    blocks = tokens / tau
    return blocks * (1 + gamma * DRAFT_CALL)


def work_counts(P) -> dict[str, dict[str, float]]:
    """Per chapter: ``calls`` (sequential target calls, drafts priced in), ``pretrain_tokens``,
    ``kd_tokens`` and ``generated_steps`` the profile's chapters do."""
    n_eval = 9 * P.eval_per_category
    ch1_tokens = P.ch1_prompts * P.ch1_max_new_tokens
    ch1 = {"calls": 2 * len(P.ch1_pass_ks) * P.ch1_pass_repeats  # the pass-cost table, fp32 and bf16
                    + ch1_tokens * P.ch1_rounds * (1 + 3 * 0.5)  # plain, then the bounds and the layer-skip draft
                    + 2 * ch1_tokens + 150 * 8}  # the bf16 check; the from-scratch runs
    ch2 = {"calls": 2 * _decode(n_eval * P.eval_max_new_tokens * ANSWER_TOKENS, P.eval_gamma),
           "pretrain_tokens": 0 if P.pretrained_from else P.pretrain_steps * P.pretrain_batch * P.pretrain_block}
    prompts = 9 * P.distill_per_category + P.self_instruct_n
    ch3 = {"generated_steps": math.ceil(prompts / P.distill_batch) * P.distill_max_new_tokens
                              + math.ceil(P.self_instruct_n / max(1, P.distill_batch)) * 64}
    runs = len(P.kd_losses) * len(P.kd_seeds)
    # answer tokens of one training row: the shipped reference answers average 169; generated ones
    # stop before their limit about as often as the book's sets do
    answer = 169 if "reference" in str(P.kd_data) else min(P.kd_max_length, P.distill_max_new_tokens) * ANSWER_TOKENS
    report_prompts = 9 * P.report_per_category + 8 * P.report_mt_bench_per_category
    ch4 = {"kd_tokens": runs * P.kd_steps * P.kd_batch * answer,
           "generated_steps": 3 * math.ceil(report_prompts / 16) * P.report_max_new_tokens,
           "calls": 3 * report_prompts * (runs + 2) * 0.05  # teacher-forced scoring, one pass per answer and draft
                    + 3 * (len(P.kd_losses) + 1) * P.report_engine_prompts * _decode(P.report_max_new_tokens)
                    + 16 * P.kd_variance_seeds}
    n5 = 9 * P.ch5_per_category + 8 * P.ch5_mt_bench_per_category
    t5 = P.ch5_max_new_tokens * ANSWER_TOKENS
    ch5 = {"calls": n5 * t5  # the target's greedy answers (plain decoding)
                    + P.ch5_bench_rounds * P.ch5_bench_prompts * t5 * (1 + sum(map(_decode, [1] * len(P.ch5_bench_gammas))))
                    + P.ch5_bench_rounds * P.ch5_bench_prompts * t5 * 4  # against transformers
                    + len(P.ch5_temperatures) * P.ch5_temperature_prompts * 6 * _decode(P.ch5_temperature_max_new_tokens)
                    + len(P.ch5_pass_ks) * P.ch5_pass_repeats}
    # Appendix A: the sub-vocabulary ceilings (the target over the held-out answers, 8 a pass,
    # each pass about 4 decoding calls' worth) and the yardsticks (each loss's draft over them)
    rows = (P.kd_rows or REFERENCE_ROWS) if "reference" in str(P.kd_data) else \
        (9 * P.distill_per_category + P.self_instruct_n if P.kd_data == "generated" else SHIPPED_ROWS)
    held = max(9, round(P.kd_held_out_share * rows))
    app = {"calls": 4 * math.ceil(held / 8) + len(P.kd_losses) * math.ceil(held / 16) + 8}
    return {"Ch. 1": ch1, "Ch. 2": ch2, "Ch. 3": ch3, "Ch. 4": ch4, "Ch. 5": ch5, "App. A": app}


def estimate_minutes(P, gpu: str) -> dict[str, float]:
    """Minutes per chapter of profile ``P`` on ``gpu`` (a key of :data:`GPUS`), by the formula above."""
    u = GPUS[gpu]
    size = draft_parameters(P)
    pretrain_rate = u["pretrain_tokens_per_s"] * REFERENCE_DRAFT / size
    kd_rate = u["kd_tokens_per_s"] * (TARGET + REFERENCE_DRAFT) / (TARGET + size)
    out = {}
    for chapter, w in work_counts(P).items():
        seconds = (w.get("calls", 0) * u["t_call"] + w.get("generated_steps", 0) * u["t_call"]
                   + w.get("pretrain_tokens", 0) / pretrain_rate + w.get("kd_tokens", 0) / kd_rate)
        out[chapter] = seconds / 60
    out["book"] = sum(out.values())
    return out


def _fmt(minutes: float) -> str:
    if minutes < 1:
        return "< 1 min"
    if minutes < 90:
        return f"{minutes:.0f} min"
    return f"{minutes / 60:.1f} h"


def estimate_table(profiles, gpus=("T4", "A100")) -> str:
    """The README's Markdown table: one row per (profile, GPU), one column per chapter."""
    columns = list(estimate_minutes(profiles[0], gpus[0]))
    rows = ["| profile, GPU | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for P in profiles:
        for gpu in gpus:
            est = estimate_minutes(P, gpu)
            rows.append(f"| `{P.name}`, {gpu} | " + " | ".join(_fmt(v) for v in est.values()) + " |")
    return "\n".join(rows)


def measured_cpu_minutes(root: Path) -> dict:
    """The per-chapter minutes of the last measured ``cpu`` run of the book, kept in
    ``book/measured-times.json`` (``{"hardware", "date", "seconds": {notebook: s}}``), or ``{}``."""
    path = Path(root) / "book" / "measured-times.json"
    return json.loads(path.read_text()) if path.exists() else {}
