"""One distillation recipe, measured: held-out agreement, training speed and tau.

Trains a draft on a shipped distillation set with the package's own ``distill`` (cached
top-k target, closed-form losses), then reports what Chapter 4 reports for one loss: the
held-out TVD and top-1 agreement against the exact target, answer tokens per second, and
tau on the evaluation prompts (greedy, gamma 4). Use it to try budgets and draft shapes
beyond what the chapter's ``cpu`` profile can afford::

    python benchmarks/distill_recipe.py --draft pretrained --loss fkl --steps 250
    python benchmarks/distill_recipe.py --draft fresh:256,4 --steps 250 --lr 3e-3
    python benchmarks/distill_recipe.py --draft layers:0,1 --lr 3e-4 --freeze-embeddings --full-vocab

``--draft``: ``pretrained`` (the ``cpu`` profile's Chapter 2 draft, trained if missing),
``fresh:HIDDEN,LAYERS`` (random init) or ``layers:I,J,...`` (a subset of the target's
layers, embeddings and head included). The draft's output layer covers the training data's
tokens (:mod:`draftalign.subvocab`, as in the ``cpu`` profile) unless ``--full-vocab``.
Prints one JSON line with the results.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from draftalign.cli import _data_folder, _loss, _positive
from draftalign.data import load_prompts
from draftalign.distill import distill
from draftalign.evaluate import tau_table
from draftalign.metrics import pooled_tau
from draftalign.generate import load_distillation_data, load_topk
from draftalign.models import count_parameters, layer_subset_draft, load_target, make_draft
from draftalign.pipeline import held_out_split, pretrained_draft
from draftalign.profiles import get_profile
from draftalign.subvocab import sub_vocab_draft, sub_vocabulary
from draftalign.train import TrainConfig


def build_draft(spec: str, target, tokenizer):
    if spec == "pretrained":
        return pretrained_draft(target, tokenizer, get_profile("cpu"))[0]
    kind, _, args = spec.partition(":")
    if kind == "fresh":
        hidden, layers = (int(x) for x in args.split(","))
        return make_draft(target, hidden_size=hidden, num_layers=layers)
    if kind == "layers":
        return layer_subset_draft(target, [int(x) for x in args.split(",")])
    raise SystemExit(f"--draft must be pretrained, fresh:H,L or layers:I,J,..., got {spec!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--draft", default="pretrained")
    ap.add_argument("--loss", type=_loss, default="fkl")
    ap.add_argument("--data", type=_data_folder, default=get_profile("cpu").kd_data)
    ap.add_argument("--steps", type=_positive(int), default=96)
    ap.add_argument("--batch", type=_positive(int), default=8)
    ap.add_argument("--lr", type=_positive(float), default=3e-3)
    ap.add_argument("--warmup", type=_positive(int), default=10)
    ap.add_argument("--max-length", type=_positive(int), default=320)
    ap.add_argument("--freeze-embeddings", action="store_true")
    ap.add_argument("--full-vocab", action="store_true", help="keep the output layer over the whole vocabulary")
    ap.add_argument("--sub-vocab-topk", type=int, default=get_profile("cpu").kd_sub_vocab or 4,
                    help="the sub-vocabulary takes the target's top-k at each answer token (default: the cpu profile's)")
    ap.add_argument("--tau-per-category", type=int, default=1, help="evaluation prompts per category")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    kind = args.draft.partition(":")[0]
    if args.draft != "pretrained" and kind not in ("fresh", "layers"):  # checked before anything loads
        ap.error(f"--draft must be pretrained, fresh:H,L or layers:I,J,..., got {args.draft!r}")
    torch.set_num_threads(args.threads)

    target, tokenizer = load_target()
    draft = build_draft(args.draft, target, tokenizer)
    data, topk = load_distillation_data(args.data), load_topk(args.data)
    train_rows, eval_rows = held_out_split(data)  # as pipeline.distilled_draft holds out
    if not args.full_vocab:
        keep = sub_vocabulary(train_rows, topk=topk or None, per_position=args.sub_vocab_topk,
                              always=tokenizer.all_special_ids)
        draft = sub_vocab_draft(draft, keep)
    if args.freeze_embeddings:
        draft.get_input_embeddings().weight.requires_grad_(False)
    cfg = TrainConfig(max_steps=args.steps, batch_size=args.batch, lr=args.lr, warmup_steps=args.warmup,
                      eval_every=args.steps, eval_batches=-(-len(eval_rows) // args.batch),
                      checkpoint_every=args.steps)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        history = distill(draft, target, train_rows, out, loss=args.loss, cfg=cfg, max_length=args.max_length,
                          eval_dataset=eval_rows, pad_id=tokenizer.pad_token_id, topk=topk or None)
        seconds = time.perf_counter() - start
    draft.eval()
    prompts = load_prompts("eval", limit_per_category=args.tau_per_category)
    table = tau_table(target, draft, tokenizer, prompts, gamma=4, max_new_tokens=48)
    last = history.iloc[-1]
    print(json.dumps({
        "draft": args.draft, "loss": args.loss, "parameters": count_parameters(draft), "steps": args.steps,
        "batch": args.batch, "lr": args.lr, "freeze_embeddings": args.freeze_embeddings,
        "sub_vocab": None if args.full_vocab else getattr(draft, "sub_size", None),
        "answer_tokens": int(history.tokens.sum()), "train_seconds": round(float(history.seconds.sum()), 1),
        "answer_tokens_per_s": round(float(history.tokens.sum() / history.seconds.sum()), 1),
        "wall_seconds": round(seconds, 1), "held_out_tvd": round(float(last.eval_tvd), 4),
        "held_out_top1": round(float(last.eval_top1), 4), "eval_prompts": len(prompts),
        "tau": round(pooled_tau(table.tokens, table.target_calls), 4)}))


if __name__ == "__main__":
    main()
