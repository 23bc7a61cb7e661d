"""The model card of the reference drafter, written from the run's own records.

Reads the manifests, plans and measurements of a reference run
(:class:`draftalign.reference.Run`); writes nothing (returns the card's Markdown).
Every number in the card comes from those files, so the card cannot drift from the run.
"""

from __future__ import annotations

import json
from pathlib import Path

from .artifacts import read_manifest
from .export import model_card
from .models import DEFAULT_TARGET

__all__ = ["drafter_card"]


def _read(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def _tau_table(tau: dict, draft: str) -> str:
    entries = [e for e in (tau or {}).get("entries", {}).values() if e["draft"] == draft]
    if not entries:
        return "_not measured yet_"
    gammas = sorted({e["gamma"] for e in entries})
    rows = ["| prompts | " + " | ".join(f"gamma {g}" for g in gammas) + " |",
            "|---|" + "---|" * len(gammas)]
    for split in ("eval", "mt_bench"):
        cells = []
        for g in gammas:
            e = next((e for e in entries if e["split"] == split and e["gamma"] == g), None)
            cells.append(f"{e['tau']:.2f}" if e else "")
        rows.append(f"| {split} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _bench_table(bench: dict) -> str:
    rows = ["| method | tau | tokens/s | time vs plain |", "|---|---|---|---|"]
    for r in bench["table"]:
        rows.append(f"| {r['method']} | {r['tau']:.2f} | {r['tokens_per_s']:.1f} | {r['time_vs_plain']:.3f} |")
    return "\n".join(rows)


def drafter_card(run, loss: str) -> str:
    """The card of the draft distilled with ``loss`` in ``run``."""
    root = run.root
    P = run.P
    pre = read_manifest(root / "draft-pretrained") or {}
    kd = read_manifest(root / f"draft-{loss}") or {}
    corpus = read_manifest(root / "corpus") or {}
    prompts = read_manifest(root / "prompts") or {}
    plans = {p.stem: _read(p) for p in root.glob("plan-*.json")}
    evaluation = _read(root / "evaluation.json") or {}
    tau = _read(root / "tau.json")
    benches = {p.name: _read(p) for p in sorted(root.glob("bench-*.json"))}
    n_params = pre.get("results", {}).get("parameters")
    answers = sum(len(r["response_ids"]) for r in run.answer_rows())
    agree = evaluation.get("drafts", {})
    lines = [
        f"A draft model for speculative decoding with **{DEFAULT_TARGET}** (the target), trained with "
        f"the `draftalign` package: pretraining on a corpus, distillation data written by the target, and "
        f"knowledge-distillation fine-tuning (Goel et al. 2024, *Direct Alignment of Draft Model for "
        f"Speculative Decoding with Chat-Fine-Tuned LLMs*). It shares the target's tokenizer and its full "
        f"vocabulary ({run.tokenizer.vocab_size if hasattr(run.tokenizer, 'vocab_size') else ''} tokens; "
        f"`config.json` vocab_size equals the target's), so `transformers`' "
        f"`generate(..., assistant_model=draft)` takes it as it is and the output stays the target's.",
        "",
        "## Use",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        f'target = AutoModelForCausalLM.from_pretrained("{DEFAULT_TARGET}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{DEFAULT_TARGET}")',
        'draft = AutoModelForCausalLM.from_pretrained("path/to/this/folder")',
        "out = target.generate(**inputs, assistant_model=draft, do_sample=False, max_new_tokens=128)",
        "```",
        "",
        "or with the package's own engine: `draftalign.speculative.speculative_generate(target, draft, ids, "
        "max_new_tokens=128, gamma=2)`.",
        "",
        "## Architecture",
        "",
        f"Llama, hidden size {P.draft_hidden}, {P.draft_layers} layers, {P.draft_heads} heads, MLP "
        f"{P.draft_intermediate}, tied embeddings; {n_params:,} parameters "
        f"({100 * n_params / 134_515_008:.2f}% of the target's 134.5M). Weights in bf16. The embeddings "
        f"started as the target's projected onto their top {P.draft_hidden} singular directions." if n_params else "",
        "",
        "## How it was made",
        "",
        "Command: `make reference` (= `python -m draftalign.reference`), with time budgets on a GPU; "
        "the stages, their settings and times are in `manifest.json`.",
        "",
        f"1. **Pretraining**: corpus `{P.pretrain_corpus}` ({corpus.get('results', {}).get('tokens', '?'):,} tokens), "
        f"{pre.get('spec', {}).get('train', {}).get('max_steps', '?')} steps of "
        f"{P.pretrain_batch} x {P.pretrain_block} tokens "
        f"({pre.get('inputs', {}).get('tokens_seen', 0):,} tokens seen, "
        f"{pre.get('results', {}).get('train_seconds', 0):.0f} s).",
        f"2. **Distillation data**: the target's answers (greedy and sampled at T = {P.ref_sampled_temperature}, "
        f"up to {P.ref_answer_max_new_tokens} tokens) to {prompts.get('results', {}).get('prompts', '?')} prompts: "
        f"the book's distillation prompts, passage tasks and Magpie self-instruct prompts written by the target, "
        f"none sharing 8 words with an evaluation prompt; {answers:,} answer tokens.",
        f"3. **KD fine-tuning** with `{loss}` (chosen over the other losses by greedy agreement on held-out "
        f"training prompts): {kd.get('spec', {}).get('train', {}).get('max_steps', '?')} steps of "
        f"{P.kd_batch} answers ({kd.get('inputs', {}).get('answer_tokens_seen', 0):,} answer tokens seen, "
        f"{kd.get('results', {}).get('train_seconds', 0):.0f} s), target distributions computed online.",
        "",
        f"Hardware and step budgets: {json.dumps(plans)}.",
        "",
        "## Greedy agreement (teacher-forced, on the target's greedy answers)",
        "",
        "| draft | " + " | ".join(k for k in ("validation", "eval", "mt_bench")) + " |",
        "|---|---|---|---|",
    ]
    for name, entry in agree.items():
        lines.append(f"| {name} | " + " | ".join(
            f"{entry[k]['agreement']:.3f}" if k in entry else "" for k in ("validation", "eval", "mt_bench")) + " |")
    lines += ["", "## Block efficiency tau (greedy, fp32, tokens per target call)", "",
              f"On `data/prompts/eval.jsonl` (72 prompts) and the MT-Bench first turns (80), "
              f"{P.eval_max_new_tokens} new tokens each; never trained on.", "", _tau_table(tau, loss), ""]
    for name, bench in benches.items():
        lines += [f"## Wall clock ({bench['device']}, {bench['dtype']}, {bench['threads']} threads; "
                  f"{bench['versions']['hardware']})", "",
                  f"{bench['prompts']} prompts x {bench['rounds']} interleaved rounds, median; output identical "
                  f"to plain greedy decoding: {bench['outputs_identical_to_plain']}.", "", _bench_table(bench), ""]
    lines += ["## Sampling", "",
              "With sampling, speculative decoding's output is distributed exactly as the target's: the draft "
              "only changes how fast it comes.", "",
              "## License", "", "Apache-2.0, as the target."]
    return model_card(title="SmolLM2-135M-Instruct drafter", base_model=DEFAULT_TARGET, body="\n".join(lines),
                      tags=("speculative-decoding", "draft-model", "assistant-model", "draftalign", "smollm2"))
