"""Benchmark: speculative vs plain decoding, and ours vs transformers' assisted generation.

Runs on the embedded target (SmolLM2-135M-Instruct), greedy, same prompts, same process,
through :func:`draftalign.timing.compare_decoders` (methods interleaved and rotated each
round, medians of per-round time ratios). Reports per method: tau (a count, immune to
timing noise), alpha, median tokens/s and the time relative to our plain decoding. Without
``--draft`` the speculative rows are the bounds: the target as its own draft (tau = gamma + 1)
and a random draft (tau near 1); with it, any draft folder (a sub-vocabulary draft too).

    python benchmarks/speculative_vs_autoregressive.py [--draft PATH] [--rounds 3] ...

Writes a JSON record (numbers, command, hardware, versions) with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from draftalign.analysis import full_vocabulary_draft, hf_assisted
from draftalign.chat import DEMO_PROMPTS, chat_input_ids
from draftalign.cli import _model_folder, _positive
from draftalign.models import count_parameters, load_target, make_draft, target_id, vocab_size
from draftalign.provenance import versions
from draftalign.speculative import autoregressive_generate, speculative_generate
from draftalign.subvocab import load_draft
from draftalign.timing import compare_decoders


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=_positive(int), default=4, help="how many built-in prompts")
    ap.add_argument("--max-new-tokens", type=_positive(int), default=48)
    ap.add_argument("--gamma", type=_positive(int), default=4)
    ap.add_argument("--rounds", type=_positive(int), default=3)
    ap.add_argument("--threads", type=_positive(int), default=1, help="torch threads (1 is far less noisy here)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default=None, help="default: fp32 on CPU")
    ap.add_argument("--draft", type=_model_folder, default=None, help="a trained draft folder (optional)")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON record here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    target, tokenizer = load_target(dtype=args.dtype)
    drafts = {"self": target, "random": make_draft(target, hidden_size=256, num_layers=2, seed=0,
                                                   dtype=target.dtype)}
    if args.draft:
        drafts["trained"] = load_draft(args.draft, dtype=target.dtype, vocab_size=vocab_size(target)).eval()
    prompts = [chat_input_ids(tokenizer, p, device=target.device) for p in DEMO_PROMPTS[: args.prompts]]
    gamma, n = args.gamma, args.max_new_tokens
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def hf_plain(ids):
        out = target.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                              pad_token_id=pad)
        toks = out[0, ids.shape[1]:].tolist()
        toks = toks[: toks.index(tokenizer.eos_token_id) + 1] if tokenizer.eos_token_id in toks else toks
        return type("Result", (), {"tokens": toks, "target_calls": len(toks), "drafted": [], "accepted": []})()

    methods = {"ours plain": lambda ids: autoregressive_generate(target, ids, max_new_tokens=n),
               "hf plain": hf_plain}
    for name, draft in drafts.items():
        methods[f"ours spec ({name} draft)"] = (
            lambda ids, d=draft: speculative_generate(target, d, ids, max_new_tokens=n, gamma=gamma))
        plain = draft if name == "random" else full_vocabulary_draft(args.draft, target) if name == "trained" else None
        if plain is not None:  # transformers refuses the target as its own assistant (shared cache)
            methods[f"hf assisted ({name} draft)"] = hf_assisted(target, plain, gamma=gamma, max_new_tokens=n,
                                                                 pad_token_id=pad)
    table, first = compare_decoders(methods, prompts, rounds=args.rounds)
    reference = first["ours plain"]
    differ = [m for m, res in first.items() if any(a.tokens != b.tokens for a, b in zip(res, reference))]
    record = {
        "command": "python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])),
        "target": target_id(target), "n_target": count_parameters(target),
        "n_random_draft": count_parameters(drafts["random"]), "gamma": gamma, "max_new_tokens": n,
        "prompts": len(prompts), "rounds": args.rounds, "dtype": str(target.dtype),
        "outputs_differing_from_ours_plain": differ, "rows": table.reset_index().to_dict("records"),
        "versions": versions(),
    }
    print(f"{record['versions']['hardware']}; dtype {record['dtype']}; gamma {gamma}; {len(prompts)} prompts x "
          f"{n} new tokens; {args.rounds} interleaved rounds")
    print(table.round(3).to_string())
    if differ:
        print(f"note: greedy outputs differ from ours plain for {differ}", file=sys.stderr)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2))
    return record


if __name__ == "__main__":
    main()
