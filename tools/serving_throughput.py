"""Distillation rows per second: the in-process generator against llama-server.

    .venv/bin/python tools/serving_throughput.py [--prompts 18] [--max-new-tokens 64] [--threads 2]
        [--json data/results/serving_throughput.json]

The same prompts (the built-in distillation set, the first of each category in turn), the
same settings (sampled at T = 0.7, top-k 4 saved per answer token), written to a fresh
folder each way: ``draftalign.answers.generate_distillation_rows`` with the target in
PyTorch (batched), and ``draftalign.serving.generate_from_server`` against llama-server
serving the target's own GGUF with 1 request in flight and with several (as many slots as
requests). Needs llama.cpp (``make llama-cpp``). Prints and optionally saves rows/s and
answer tokens/s per way, with the hardware.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=18)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2, help="torch threads, and llama-server's threads")
    ap.add_argument("--in-flight", type=int, default=4, help="requests in flight in the concurrent run")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.prompts < 1 or args.max_new_tokens < 1 or args.threads < 1 or args.in_flight < 2:
        ap.error("--prompts, --max-new-tokens, --threads >= 1 and --in-flight >= 2")

    import torch

    from draftalign.answers import generate_distillation_rows
    from draftalign.data import first_per_category, load_prompts
    from draftalign.llamacpp import binaries, serve
    from draftalign.models import load_target, offline_target_gguf
    from draftalign.provenance import hardware
    from draftalign.serving import generate_from_server

    try:
        binaries()
    except FileNotFoundError as exc:
        sys.exit(str(exc))
    torch.set_num_threads(args.threads)
    rows = load_prompts("distill")
    prompts = [r["prompt"] for r in first_per_category(rows, -(-args.prompts // 9))][: args.prompts]
    target, tokenizer = load_target()
    kw = dict(max_new_tokens=args.max_new_tokens, temperature=0.7, top_p=1.0, seed=0, topk=4, progress=False)
    results = []

    def record(way, seconds, out):
        tokens = sum(len(r["response_ids"]) for r in out)
        results.append({"way": way, "rows": len(out), "answer_tokens": tokens, "seconds": seconds,
                        "rows_per_s": len(out) / seconds, "tokens_per_s": tokens / seconds})
        print(f"{way}: {len(out)} rows, {tokens} tokens in {seconds:.1f} s: {len(out) / seconds:.2f} rows/s, "
              f"{tokens / seconds:.1f} tokens/s", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        out = generate_distillation_rows(target, tokenizer, prompts, Path(tmp) / "local", batch_size=len(prompts), **kw)
        record(f"in-process, PyTorch fp32, one batch of {len(prompts)}, {args.threads} threads",
               time.perf_counter() - start, out)
        for flight in (1, args.in_flight):
            with serve(offline_target_gguf(), threads=args.threads, slots=flight, ctx=1024) as url:
                start = time.perf_counter()
                out = generate_from_server(url, tokenizer, prompts, Path(tmp) / f"server-{flight}", batch_size=flight,
                                           concurrency=flight, **kw)
                record(f"llama-server (Q4_1), {flight} in flight, {args.threads} threads",
                       time.perf_counter() - start, out)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"hardware": hardware(), "prompts": len(prompts),
                                         "max_new_tokens": args.max_new_tokens, "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
