"""The reference run's measurements: greedy agreement, tau for every gamma, wall clock, and
the export of the shipped draft with its model card.

Reads the finished drafts and answers of a reference run (:class:`draftalign.book.reference_run.Run`);
writes ``evaluation.json``, ``tau.json``, ``greedy-<split>.json``,
``bench-<device>-<dtype>.json`` in the run folder and the exported drafter under
``data/drafts/``. Each measurement resumes where it stopped.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..answers import generate_distillation_rows, read_distillation_rows
from ..artifacts import clear_finished, is_complete, read_json, read_manifest, resume_or_restart, write_json, \
    write_manifest
from ..chat import chat_input_ids
from ..data import load_prompts
from ..drafts import load_draft_for
from ..evaluate import tau_by_category
from ..export import export_draft
from ..models import target_id
from ..provenance import versions
from ..replay import agreements, greedy_agreement, greedy_answers, replay_table
from ..speculative import speculative_generate
from ..timing import compare_decoders, decoder_table
from .pipeline import kd_dataset, kd_split
from .profiles import repo_root
from .profiles import DRAFTER_NAME
from .reference_run import Run, drafts, shipped_draft_name

__all__ = ["eval_answers", "agreement", "greedy_set", "tau", "bench", "export"]


def eval_answers(run: Run, split: str) -> list[dict]:
    """The target's greedy answers to a held-out prompt set (``eval`` or ``mt_bench``),
    generated in batches (for agreement)."""
    P, folder = run.P, run.root / f"eval-answers-{split}"
    prompts = load_prompts(split)
    spec = {"stage": "eval-answers", "split": split, "target": target_id(run.target),
            "max_new_tokens": P.eval_max_new_tokens}
    if not is_complete(folder, spec):
        clear_finished(folder)
        resume_or_restart(lambda: generate_distillation_rows(
            run.target, run.tokenizer, [p["prompt"] for p in prompts], folder,
            categories=[p["category"] for p in prompts], temperature=0.0, top_p=1.0,
            max_new_tokens=P.eval_max_new_tokens, batch_size=min(96, len(prompts)), seed=P.seed,
            progress=run.progress))
        write_manifest(folder, spec)
    rows = read_distillation_rows(folder)
    for r, p in zip(rows, prompts):
        r["id"] = p["id"]
    return rows


def agreement(run: Run) -> dict:
    """Greedy agreement of every finished draft on the validation answers (the training
    distribution, held out by prompt: :func:`~draftalign.book.pipeline.kd_split`) and on both
    evaluation sets; the best loss is the one with the highest validation agreement (never
    chosen on the evaluation sets)."""
    data, _ = kd_dataset(run.target, run.tokenizer, run.P, all_shards=True, progress=False)
    _, held = kd_split(data, run.P)
    sets = {"validation": [r for r in held if r["kind"] == "greedy"],
            "eval": eval_answers(run, "eval"), "mt_bench": eval_answers(run, "mt_bench")}
    result = {"drafts": {}, "sets": {k: len(v) for k, v in sets.items()}}
    for name, folder in drafts(run).items():
        draft = load_draft_for(folder, run.target)
        entry = {}
        for set_name, rows in sets.items():
            if not rows:
                continue
            table = greedy_agreement(draft, rows, batch_size=8 if run.target.device.type == "cpu" else 64)
            by_cat = table.groupby("category")[["hits", "tokens"]].sum()
            entry[set_name] = {"agreement": float(table.hits.sum() / table.tokens.sum()),
                               "by_category": (by_cat.hits / by_cat.tokens).round(4).to_dict()}
        result["drafts"][name] = entry
        run.log(f"agreement {name}: " + ", ".join(f"{k} {v['agreement']:.3f}" for k, v in entry.items()))
    losses = [n for n in run.P.kd_losses if "validation" in result["drafts"].get(n, {})]
    if losses:
        result["best"] = max(losses, key=lambda n: result["drafts"][n]["validation"]["agreement"])
    result["versions"] = versions()
    write_json(run.root / "evaluation.json", result)
    return result


def greedy_set(run: Run, split: str) -> list[dict]:
    """The target's plain greedy answers (one prompt at a time, the engine's own decoding) to
    a held-out set, kept in ``greedy-<split>.json``; resumes prompt by prompt."""
    path = run.root / f"greedy-{split}.json"
    spec = {"target": target_id(run.target), "dtype": str(run.target.dtype), "max_new_tokens": run.P.eval_max_new_tokens}
    saved = read_json(path, {})
    rows = saved.get("rows", []) if saved.get("spec") == spec else []
    prompts = load_prompts(split)
    for p in prompts[len(rows):]:
        a = greedy_answers(run.target, run.tokenizer, [p], max_new_tokens=run.P.eval_max_new_tokens)[0]
        rows.append({"id": a["id"], "category": a["category"], "tokens": a["tokens"], "budget": a["budget"]})
        write_json(path, {"spec": spec, "rows": rows})
    for r, p in zip(rows, prompts):
        r["input_ids"] = chat_input_ids(run.tokenizer, p["prompt"], device=run.target.device)
    return rows


def tau(run: Run) -> dict:
    """tau on ``eval`` and ``mt_bench`` for every finished draft and every gamma of the
    profile, greedy, fp32: from the target's greedy answers and one teacher-forced pass of
    each draft (:func:`draftalign.replay.replay_greedy`: the blocks the engine makes, without
    decoding again), and checked against the engine itself for the shipped draft at
    ``eval_gamma`` (tokens and target calls must be equal)."""
    P, path = run.P, run.root / "tau.json"
    if run.target.dtype != torch.float32:
        raise ValueError("tau is measured in fp32 (greedy exactness); pass --dtype float32")
    done = read_json(path, {})
    done.setdefault("entries", {})
    done.setdefault("engine_check", {})
    shipped = shipped_draft_name(run)
    for split in ("eval", "mt_bench"):
        answers = greedy_set(run, split)
        for name, folder in drafts(run).items():
            if all(f"{name}/{split}/gamma{g}" in done["entries"] for g in P.ref_gammas):
                continue
            agree = agreements(load_draft_for(folder, run.target, dtype=torch.float32), answers)
            for g in P.ref_gammas:
                table = replay_table(answers, agree, gamma=g)
                by_cat = tau_by_category(table)
                done["entries"][f"{name}/{split}/gamma{g}"] = {
                    "draft": name, "split": split, "gamma": g, "prompts": len(table),
                    "tokens": int(table.tokens.sum()), "target_calls": int(table.target_calls.sum()),
                    "tau": float(by_cat.loc["all", "tau"]),
                    "by_category": by_cat.drop("all").tau.round(3).to_dict()}
            done["versions"] = versions()
            write_json(path, done)
            run.log(f"tau {name}/{split}: " + ", ".join(
                f"gamma {g} {done['entries'][f'{name}/{split}/gamma{g}']['tau']:.3f}" for g in P.ref_gammas))
        check = P.eval_gamma if P.eval_gamma in P.ref_gammas else max(P.ref_gammas)
        key = f"{shipped}/{split}/gamma{check}"
        if key not in done["engine_check"]:
            draft = load_draft_for(drafts(run)[shipped], run.target, dtype=torch.float32)
            calls, same = 0, 0
            for a in answers:
                res = speculative_generate(run.target, draft, a["input_ids"], max_new_tokens=P.eval_max_new_tokens,
                                           gamma=check)
                calls += res.target_calls
                same += res.tokens == a["tokens"]
            tokens = sum(len(a["tokens"]) for a in answers)
            done["engine_check"][key] = {"tau_engine": tokens / calls, "target_calls_engine": calls,
                                         "target_calls_replay": done["entries"][key]["target_calls"],
                                         "outputs_equal_plain_greedy": f"{same} of {len(answers)}"}
            write_json(path, done)
            run.log(f"engine check {key}: {done['engine_check'][key]}")
    return done


def bench(run: Run) -> dict:
    """Wall clock of plain greedy decoding against speculative decoding with the shipped
    draft at every gamma: interleaved, rotated rounds (:func:`draftalign.timing.compare_decoders`)."""
    P, target = run.P, run.target
    device, dtype = target.device.type, str(target.dtype).replace("torch.", "")
    best = shipped_draft_name(run)
    draft = load_draft_for(drafts(run)[best], target)
    prompts = load_prompts("eval")[::2][: P.ref_bench_prompts // 2] + \
        load_prompts("mt_bench")[::2][: P.ref_bench_prompts - P.ref_bench_prompts // 2]
    ids = [chat_input_ids(run.tokenizer, p["prompt"], device=target.device) for p in prompts]
    methods = decoder_table(target, draft, gammas=P.ref_gammas, max_new_tokens=P.eval_max_new_tokens)
    for x in ids[:2]:  # warm-up (allocator, kernels) outside the timed rounds
        methods["plain"](x)
        methods[f"gamma={P.ref_gammas[0]}"](x)
    table, first = compare_decoders(methods, ids, rounds=P.ref_bench_rounds, progress=run.progress)
    same = all(first[m][i].tokens == first["plain"][i].tokens for m in methods for i in range(len(ids)))
    result = {"draft": best, "device": device, "dtype": dtype, "threads": torch.get_num_threads(),
              "prompts": len(ids), "rounds": P.ref_bench_rounds, "max_new_tokens": P.eval_max_new_tokens,
              "outputs_identical_to_plain": same, "table": table.reset_index().to_dict("records"),
              "versions": versions()}
    write_json(run.root / f"bench-{device}-{dtype}.json", result)
    run.log(f"bench ({device}, {dtype}):\n{table.round(3).to_string()}")
    return result


def export(run: Run, out: Path | None = None) -> Path:
    """The shipped draft, in bf16, as ``data/drafts/<DRAFTER_NAME>/`` with its model card."""
    from .reference_card import drafter_card

    best = shipped_draft_name(run)
    folder = drafts(run)[best]
    draft = load_draft_for(folder, run.target, dtype=torch.float32)
    out = out or repo_root() / "data" / "drafts" / DRAFTER_NAME
    manifest = read_manifest(folder)
    return export_draft(draft, out, tokenizer=run.tokenizer, card=drafter_card(run, best), dtype=torch.bfloat16,
                        manifest={"spec": {"stage": "export", "draft": best, **manifest["spec"]},
                                  "inputs": manifest["inputs"],
                                  "results": {**manifest["results"], "run": _run_record(run)}})


def _run_record(run: Run) -> dict:
    """Every manifest and measurement of the run, for the exported draft's provenance."""
    record = {}
    for folder in sorted(run.root.iterdir()):
        if folder.is_dir() and read_manifest(folder) is not None:
            record[folder.name] = read_manifest(folder)
    for name in ("evaluation.json", "tau.json"):
        record[name] = read_json(run.root / name)
    for path in sorted(run.root.glob("bench-*.json")) + sorted(run.root.glob("plan-*.json")):
        record[path.name] = read_json(path)
    return record
