"""One distillation recipe, measured: held-out agreement, training speed and tau.

Trains a draft on a shipped distillation set with the package's own ``distill`` (cached
top-k target, closed-form losses), then reports what Chapter 4 reports for one loss: the
held-out TVD and top-1 agreement against the exact target, answer tokens per second, and
tau on the evaluation prompts (greedy, gamma 4). Use it to try budgets and draft shapes
beyond what the chapter's ``cpu`` profile can afford::

    draftalign recipe --draft pretrained --loss fkl --steps 250
    draftalign recipe --draft fresh:256,4 --steps 250 --lr 3e-3
    draftalign recipe --draft layers:0,1 --lr 3e-4 --freeze-embeddings --full-vocab

``--draft``: ``pretrained`` (the ``cpu`` profile's Chapter 2 draft, trained if missing),
``fresh:HIDDEN,LAYERS`` (random init) or ``layers:I,J,...`` (a subset of the target's
layers, embeddings and head included). The draft's output layer covers the training data's
tokens (:mod:`draftalign.subvocab`, as in the ``cpu`` profile) unless ``--full-vocab``.
Returns (and ``draftalign recipe`` prints) one JSON line with the results.
"""

from __future__ import annotations

import json
import tempfile
import time

from .profiles import get_profile, repo_root

__all__ = ["build_draft", "run_recipe"]


def build_draft(spec: str, target, tokenizer):
    """``pretrained`` (the cpu profile's Chapter 2 draft), ``fresh:HIDDEN,LAYERS`` or ``layers:I,J,...``."""
    from ..drafts import layer_subset_draft, make_draft
    from .pipeline import pretrained_draft

    if spec == "pretrained":
        return pretrained_draft(target, tokenizer, get_profile("cpu"))[0]
    kind, _, args = spec.partition(":")
    if kind == "fresh":
        hidden, layers = (int(x) for x in args.split(","))
        return make_draft(target, hidden_size=hidden, num_layers=layers)
    if kind == "layers":
        return layer_subset_draft(target, [int(x) for x in args.split(",")])
    raise SystemExit(f"--draft must be pretrained, fresh:H,L or layers:I,J,..., got {spec!r}")


def run_recipe(*, draft: str = "pretrained", loss: str = "fkl", data=None, steps: int = 96, batch: int = 8,
               lr: float = 3e-3, warmup: int = 10, max_length: int = 320, freeze_embeddings: bool = False,
               full_vocab: bool = False, sub_vocab_topk: int = 4, tau_per_category: int = 1,
               threads: int | None = 2) -> str:
    """Train one recipe and measure it; returns the JSON line."""
    import torch

    from ..answers import load_distillation_data, load_topk
    from ..data import held_out_split, load_prompts
    from ..distill import distill
    from ..evaluate import tau_table
    from ..metrics import pooled_tau
    from ..models import count_parameters, load_target, pad_id
    from ..subvocab import sub_vocab_draft, sub_vocabulary
    from ..train import TrainConfig

    if threads:
        torch.set_num_threads(threads)
    data = data or repo_root() / get_profile("cpu").kd_data
    target, tokenizer = load_target()
    model = build_draft(draft, target, tokenizer)
    rows, topk = load_distillation_data(data), load_topk(data)
    train_rows, eval_rows = held_out_split(rows)
    if not full_vocab:
        keep = sub_vocabulary(train_rows, topk=topk or None, per_position=sub_vocab_topk,
                              always=tokenizer.all_special_ids)
        model = sub_vocab_draft(model, keep)
    if freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    cfg = TrainConfig.for_steps(steps, batch_size=batch, lr=lr, warmup=warmup, evals=1, checkpoints=1,
                                eval_batches=-(-len(eval_rows) // batch))
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        history = distill(model, target, train_rows, out, loss=loss, cfg=cfg, max_length=max_length,
                          eval_dataset=eval_rows, pad_id=pad_id(tokenizer), topk=topk or None)
        seconds = time.perf_counter() - start
    model.eval()
    prompts = load_prompts("eval", limit_per_category=tau_per_category)
    table = tau_table(target, model, tokenizer, prompts, gamma=4, max_new_tokens=48)
    last = history.iloc[-1]
    return json.dumps({
        "draft": draft, "loss": loss, "parameters": count_parameters(model), "steps": steps,
        "batch": batch, "lr": lr, "freeze_embeddings": freeze_embeddings,
        "sub_vocab": None if full_vocab else getattr(model, "sub_size", None),
        "answer_tokens": int(history.tokens.sum()), "train_seconds": round(float(history.seconds.sum()), 1),
        "answer_tokens_per_s": round(float(history.tokens.sum() / history.seconds.sum()), 1),
        "wall_seconds": round(seconds, 1), "held_out_tvd": round(float(last.eval_tvd), 4),
        "held_out_top1": round(float(last.eval_top1), 4), "eval_prompts": len(prompts),
        "tau": round(pooled_tau(table.tokens, table.target_calls), 4)})
