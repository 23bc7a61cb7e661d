"""The library's subcommands: train, evaluate and ship a draft for any chat model.

Each ``add_<name>(sub)`` declares a subcommand's options (checked before anything loads);
each ``cmd_<name>(args)`` calls the library function that does the work. Nothing here
knows about the book's profiles or run folders; the defaults are the sizes of the book's
``cpu`` profile, written out (the tests check they agree).
"""

from __future__ import annotations

import json
from pathlib import Path

from .. import DEFAULT_TARGET
from . import args as A

# the book's cpu profile: a d = 192, 6-layer draft, 100 KD steps of 8 answers ...
DEFAULTS = dict(pretrain_corpus="stdlib", hidden=192, layers=6, heads=3, intermediate=768, block=256,
                pretrain_steps=160, pretrain_batch=8, pretrain_lr=3e-3, max_new_tokens=160, temperature=0.7,
                top_p=0.95, generate_batch=12, topk=16, kd_steps=100, kd_batch=8, kd_lr=3e-3, kd_max_length=320,
                gamma=4, eval_max_new_tokens=48)

EXAMPLES = {
    "pretrain": f"draftalign pretrain --target {DEFAULT_TARGET} --out drafts/pre --steps 160",
    "generate": f"draftalign generate --target {DEFAULT_TARGET} --out answers --samples 2 --topk 16",
    "distill": f"draftalign distill --target {DEFAULT_TARGET} --draft drafts/pre --data answers --out drafts/fkl "
               "--loss fkl --steps 480",
    "evaluate": f"draftalign evaluate --target {DEFAULT_TARGET} --draft drafts/fkl --gamma 4",
    "export": f"draftalign export --target {DEFAULT_TARGET} --draft drafts/fkl --out drafts/fkl-hf "
              "--gguf drafts/fkl.gguf",
    "check": f"draftalign check --target {DEFAULT_TARGET} --draft drafts/fkl-hf",
    "bench": f"draftalign bench --target {DEFAULT_TARGET} --draft drafts/fkl-hf --gammas 1,2,4",
}
D = DEFAULTS


def model_options(p) -> None:
    """The options every subcommand that loads the target has."""
    p.add_argument("--target", type=A.target, default=DEFAULT_TARGET, help=f"hub id or folder (default: {DEFAULT_TARGET})")
    p.add_argument("--threads", type=A.positive(int), default=None, help="torch threads")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="target dtype (default: fp32 on CPU, bf16 on CUDA)")


def add_pretrain(p):
    p.add_argument("--out", type=A.new_folder, required=True)
    p.add_argument("--corpus", choices=["stdlib", "docs", "web"], default=D["pretrain_corpus"])
    p.add_argument("--texts", type=A.positive(int), default=None, help="use the first N texts")
    p.add_argument("--hidden", type=A.positive(int), default=D["hidden"])
    p.add_argument("--layers", type=A.positive(int), default=D["layers"])
    p.add_argument("--heads", type=A.positive(int), default=D["heads"])
    p.add_argument("--intermediate", type=A.positive(int), default=D["intermediate"])
    p.add_argument("--init", choices=["random", "target"], default="random",
                   help="'target': embeddings projected from the target's")
    p.add_argument("--block", type=A.positive(int), default=D["block"])
    p.add_argument("--steps", type=A.positive(int), default=D["pretrain_steps"])
    p.add_argument("--batch", type=A.positive(int), default=D["pretrain_batch"])
    p.add_argument("--lr", type=A.positive(float), default=D["pretrain_lr"])


