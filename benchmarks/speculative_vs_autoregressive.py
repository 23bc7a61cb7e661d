"""Benchmark: speculative vs plain decoding, and ours vs transformers' assisted generation.

Runs on the embedded target (SmolLM2-135M-Instruct), greedy, same prompts, same process.
Methods run interleaved (A, B, C, A, B, C, ...) with the order rotated every round, so
slow drifts of this noisy machine hit every method alike. Reports per method: tau (a
count, immune to timing noise), median tokens/s over rounds, and the median of per-round
time ratios against our plain decoding. Until a trained draft exists the speculative rows
are bounds: the target as its own draft (every draft accepted, tau = gamma + 1) and a
random draft (tau near 1).

    python benchmarks/speculative_vs_autoregressive.py [--draft PATH] [--rounds 3] ...

Writes a JSON record (numbers, command, hardware, versions) with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM

from draftalign.chat import DEMO_PROMPTS, chat_input_ids
from draftalign.models import count_parameters, load_target, make_draft
from draftalign.provenance import git_sha, hardware
from draftalign.speculative import autoregressive_generate, speculative_generate

class CallCounter:
    """Counts forward passes of a model (works for transformers' generate too)."""

    def __init__(self, model):
        self.calls = 0
        self.handle = model.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.calls += 1


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=4, help="how many built-in prompts")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--gamma", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is far less noisy here)")
    ap.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16")
    ap.add_argument("--draft", default=None, help="a trained draft folder (optional)")
    ap.add_argument("--out", default=None, help="write the JSON record here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    target, tokenizer = load_target(dtype=args.dtype)
    drafts = {"self": target,
              "random": make_draft(target, hidden_size=256, num_layers=2, seed=0)}
    if args.draft:
        drafts["trained"] = AutoModelForCausalLM.from_pretrained(args.draft, dtype=target.dtype).eval()
    prompts = [chat_input_ids(tokenizer, p, device=target.device) for p in DEMO_PROMPTS[: args.prompts]]
    gamma, n_new = args.gamma, args.max_new_tokens

    def hf_assisted(draft):
        draft.generation_config.num_assistant_tokens = gamma
        draft.generation_config.num_assistant_tokens_schedule = "constant"
        draft.generation_config.assistant_confidence_threshold = 0.0
        return lambda ids: target.generate(ids, assistant_model=draft, do_sample=False,
                                           max_new_tokens=n_new, pad_token_id=tokenizer.pad_token_id)

    methods = {"ours plain": lambda ids: autoregressive_generate(target, ids, max_new_tokens=n_new),
               "hf plain": lambda ids: target.generate(ids, do_sample=False, max_new_tokens=n_new,
                                                       pad_token_id=tokenizer.pad_token_id)}
    for name, draft in drafts.items():
        methods[f"ours spec ({name} draft)"] = (
            lambda ids, d=draft: speculative_generate(target, d, ids, max_new_tokens=n_new, gamma=gamma))
        if draft is not target:  # transformers refuses the target as its own assistant (shared cache)
            methods[f"hf assisted ({name} draft)"] = hf_assisted(draft)

    counter = CallCounter(target)
    names = list(methods)
    rows = {n: {"seconds": [], "tokens": 0, "calls": 0} for n in names}
    reference = {}
    for r in range(args.rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            total_s = 0.0
            for i, ids in enumerate(prompts):
                counter.calls = 0
                start = time.perf_counter()
                out = methods[n](ids)
                total_s += time.perf_counter() - start
                toks = out.tokens if hasattr(out, "tokens") else out[0, ids.shape[1]:].tolist()
                if tokenizer.eos_token_id in toks:
                    toks = toks[: toks.index(tokenizer.eos_token_id) + 1]
                # greedy everywhere: every method must give the same text (fp32)
                reference.setdefault(i, toks)
                if toks != reference[i]:
                    print(f"note: {n} differs from the first method's output on prompt {i}", file=sys.stderr)
                if r == 0:
                    rows[n]["tokens"] += len(toks)
                    # ours counts its own target calls; for transformers the hook counts them
                    # (with the target as its own draft the hook would count drafting too)
                    rows[n]["calls"] += getattr(out, "target_calls", counter.calls)
            rows[n]["seconds"].append(total_s)

    base = rows["ours plain"]["seconds"]
    table = []
    for n in names:
        secs = rows[n]["seconds"]
        table.append({
            "method": n,
            "tau": round(rows[n]["tokens"] / rows[n]["calls"], 3),
            "tokens_per_s": round(rows[n]["tokens"] / statistics.median(secs), 2),
            "time_vs_ours_plain": round(statistics.median(s / b for s, b in zip(secs, base)), 3),
        })
    record = {
        "command": "python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])),
        "hardware": hardware(), "git": git_sha(), "torch": torch.__version__,
        "transformers": transformers.__version__, "dtype": str(target.dtype),
        "target": target.draftalign_source, "n_target": count_parameters(target),
        "n_random_draft": count_parameters(drafts["random"]), "gamma": gamma,
        "max_new_tokens": n_new, "prompts": len(prompts), "rounds": args.rounds, "rows": table,
    }
    print(f"hardware: {record['hardware']}; dtype {record['dtype']}; gamma {gamma}; "
          f"{len(prompts)} prompts x {n_new} new tokens; {args.rounds} interleaved rounds")
    print(f"{'method':32s} {'tau':>6s} {'tok/s':>8s} {'time / ours plain':>18s}")
    for row in table:
        print(f"{row['method']:32s} {row['tau']:6.2f} {row['tokens_per_s']:8.2f} {row['time_vs_ours_plain']:18.3f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(record, indent=2))
    return record


if __name__ == "__main__":
    main()
