"""The ``draftalign`` command: train, evaluate and ship a draft for any chat model.

    draftalign pretrain --target HuggingFaceTB/SmolLM2-135M-Instruct --out drafts/pre
    draftalign generate --target ... --out data/answers --prompts distill --samples 2
    draftalign distill  --target ... --draft drafts/pre --data data/answers --out drafts/fkl --loss fkl
    draftalign evaluate --target ... --draft drafts/fkl --prompts eval --gamma 4
    draftalign export   --target ... --draft drafts/fkl --out drafts/fkl-hf --gguf drafts/fkl.gguf
    draftalign check    --target ... --draft drafts/fkl-hf
    draftalign bench    --target ... --draft drafts/fkl-hf --gammas 1,2,4

Reads a target (hub id or folder) and the stage's inputs; writes what each subcommand
names. Defaults are the ``cpu`` profile's values (:mod:`draftalign.profiles`). Every
argument is checked before any model loads, so a typo costs a second, not a training run.
The stages are the package's own functions (``draftalign.pipeline``'s building blocks);
the book's chapters call the same ones.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .profiles import get_profile

__all__ = ["main", "build_parser"]

P = get_profile("cpu")
EXAMPLES = {
    "pretrain": "draftalign pretrain --target HuggingFaceTB/SmolLM2-135M-Instruct --out drafts/pre --steps 160",
    "generate": "draftalign generate --target HuggingFaceTB/SmolLM2-135M-Instruct --out answers --samples 2 --topk 16",
    "distill": "draftalign distill --target HuggingFaceTB/SmolLM2-135M-Instruct --draft drafts/pre "
               "--data answers --out drafts/fkl --loss fkl --steps 480",
    "evaluate": "draftalign evaluate --target HuggingFaceTB/SmolLM2-135M-Instruct --draft drafts/fkl --gamma 4",
    "export": "draftalign export --target HuggingFaceTB/SmolLM2-135M-Instruct --draft drafts/fkl --out drafts/fkl-hf "
              "--gguf drafts/fkl.gguf",
    "check": "draftalign check --target HuggingFaceTB/SmolLM2-135M-Instruct --draft drafts/fkl-hf",
    "bench": "draftalign bench --target HuggingFaceTB/SmolLM2-135M-Instruct --draft drafts/fkl-hf --gammas 1,2,4",
}


# -- argument types: each fails with the flag's name, before anything loads ----------------------

def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    parse.__name__ = f"positive {kind.__name__}"
    return parse


def _non_negative_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _probability(text):
    value = _non_negative_float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1], got {text}")
    return value


def _gammas(text):
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"want comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"every gamma must be >= 1, got {text!r}")
    return values


def _model_folder(text):
    path = Path(text).expanduser()
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"no such folder: {path}")
    if not (path / "config.json").exists():
        raise argparse.ArgumentTypeError(f"{path} holds no config.json: not a model folder")
    return path


def _data_folder(text):
    path = Path(text).expanduser()
    if not (path / "records.jsonl").exists():
        raise argparse.ArgumentTypeError(f"{path} holds no records.jsonl (write one with `draftalign generate`)")
    return path


def _target(text):
    local = Path(text).expanduser()
    if local.exists() and not (local / "config.json").exists():
        raise argparse.ArgumentTypeError(f"{local} holds no config.json: not a model folder")
    if text.startswith(("/", "./", "../", "~")) and not local.exists():
        raise argparse.ArgumentTypeError(f"no such folder: {local}")
    return text


def _prompts(text):
    from .data import SPLITS

    if text in SPLITS:
        return text
    path = Path(text).expanduser()
    if path.suffix == ".jsonl" and path.exists():
        return path
    raise argparse.ArgumentTypeError(f"want one of {', '.join(SPLITS)} or a .jsonl file of prompts, got {text!r}")


def _loss(text):
    from .losses import LOSSES

    if text not in LOSSES:
        raise argparse.ArgumentTypeError(f"unknown loss {text!r}; choose one of {', '.join(sorted(LOSSES))}")
    return text


def _new_folder(text):
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} exists and is not a folder")
    return path


# -- the parser ---------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="draftalign", description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="examples:\n  " + "\n  ".join(EXAMPLES.values()))
    sub = ap.add_subparsers(dest="command", required=True)

    def command(name, help_text):
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=f"example:\n  {EXAMPLES[name]}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--target", type=_target, default=P.target, help=f"hub id or folder (default: {P.target})")
        p.add_argument("--threads", type=_positive(int), default=None, help="torch threads")
        p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                       help="target dtype (default: fp32 on CPU, bf16 on CUDA)")
        return p

    p = command("pretrain", "pretrain a fresh draft that shares the target's tokenizer")
    p.add_argument("--out", type=_new_folder, required=True)
    p.add_argument("--corpus", choices=["stdlib", "docs", "web"], default=P.pretrain_corpus)
    p.add_argument("--texts", type=_positive(int), default=P.pretrain_texts, help="use the first N texts")
    p.add_argument("--hidden", type=_positive(int), default=P.draft_hidden)
    p.add_argument("--layers", type=_positive(int), default=P.draft_layers)
    p.add_argument("--heads", type=_positive(int), default=P.draft_heads)
    p.add_argument("--intermediate", type=_positive(int), default=P.draft_intermediate)
    p.add_argument("--init", choices=["random", "target"], default="random",
                   help="'target': embeddings projected from the target's")
    p.add_argument("--block", type=_positive(int), default=P.pretrain_block)
    p.add_argument("--steps", type=_positive(int), default=P.pretrain_steps)
    p.add_argument("--batch", type=_positive(int), default=P.pretrain_batch)
    p.add_argument("--lr", type=_positive(float), default=P.pretrain_lr)

    p = command("generate", "let the target answer prompts: the distillation data (resumable)")
    p.add_argument("--out", type=_new_folder, required=True)
    p.add_argument("--prompts", type=_prompts, default="distill", help="distill, eval, mt_bench or a .jsonl file")
    p.add_argument("--samples", type=_positive(int), default=1, help="answers per prompt")
    p.add_argument("--max-new-tokens", type=_positive(int), default=P.distill_max_new_tokens)
    p.add_argument("--temperature", type=_non_negative_float, default=P.distill_temperature, help="0: greedy")
    p.add_argument("--top-p", type=_probability, default=P.distill_top_p)
    p.add_argument("--batch-size", type=_positive(int), default=P.distill_batch)
    p.add_argument("--topk", type=int, default=P.distill_topk, help="keep the target's top-k per answer token")
    p.add_argument("--seed", type=int, default=P.seed)

    p = command("distill", "fine-tune a draft on the target's answers with a KD loss")
    p.add_argument("--draft", type=_model_folder, required=True)
    p.add_argument("--data", type=_data_folder, required=True)
    p.add_argument("--out", type=_new_folder, required=True)
    p.add_argument("--loss", type=_loss, default="fkl")
    p.add_argument("--steps", type=_positive(int), default=P.kd_steps)
    p.add_argument("--batch", type=_positive(int), default=P.kd_batch)
    p.add_argument("--lr", type=_positive(float), default=P.kd_lr)
    p.add_argument("--max-length", type=_positive(int), default=P.kd_max_length)
    p.add_argument("--cached", action="store_true", help="train on the data's cached top-k (no target passes)")

    p = command("evaluate", "block efficiency tau of a draft, per prompt category")
    p.add_argument("--draft", type=_model_folder, required=True)
    p.add_argument("--prompts", type=_prompts, default="eval")
    p.add_argument("--gamma", type=_positive(int), default=P.eval_gamma)
    p.add_argument("--max-new-tokens", type=_positive(int), default=P.eval_max_new_tokens)
    p.add_argument("--temperature", type=_non_negative_float, default=0.0)
    p.add_argument("--limit", type=_positive(int), default=None, help="prompts per category")

    p = command("export", "write a draft as a standard folder over the target's vocabulary (and GGUF)")
    p.add_argument("--draft", type=_model_folder, required=True)
    p.add_argument("--out", type=_new_folder, required=True)
    p.add_argument("--gguf", type=Path, default=None, help="also write this .gguf file for llama.cpp")
    p.add_argument("--bf16", action="store_true", help="store the weights in bf16")

    p = command("check", "will transformers, vLLM and llama.cpp take this draft for this target?")
    p.add_argument("--draft", type=_model_folder, required=True)

    p = command("bench", "wall clock: plain decoding against speculative decoding, interleaved rounds")
    p.add_argument("--draft", type=_model_folder, required=True)
    p.add_argument("--gammas", type=_gammas, default=[1, 2, 4])
    p.add_argument("--prompts", type=_prompts, default="eval")
    p.add_argument("--n", type=_positive(int), default=4, help="prompts per round")
    p.add_argument("--rounds", type=_positive(int), default=3)
    p.add_argument("--max-new-tokens", type=_positive(int), default=P.eval_max_new_tokens)
    p.add_argument("--hf", action="store_true", help="also transformers' assisted generation (fixed and dynamic)")
    p.add_argument("--json", type=Path, default=None, help="write the record here")
    return ap


# -- the subcommands ----------------------------------------------------------------------------------

def _load(args):
    import torch

    from .models import load_target

    if args.threads:
        torch.set_num_threads(args.threads)
    return load_target(args.target, dtype=args.dtype)


def _prompt_rows(spec, limit=None) -> list[dict]:
    from .data import load_prompts

    if isinstance(spec, Path):
        rows = [json.loads(line) for line in spec.read_text(encoding="utf-8").splitlines() if line.strip()]
        bad = [i for i, r in enumerate(rows, 1) if not isinstance(r.get("prompt"), str) or not r["prompt"].strip()]
        if bad:
            raise SystemExit(f"{spec}: line {bad[0]} has no 'prompt' text")
        return [{"id": r.get("id", i), "category": r.get("category", "other"), "prompt": r["prompt"]}
                for i, r in enumerate(rows)]
    return load_prompts(spec, limit_per_category=limit)


def _draft(folder, target):
    from .models import vocab_size
    from .subvocab import load_draft

    param = next(target.parameters())
    return load_draft(folder, dtype=param.dtype, device=param.device, vocab_size=vocab_size(target)).eval()


def cmd_pretrain(args):
    from .corpus import pack_blocks, pretraining_texts
    from .models import init_from_target, make_draft
    from .train import Batches, TrainConfig, train

    target, tokenizer = _load(args)
    draft = make_draft(target, hidden_size=args.hidden, num_layers=args.layers, num_heads=args.heads,
                       intermediate_size=args.intermediate).float()
    if args.init == "target":
        init_from_target(draft, target)
    blocks = pack_blocks(tokenizer, pretraining_texts(args.corpus, n_texts=args.texts), args.block)
    held = max(1, min(32, len(blocks) // 10))
    cfg = TrainConfig(max_steps=args.steps, batch_size=args.batch, lr=args.lr,
                      warmup_steps=max(1, min(100, args.steps // 10)), eval_every=max(1, args.steps // 8),
                      checkpoint_every=max(1, args.steps // 8))
    history = train(draft, Batches({"input_ids": blocks[:-held]}), cfg, args.out,
                    eval_data=Batches({"input_ids": blocks[-held:]}), desc="pretraining")
    tokenizer.save_pretrained(args.out)
    print(f"pretrained draft in {args.out}; held-out loss {history.eval_loss.dropna().iloc[-1]:.3f}")


def cmd_generate(args):
    from .generate import generate_distillation_rows

    rows = _prompt_rows(args.prompts) * args.samples
    target, tokenizer = _load(args)
    out = generate_distillation_rows(target, tokenizer, [r["prompt"] for r in rows], args.out,
                                     categories=[r["category"] for r in rows], max_new_tokens=args.max_new_tokens,
                                     temperature=args.temperature, top_p=args.top_p, batch_size=args.batch_size,
                                     seed=args.seed, topk=args.topk)
    print(f"{len(out)} answers, {sum(len(r['response_ids']) for r in out)} tokens in {args.out}")


def cmd_distill(args):
    from .distill import distill
    from .generate import load_topk, read_distillation_rows
    from .train import TrainConfig

    target, tokenizer = _load(args)
    draft = _draft(args.draft, target).float()
    rows = read_distillation_rows(args.data)
    topk = load_topk(args.data) if args.cached else None
    if args.cached and not topk:
        raise SystemExit(f"--cached: {args.data} holds no cached top-k (generate it with --topk 16)")
    cfg = TrainConfig(max_steps=args.steps, batch_size=args.batch, lr=args.lr,
                      warmup_steps=max(1, min(50, args.steps // 10)), eval_every=args.steps,
                      checkpoint_every=max(1, args.steps // 5))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    history = distill(draft, target, rows, args.out, loss=args.loss, cfg=cfg, max_length=args.max_length,
                      pad_id=pad, topk=topk)
    tokenizer.save_pretrained(args.out)
    print(f"distilled draft in {args.out}; last training top-1 {history.top1.iloc[-1]:.3f}")


def cmd_evaluate(args):
    from .evaluate import tau_by_category, tau_table

    prompts = _prompt_rows(args.prompts, args.limit)
    target, tokenizer = _load(args)
    table = tau_table(target, _draft(args.draft, target), tokenizer, prompts, gamma=args.gamma,
                      max_new_tokens=args.max_new_tokens, temperature=args.temperature)
    print(tau_by_category(table).round(3).to_string())


def cmd_export(args):
    from .export import export_draft, export_gguf

    import torch

    target, tokenizer = _load(args)
    folder = export_draft(_draft(args.draft, target), args.out, tokenizer=tokenizer,
                          dtype=torch.bfloat16 if args.bf16 else None)
    print(f"exported {folder}")
    if args.gguf:
        pre = "smollm" if "smollm" in str(args.target).lower() else "default"
        print(f"wrote {export_gguf(folder, args.gguf, tokenizer_pre=pre)}")


def cmd_check(args):
    from .export import compatibility_report
    from .models import load_target

    target = Path(args.target).expanduser()
    if not (target / "config.json").exists():  # a hub id: the loader resolves the folder
        model, _ = load_target(args.target)
        target = Path(model.config._name_or_path)
    report = compatibility_report(target, args.draft)
    for tool, result in report.items():
        print(f"{tool:13s} {'ok' if result['ok'] else 'NO'}")
        for reason in result["reasons"]:
            print(f"  - {reason}")
    return 0 if all(r["ok"] for r in report.values()) else 1


def cmd_bench(args):
    from .chat import chat_input_ids
    from .provenance import versions
    from .speculative import autoregressive_generate, speculative_generate
    from .timing import compare_decoders

    prompts = _prompt_rows(args.prompts)[: args.n]
    target, tokenizer = _load(args)
    draft = _draft(args.draft, target)
    ids = [chat_input_ids(tokenizer, p["prompt"], device=target.device) for p in prompts]
    n = args.max_new_tokens
    methods = {"plain": lambda x: autoregressive_generate(target, x, max_new_tokens=n)}
    for g in args.gammas:
        methods[f"gamma={g}"] = lambda x, g=g: speculative_generate(target, draft, x, max_new_tokens=n, gamma=g)
    if args.hf:
        from .analysis import hf_assisted

        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        g = args.gammas[0]
        methods[f"hf assisted gamma={g}"] = hf_assisted(target, draft, gamma=g, max_new_tokens=n, pad_token_id=pad)
        methods["hf assisted dynamic"] = hf_assisted(target, draft, gamma=g, max_new_tokens=n, dynamic=True,
                                                     pad_token_id=pad)
    table, _ = compare_decoders(methods, ids, rounds=args.rounds)
    print(table.round(3).to_string())
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"table": table.reset_index().to_dict("records"), "prompts": len(ids),
                                         "rounds": args.rounds, "max_new_tokens": n, "versions": versions()},
                                        indent=2))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    handler = globals()[f"cmd_{args.command}"]
    code = handler(args)
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