def add_generate(p):
    p.add_argument("--out", type=A.new_folder, required=True)
    p.add_argument("--prompts", "--split", type=A.prompts, default="distill",
                   help="distill, eval, mt_bench or a .jsonl file")
    p.add_argument("--samples", type=A.positive(int), default=1, help="answers per prompt")
    p.add_argument("--max-new-tokens", type=A.positive(int), default=D["max_new_tokens"])
    p.add_argument("--temperature", type=A.non_negative_float, default=D["temperature"], help="0: greedy")
    p.add_argument("--top-p", type=A.probability, default=D["top_p"])
    p.add_argument("--batch-size", type=A.positive(int), default=D["generate_batch"])
    p.add_argument("--topk", type=int, default=D["topk"], help="keep the target's top-k per answer token")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--server", default=None, metavar="URL",
                   help="take the answers from a serving engine (vLLM, SGLang, llama-server) at URL instead of "
                        "running the target here; --target then names its tokenizer and chat template")
    p.add_argument("--engine", choices=["auto", "openai", "llama.cpp"], default="auto",
                   help="the server's API (default: ask it)")
    p.add_argument("--served-model", default=None, help="the OpenAI API's model name (default: the server's first)")
    p.add_argument("--concurrency", type=A.positive(int), default=8, help="requests in flight (with --server)")


def add_distill(p):
    p.add_argument("--draft", type=A.model_folder, required=True)
    p.add_argument("--data", type=A.data_folder, required=True)
    p.add_argument("--out", type=A.new_folder, required=True)
    p.add_argument("--loss", type=A.loss, default="fkl")
    p.add_argument("--steps", type=A.positive(int), default=D["kd_steps"])
    p.add_argument("--batch", type=A.positive(int), default=D["kd_batch"])
    p.add_argument("--lr", type=A.positive(float), default=D["kd_lr"])
    p.add_argument("--max-length", type=A.positive(int), default=D["kd_max_length"])
    p.add_argument("--cached", action="store_true", help="train on the data's cached top-k (no target passes; the target's weights are not even loaded)")


def add_evaluate(p):
    p.add_argument("--draft", type=A.model_folder, required=True)
    p.add_argument("--prompts", type=A.prompts, default="eval")
    p.add_argument("--gamma", type=A.positive(int), default=D["gamma"])
    p.add_argument("--max-new-tokens", type=A.positive(int), default=D["eval_max_new_tokens"])
    p.add_argument("--temperature", type=A.non_negative_float, default=0.0)
    p.add_argument("--limit", type=A.positive(int), default=None, help="prompts per category")


def add_export(p):
    p.add_argument("--draft", type=A.model_folder, required=True)
    p.add_argument("--out", type=A.new_folder, required=True)
    p.add_argument("--gguf", type=Path, default=None, help="also write this .gguf file for llama.cpp")
    p.add_argument("--gguf-type", choices=["f32", "f16", "q8_0", "q4_0"], default="f32",
                   help="the GGUF's weight type: q8_0 is a quarter of f32's bytes, q4_0 an eighth")
    p.add_argument("--bf16", action="store_true", help="store the weights in bf16")


def add_check(p):
    p.add_argument("--draft", type=A.model_folder, required=True)


def add_bench(p):
    p.add_argument("--draft", type=A.model_folder, default=None, help="a draft folder (optional with --bounds)")
    p.add_argument("--gammas", type=A.gammas, default=[1, 2, 4])
    p.add_argument("--prompts", type=A.prompts, default="eval")
    p.add_argument("--n", type=A.positive(int), default=4, help="prompts per round")
    p.add_argument("--rounds", type=A.positive(int), default=3)
    p.add_argument("--max-new-tokens", type=A.positive(int), default=D["eval_max_new_tokens"])
    p.add_argument("--hf", action="store_true",
                   help="also transformers' generate and its assisted generation (fixed and dynamic)")
    p.add_argument("--bounds", action="store_true",
                   help="also the bounds: the target as its own draft (tau = gamma + 1) and a random draft")
    p.add_argument("--json", type=Path, default=None, help="write the record here")
    p.add_argument("--engine", choices=["torch", "llama.cpp"], default="torch",
                   help="llama.cpp: the draft exported to GGUF, served by llama-server beside the target's GGUF "
                        "(build it with `make llama-cpp`), plus llama-bench's k-token pass costs")
    p.add_argument("--gguf-type", choices=["f32", "f16", "q8_0", "q4_0"], default="q8_0",
                   help="llama.cpp: the served draft's weight type")
    p.add_argument("--engine-threads", type=A.gammas, default=[1, 2], help="llama.cpp: thread counts, e.g. 1,2")
    p.add_argument("--target-gguf", type=Path, default=None,
                   help="llama.cpp: the target's GGUF (default: the offline target's own Q4_1 file)")


