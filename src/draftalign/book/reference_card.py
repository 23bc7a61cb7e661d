"""The model card of the reference drafter, written from the run's own records.

Reads the manifests, plans and measurements of a reference run
(:class:`draftalign.book.reference_run.Run`); writes nothing (returns the card's Markdown).
Every number in the card comes from those files, so the card cannot drift from the run.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..artifacts import read_manifest
from ..export import model_card
from .. import DEFAULT_TARGET
from .pipeline import answer_shard_rows
from .reference_run import drafts

__all__ = ["drafter_card", "recipe_table"]

TARGET_PARAMETERS = 134_515_008  # SmolLM2-135M-Instruct


def _read(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def _tau_table(tau: dict, draft: str) -> str:
    entries = [e for e in (tau or {}).get("entries", {}).values() if e["draft"] == draft]
    if not entries:
        return "_not measured_"
    gammas = sorted({e["gamma"] for e in entries})
    rows = ["| prompts | " + " | ".join(f"gamma {g}" for g in gammas) + " |", "|---|" + "---|" * len(gammas)]
    for split, label in (("eval", "book eval (72)"), ("mt_bench", "MT-Bench (80)")):
        cells = []
        for g in gammas:
            e = next((e for e in entries if e["split"] == split and e["gamma"] == g), None)
            cells.append(f"{e['tau']:.2f}" if e else "")
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _bench_table(bench: dict) -> str:
    rows = ["| method | tau | tokens/s | time vs plain | speed-up |", "|---|---|---|---|---|"]
    for r in bench["table"]:
        rows.append(f"| {r['method']} | {r['tau']:.2f} | {r['tokens_per_s']:.1f} | {r['time_vs_plain']:.3f} | "
                    f"{1 / r['time_vs_plain']:.2f}x |")
    return "\n".join(rows)


def recipe_table(run) -> str:
    """Every draft of the run as one recipe row: data, budget, held-out agreement, tau."""
    root = run.root
    evaluation = _read(root / "evaluation.json") or {}
    tau = (_read(root / "tau.json") or {}).get("entries", {})
    rows = ["| draft | recipe | answer tokens seen | training time | agreement eval / MT-Bench | "
            "tau gamma 4 eval / MT-Bench |", "|---|---|---|---|---|---|"]
    for name, folder in drafts(run).items():
        m = read_manifest(folder) or {}
        spec, inputs, results = m.get("spec", {}), m.get("inputs", {}), m.get("results", {})
        if name == "pretrained":
            recipe = (f"pretraining on the `{run.P.pretrain_corpus}` corpus, embeddings projected from the "
                      f"target's, {spec.get('train', {}).get('max_steps')} steps x "
                      f"{spec.get('train', {}).get('batch_size')} x {spec.get('block')} tokens")
            seen = inputs.get("train_tokens_seen", inputs.get("tokens_seen", 0))
            where = "GPU"
        elif name == "finetuned":
            recipe = (f"the `{spec.get('base_name')}` draft, then answer cross-entropy on every answer "
                      f"({spec.get('train', {}).get('max_steps')} steps x {spec.get('train', {}).get('batch_size')})")
            seen = inputs.get("answer_tokens_seen", 0)
            where = "CPU"
        else:
            recipe = (f"KD with `{name}` (target online) on the first answer shard, "
                      f"{spec.get('train', {}).get('max_steps')} steps x {spec.get('train', {}).get('batch_size')}")
            seen = inputs.get("answer_tokens_seen", 0)
            where = "GPU"
        agree = evaluation.get("drafts", {}).get(name, {})
        a = " / ".join(f"{agree[k]['agreement']:.3f}" if k in agree else "-" for k in ("eval", "mt_bench"))
        t = " / ".join(f"{tau[k]['tau']:.2f}" if k in tau else "-"
                       for k in (f"{name}/eval/gamma4", f"{name}/mt_bench/gamma4"))
        rows.append(f"| {name} | {recipe} | {seen:,} | {results.get('train_seconds', 0):.0f} s ({where}) | {a} | {t} |")
    return "\n".join(rows)


def drafter_card(run, name: str) -> str:
    """The card of the draft ``name`` (``finetuned`` or a loss) of ``run``."""
    root, P = run.root, run.P
    pre = read_manifest(root / "draft-pretrained") or {}
    corpus = read_manifest(root / "corpus") or {}
    prompts = read_manifest(root / "prompts") or {}
    plans = {p.stem: _read(p) for p in sorted(root.glob("plan-*.json"))}
    tau = _read(root / "tau.json") or {}
    benches = {p.name: _read(p) for p in sorted(root.glob("bench-*.json"))}
    n_params = pre.get("results", {}).get("parameters", 0)
    answers = answer_shard_rows(P)
    tokens = sum(len(r["response_ids"]) for r in answers)
    greedy = sum(r["kind"] == "greedy" for r in answers)
    check = tau.get("engine_check", {})
    lines = [
        f"A draft model for speculative decoding with **{DEFAULT_TARGET}** (the target), made with the "
        f"`draftalign` package following Goel et al. 2024 (*Direct Alignment of Draft Model for Speculative "
        f"Decoding with Chat-Fine-Tuned LLMs*): pretraining, distillation data written by the target, and "
        f"knowledge-distillation fine-tuning. It shares the target's tokenizer and full vocabulary "
        f"(`config.json` vocab_size 49152, the target's), so transformers' "
        f"`generate(..., assistant_model=draft)` takes it as it is, and greedy output stays the target's.",
        "",
        "## Use", "", "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        f'target = AutoModelForCausalLM.from_pretrained("{DEFAULT_TARGET}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{DEFAULT_TARGET}")',
        'draft = AutoModelForCausalLM.from_pretrained("data/drafts/smollm2-135m-instruct-drafter")',
        'ids = tokenizer.apply_chat_template([{"role": "user", "content": "Name three rivers."}],',
        '                                    add_generation_prompt=True, return_tensors="pt")',
        "out = target.generate(**ids, assistant_model=draft, do_sample=False, max_new_tokens=128)",
        "```", "",
        "or the package's engine: `draftalign.speculative.speculative_generate(target, draft, ids, "
        "max_new_tokens=128, gamma=2)`.", "",
        "## Architecture", "",
        f"Llama, hidden size {P.draft_hidden}, {P.draft_layers} layers, {P.draft_heads} heads, MLP "
        f"{P.draft_intermediate}, tied embeddings: {n_params:,} parameters, "
        f"{100 * n_params / TARGET_PARAMETERS:.2f}% of the target's {TARGET_PARAMETERS:,} (the paper's drafter is "
        f"1.64% of its target). Weights in bf16.", "",
        "## How it was made", "",
        "`make reference` (`draftalign reference`), stage by stage; the manifest beside this card "
        "records every stage's settings, inputs, results and hardware.", "",
        f"1. **Pretraining** (stage `pretrain`): the `{P.pretrain_corpus}` corpus (Python's and the installed "
        f"packages' docstrings, {corpus.get('results', {}).get('tokens', 0):,} tokens), embeddings started as "
        f"the target's projected onto their top {P.draft_hidden} singular directions; "
        f"{pre.get('inputs', {}).get('train_tokens_seen', pre.get('inputs', {}).get('tokens_seen', 0)):,} tokens seen.",
        f"2. **Distillation data** (stages `prompts`, `answers`): {prompts.get('results', {}).get('prompts', 0):,} "
        f"prompts (the book's 342 distillation prompts, {prompts.get('results', {}).get('passage', 0):,} passage "
        f"tasks, {prompts.get('results', {}).get('magpie', 0):,} Magpie prompts written by the target itself; "
        f"no passage task or Magpie prompt shares a run of 8 words with an evaluation prompt; three built-in "
        f"prompts share template wording with one, see `data/README.md`); the first "
        f"{len({r['prompt'] for r in answers}):,} "
        f"answered, "
        f"greedily ({greedy:,} answers) and sampled at T = {P.ref_sampled_temperature} "
        f"({len(answers) - greedy:,}), up to {P.ref_answer_max_new_tokens} tokens: {tokens:,} answer tokens.",
        "3. **KD fine-tuning** (stage `kd`): FKL and TVD++ from the pretrained draft at the same budget, "
        "target distributions online; FKL won on held-out training prompts (never on the evaluation sets).",
        "4. **Further training** (stage `finetune`): the FKL draft, cross-entropy on every answer token "
        "(sequence-level distillation: on greedy answers it teaches the target's argmax).", "",
        "Hardware and time of the stages that had a budget: "
        + "; ".join(f"{k}: {v['steps']} steps in {v['budget_s']:.0f} s on {v['hardware']}" for k, v in plans.items())
        + ".", "",
        "| draft | recipe | answer tokens seen | training time | greedy agreement eval / MT-Bench | "
        "tau gamma 4 eval / MT-Bench |",
        "\n".join(recipe_table(run).splitlines()[1:]), "",
        "## Block efficiency tau (greedy, fp32, tokens per target call)", "",
        f"On the book's evaluation prompts (the package's `prompts/eval.jsonl`, 72) and the MT-Bench first turns (80), "
        f"{P.eval_max_new_tokens} new tokens each, never trained on. Computed from the target's greedy answers "
        f"and one pass of the draft (the blocks speculative decoding makes, `draftalign.replay.replay_greedy`) "
        f"and checked against the engine: " + "; ".join(
            f"{k}: engine tau {v['tau_engine']:.3f}, target calls {v['target_calls_engine']} (engine) vs "
            f"{v['target_calls_replay']} (replay), outputs equal to plain greedy {v['outputs_equal_plain_greedy']}"
            for k, v in check.items()) + ".", "", _tau_table(tau, name), "",
    ]
    for bench in benches.values():
        lines += [f"## Wall clock ({bench['device']}, {bench['dtype']}, {bench['threads']} torch thread(s); "
                  f"{bench['versions']['hardware']})", "",
                  f"{bench['prompts']} prompts x {bench['rounds']} interleaved rounds, medians; output identical to "
                  f"plain greedy decoding: {bench['outputs_identical_to_plain']}.", "", _bench_table(bench), ""]
    lines += ["## Sampling", "",
              "With sampling, speculative decoding's output is distributed exactly as the target's (the "
              "accept/reject rule makes it so for any draft); the draft only changes how fast it comes.", "",
              "## Limits", "",
              "Measured, not assumed: the numbers above are all this card claims. The target is small (135M) "
              "and the draft is limited to a tenth of it, so on a CPU a draft step is not free next to a "
              "target step; the paper's 2.3 block efficiency is for a 7B target.", "",
              "## License", "", "Apache-2.0, as the target."]
    return model_card(title="SmolLM2-135M-Instruct drafter", base_model=DEFAULT_TARGET, body="\n".join(lines),
                      tags=("speculative-decoding", "draft-model", "assistant-model", "draftalign", "smollm2"),
                      datasets=("draftalign/data/distill/smollm2-135m-reference",))