COMMANDS = {
    "pretrain": ("pretrain a fresh draft that shares the target's tokenizer", add_pretrain),
    "generate": ("let the target answer prompts: the distillation data (resumable)", add_generate),
    "distill": ("fine-tune a draft on the target's answers with a KD loss", add_distill),
    "evaluate": ("block efficiency tau of a draft, per prompt category", add_evaluate),
    "export": ("write a draft as a standard folder over the target's vocabulary (and GGUF)", add_export),
    "check": ("will transformers, vLLM and llama.cpp take this draft for this target?", add_check),
    "bench": ("wall clock: plain decoding against speculative decoding, interleaved rounds", add_bench),
}


# -- the subcommands ----------------------------------------------------------------------------------

def _load(args):
    import torch

    from ..models import load_target

    if args.threads:
        torch.set_num_threads(args.threads)
    return load_target(args.target, dtype=args.dtype)


def _first_process() -> bool:
    """Whether this is the only process, or the first of several under ``accelerate launch``."""
    import os

    return int(os.environ.get("RANK", "0")) == 0


def _prompt_rows(spec, limit=None) -> list[dict]:
    from ..data import load_prompts

    if isinstance(spec, Path):
        rows = [json.loads(line) for line in spec.read_text(encoding="utf-8").splitlines() if line.strip()]
        bad = [i for i, r in enumerate(rows, 1) if not isinstance(r.get("prompt"), str) or not r["prompt"].strip()]
        if bad:
            raise SystemExit(f"{spec}: line {bad[0]} has no 'prompt' text")
        return [{"id": r.get("id", i), "category": r.get("category", "other"), "prompt": r["prompt"]}
                for i, r in enumerate(rows)]
    return load_prompts(spec, limit_per_category=limit)


def cmd_pretrain(args):
    from ..corpus import pack_blocks, pretraining_texts
    from ..drafts import init_from_target, make_draft
    from ..train import Batches, TrainConfig, train

    target, tokenizer = _load(args)
    draft = make_draft(target, hidden_size=args.hidden, num_layers=args.layers, num_heads=args.heads,
                       intermediate_size=args.intermediate).float()
    if args.init == "target":
        init_from_target(draft, target)
    blocks = pack_blocks(tokenizer, pretraining_texts(args.corpus, n_texts=args.texts), args.block)
    held = max(1, min(32, len(blocks) // 10))
    cfg = TrainConfig.for_steps(args.steps, batch_size=args.batch, lr=args.lr, warmup=100, evals=8, checkpoints=8)
    history = train(draft, Batches({"input_ids": blocks[:-held]}), cfg, args.out,
                    eval_data=Batches({"input_ids": blocks[-held:]}), desc="pretraining")
    if _first_process():  # under `accelerate launch`, the other processes only train
        tokenizer.save_pretrained(args.out)
        print(f"pretrained draft in {args.out}; held-out loss {history.eval_loss.dropna().iloc[-1]:.3f}")


def cmd_generate(args):
    import sys

    from ..answers import generate_distillation_rows
    from ..artifacts import write_json
    from ..provenance import versions

    rows = _prompt_rows(args.prompts) * args.samples
    kw = dict(categories=[r["category"] for r in rows], max_new_tokens=args.max_new_tokens,
              temperature=args.temperature, top_p=args.top_p, batch_size=args.batch_size, seed=args.seed,
              topk=args.topk)
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"command": "draftalign " + " ".join(sys.argv[1:]), "prompts": str(args.prompts),
              "samples_per_prompt": args.samples, "versions": versions()}
    if args.server:
        from ..models import load_tokenizer
        from ..serving import Server, generate_from_server

        server = Server(args.server, engine=args.engine, model=args.served_model)
        tokenizer = load_tokenizer(args.target)
        write_json(args.out / "provenance.json", {**record, "model": f"server {server.url} ({server.engine}, "
                                                  f"{server.model or 'llama-server'})", "tokenizer": args.target})
        out = generate_from_server(server, tokenizer, [r["prompt"] for r in rows], args.out,
                                   concurrency=args.concurrency, **kw)
    else:
        target, tokenizer = _load(args)
        write_json(args.out / "provenance.json", {**record, "model": getattr(target, "draftalign_source", args.target),
                                                  "dtype": str(target.dtype)})
        out = generate_distillation_rows(target, tokenizer, [r["prompt"] for r in rows], args.out, **kw)
    print(f"{len(out)} answers, {sum(len(r['response_ids']) for r in out)} tokens in {args.out}")


def cmd_distill(args):
    from ..answers import load_topk, read_distillation_rows
    from ..distill import distill
    from ..drafts import load_draft_for
    from ..models import pad_id
    from ..train import TrainConfig

    import torch

    if args.cached:  # the cached top-k stands for the target: its weights are never needed, nor loaded
        from ..drafts import load_draft
        from ..models import load_tokenizer, target_shell, vocab_size

        target, tokenizer = target_shell(str(args.target)), load_tokenizer(str(args.target))
        device = "cuda" if torch.cuda.is_available() else "cpu"
        draft = load_draft(args.draft, dtype=torch.float32, device=device, vocab_size=vocab_size(target)).eval()
        if args.threads:
            torch.set_num_threads(args.threads)
    else:
        target, tokenizer = _load(args)
        draft = load_draft_for(args.draft, target, dtype=torch.float32)
    rows = read_distillation_rows(args.data)
    topk = load_topk(args.data) if args.cached else None
    if args.cached and not topk:
        raise SystemExit(f"--cached: {args.data} holds no cached top-k (generate it with --topk 16)")
    cfg = TrainConfig.for_steps(args.steps, batch_size=args.batch, lr=args.lr, warmup=50, evals=1, checkpoints=5)
    history = distill(draft, target, rows, args.out, loss=args.loss, cfg=cfg, max_length=args.max_length,
                      pad_id=pad_id(tokenizer), topk=topk)
    if _first_process():
        tokenizer.save_pretrained(args.out)
        print(f"distilled draft in {args.out}; last training top-1 {history.top1.iloc[-1]:.3f}")


def cmd_evaluate(args):
    from ..drafts import load_draft_for
    from ..evaluate import tau_by_category, tau_table

    prompts = _prompt_rows(args.prompts, args.limit)
    target, tokenizer = _load(args)
    table = tau_table(target, load_draft_for(args.draft, target), tokenizer, prompts, gamma=args.gamma,
                      max_new_tokens=args.max_new_tokens, temperature=args.temperature)
    print(tau_by_category(table).round(3).to_string())


def cmd_export(args):
    import torch

    from ..drafts import load_draft_for
    from ..export import export_draft, export_gguf

    target, tokenizer = _load(args)
    folder = export_draft(load_draft_for(args.draft, target), args.out, tokenizer=tokenizer,
                          dtype=torch.bfloat16 if args.bf16 else None)
    print(f"exported {folder}")
    if args.gguf:
        pre = "smollm" if "smollm" in str(args.target).lower() else "default"
        print(f"wrote {export_gguf(folder, args.gguf, dtype=args.gguf_type, tokenizer_pre=pre)}")


def cmd_check(args):
    from ..export import compatibility_report
    from ..models import load_target

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


def _bench_llama_cpp(args):
    from ..chat import chat_input_ids
    from ..draftcost import SHAPES
    from ..llamacpp import benchmark, binaries
    from ..models import load_tokenizer

    if args.draft is None or args.bounds or args.hf:
        raise SystemExit("bench --engine llama.cpp: give --draft (a folder over the target's vocabulary), "
                         "without --bounds or --hf")
    try:
        binaries()
    except FileNotFoundError as e:
        raise SystemExit(str(e))
    tokenizer = load_tokenizer(str(args.target))
    from ..data import first_per_category

    rows = _prompt_rows(args.prompts)
    per = -(-args.n // len({r["category"] for r in rows}))  # every category, in file order
    prompts = [chat_input_ids(tokenizer, p["prompt"])[0].tolist() for p in first_per_category(rows, per)[: args.n]]
    types = ("f32", "f16", "q8_0", "q4_0")
    record = benchmark(args.draft, prompts, target_gguf=args.target_gguf, gguf_types=types,
                       served_type=args.gguf_type, gammas=args.gammas, threads=args.engine_threads,
                       rounds=args.rounds, max_new_tokens=args.max_new_tokens, shapes=SHAPES)
    # PyTorch eager beside it, the same machine and minutes: the target's k-token passes and the draft's shapes
    import torch

    from ..draftcost import torch_costs
    from ..models import load_target
    from ..timing import pass_cost

    target, _ = load_target(args.target, dtype=torch.float32)
    record["torch"] = []
    for th in args.engine_threads:
        torch.set_num_threads(th)
        costs = pass_cost(target, prefix_len=96, ks=(1, 2, 3, 4, 5, 8), repeats=20)
        shapes = torch_costs(target, args.draft, SHAPES, repeats=20, prefix_len=96)
        record["torch"].append({"threads": th, "pass_cost": costs.to_dict("records"),
                                "shape_costs": shapes.reset_index().to_dict("records")})
    from ..llamacpp import tables

    for name, table in tables(record).items():
        print(f"\n{name}\n{table.to_string()}")
    if args.json:
        from ..artifacts import write_json

        write_json(args.json, record)
    return 0


def cmd_bench(args):
    from ..chat import chat_input_ids
    from ..drafts import load_draft_for, make_draft
    from ..models import count_parameters, target_id
    from ..provenance import versions
    from ..timing import compare_decoders, decoder_table, hf_generate

    if args.draft is None and not args.bounds:
        raise SystemExit("bench: give --draft, --bounds, or both")
    if args.engine == "llama.cpp":
        return _bench_llama_cpp(args)
    prompts = _prompt_rows(args.prompts)[: args.n]
    target, tokenizer = _load(args)
    ids = [chat_input_ids(tokenizer, p["prompt"], device=target.device) for p in prompts]
    n = args.max_new_tokens
    methods = decoder_table(target, max_new_tokens=n)
    if args.hf:
        methods["transformers, plain"] = hf_generate(target, max_new_tokens=n)
    drafts = {"": load_draft_for(args.draft, target)} if args.draft else {}
    if args.bounds:  # the target drafting for itself (every draft accepted) and a random draft (almost none)
        drafts["self draft, "] = target
        drafts["random draft, "] = make_draft(target, hidden_size=256, num_layers=2, seed=0, dtype=target.dtype)
    for label, draft in drafts.items():
        # transformers refuses the target as its own assistant (one shared cache)
        hf = args.gammas[0] if args.hf and draft is not target else None
        table = decoder_table(target, draft, gammas=args.gammas, max_new_tokens=n, label=label, hf_gamma=hf,
                              hf_dynamic=hf is not None and not label)
        methods.update({(k if k.startswith(label) or not label else f"{label}{k}"): v
                        for k, v in table.items() if k != "plain"})
    table, first = compare_decoders(methods, ids, rounds=args.rounds)
    differ = [m for m, res in first.items() if any(a.tokens != b.tokens for a, b in zip(res, first["plain"]))]
    print(f"{versions()['hardware']}; {target.dtype}; {len(ids)} prompts x {n} new tokens; {args.rounds} rounds")
    print(table.round(3).to_string())
    if differ:
        print(f"note: greedy outputs differ from plain decoding for {differ}")
    if args.json:
        from ..artifacts import write_json

        write_json(args.json, {"target": target_id(target), "n_target": count_parameters(target),
                               "table": table.reset_index().to_dict("records"), "prompts": len(ids),
                               "rounds": args.rounds, "max_new_tokens": n, "dtype": str(target.dtype),
                               "outputs_differing_from_plain": differ, "versions": versions()})
