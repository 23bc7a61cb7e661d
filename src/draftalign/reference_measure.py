"""The reference run's measurements: greedy agreement, tau for every gamma, wall clock, and
the export of the shipped draft with its model card.

Reads the finished drafts and answers of a :class:`draftalign.reference.Run`; writes
``evaluation.json``, ``tau.json``, ``bench-<device>-<dtype>.json`` in the run folder and the
exported drafter under ``data/drafts/``. Each measurement resumes where it stopped.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .artifacts import clear_finished, is_complete, read_manifest, resume_or_restart, write_manifest
from .evaluate import greedy_agreement
from .metrics import pooled_tau
from .generate import generate_distillation_rows, read_distillation_rows
from .profiles import repo_root
from .provenance import versions

__all__ = ["Measurements", "DRAFTER_NAME"]

DRAFTER_NAME = "smollm2-135m-instruct-drafter"


def _atomic_json(path: Path, value) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, default=str))
    tmp.replace(path)


def _read_json(path: Path, default=None):
    return json.loads(path.read_text()) if path.exists() else default


class Measurements:
    """The measuring stages of :class:`draftalign.reference.Run` (a mixin: it uses the run's
    profile, folder, target, drafts and answers)."""

    def eval_answers(self, split: str) -> list[dict]:
        """The target's greedy answers to a held-out prompt set (``eval`` or ``mt_bench``)."""
        from .data import load_prompts

        P, folder = self.P, self.root / f"eval-answers-{split}"
        prompts = load_prompts(split)
        spec = {"stage": "eval-answers", "split": split, "target": self.target_name,
                "max_new_tokens": P.eval_max_new_tokens}
        if not is_complete(folder, spec):
            clear_finished(folder)
            resume_or_restart(lambda: generate_distillation_rows(
                self.target, self.tokenizer, [p["prompt"] for p in prompts], folder,
                categories=[p["category"] for p in prompts], temperature=0.0, top_p=1.0,
                max_new_tokens=P.eval_max_new_tokens, batch_size=min(96, len(prompts)), seed=P.seed,
                progress=self.progress))
            write_manifest(folder, spec)
        rows = read_distillation_rows(folder)
        for r, p in zip(rows, prompts):
            r["id"] = p["id"]
        return rows

    def agreement(self) -> dict:
        """Greedy agreement of every finished draft on the validation answers (training
        distribution, held out by prompt) and on both evaluation sets; the best loss is the
        one with the highest validation agreement (never chosen on the evaluation sets)."""
        _, val_rows = self.split(self.answer_rows())
        sets = {"validation": [r for r in val_rows if r["kind"] == "greedy"],
                "eval": self.eval_answers("eval"), "mt_bench": self.eval_answers("mt_bench")}
        result = {"drafts": {}, "sets": {k: len(v) for k, v in sets.items()}}
        for name, folder in self.drafts().items():
            draft = self.load_draft(folder, dtype=next(self.target.parameters()).dtype)
            entry = {}
            for set_name, rows in sets.items():
                if not rows:
                    continue
                table = greedy_agreement(draft, rows, batch_size=8 if self.target.device.type == "cpu" else 64)
                by_cat = table.groupby("category")[["hits", "tokens"]].sum()
                entry[set_name] = {"agreement": float(table.hits.sum() / table.tokens.sum()),
                                   "by_category": (by_cat.hits / by_cat.tokens).round(4).to_dict()}
            result["drafts"][name] = entry
            self.log(f"agreement {name}: " + ", ".join(f"{k} {v['agreement']:.3f}" for k, v in entry.items()))
        losses = [n for n in self.P.kd_losses if "validation" in result["drafts"].get(n, {})]
        if losses:
            result["best"] = max(losses, key=lambda n: result["drafts"][n]["validation"]["agreement"])
        result["versions"] = versions()
        _atomic_json(self.root / "evaluation.json", result)
        return result

    def best_draft_name(self) -> str:
        result = _read_json(self.root / "evaluation.json") or self.agreement()
        if "best" not in result:
            raise RuntimeError("no distilled draft is finished; run the kd stage first")
        return result["best"]

    def greedy_answers(self, split: str) -> list[dict]:
        """The target's plain greedy answers (fp32, one prompt at a time, the engine's own
        decoding) to a held-out set, kept in ``greedy-<split>.json``; resumes prompt by prompt."""
        from .analysis import greedy_answers
        from .chat import chat_input_ids
        from .data import load_prompts

        path = self.root / f"greedy-{split}.json"
        spec = {"target": self.target_name, "dtype": str(self.target.dtype),
                "max_new_tokens": self.P.eval_max_new_tokens}
        saved = _read_json(path, {})
        rows = saved.get("rows", []) if saved.get("spec") == spec else []
        prompts = load_prompts(split)
        for p in prompts[len(rows):]:
            a = greedy_answers(self.target, self.tokenizer, [p], max_new_tokens=self.P.eval_max_new_tokens)[0]
            rows.append({"id": a["id"], "category": a["category"], "tokens": a["tokens"], "budget": a["budget"]})
            _atomic_json(path, {"spec": spec, "rows": rows})
        for r, p in zip(rows, prompts):
            r["input_ids"] = chat_input_ids(self.tokenizer, p["prompt"], device=self.target.device)
        return rows

    def tau(self) -> dict:
        """tau on ``eval`` and ``mt_bench`` for every finished draft and every gamma of the
        profile, greedy, fp32: from the target's greedy answers and one teacher-forced pass of
        each draft (:func:`draftalign.analysis.replay_greedy`: the blocks the engine makes,
        without decoding again), and checked against the engine itself for the shipped draft
        at ``eval_gamma`` (tokens and target calls must be equal)."""
        from .analysis import agreements, replay_table
        from .speculative import speculative_generate

        P, path = self.P, self.root / "tau.json"
        if self.target.dtype != torch.float32:
            raise ValueError("tau is measured in fp32 (greedy exactness); pass --dtype float32")
        done = _read_json(path, {})
        done.setdefault("entries", {})
        done.setdefault("engine_check", {})
        shipped = self.shipped_draft_name()
        for split in ("eval", "mt_bench"):
            answers = self.greedy_answers(split)
            for name, folder in self.drafts().items():
                if all(f"{name}/{split}/gamma{g}" in done["entries"] for g in P.ref_gammas):
                    continue
                agree = agreements(self.load_draft(folder), answers)
                for g in P.ref_gammas:
                    table = replay_table(answers, agree, gamma=g)
                    by_cat = table.groupby("category")[["tokens", "target_calls"]].sum()
                    done["entries"][f"{name}/{split}/gamma{g}"] = {
                        "draft": name, "split": split, "gamma": g, "prompts": len(table),
                        "tokens": int(table.tokens.sum()), "target_calls": int(table.target_calls.sum()),
                        "tau": pooled_tau(table.tokens, table.target_calls),
                        "by_category": (by_cat.tokens / by_cat.target_calls).round(3).to_dict()}
                done["versions"] = versions()
                _atomic_json(path, done)
                self.log(f"tau {name}/{split}: " + ", ".join(
                    f"gamma {g} {done['entries'][f'{name}/{split}/gamma{g}']['tau']:.3f}" for g in P.ref_gammas))
            check = P.eval_gamma if P.eval_gamma in P.ref_gammas else max(P.ref_gammas)
            key = f"{shipped}/{split}/gamma{check}"
            if key not in done["engine_check"]:
                draft = self.load_draft(self.drafts()[shipped])
                calls, same = 0, 0
                for a in answers:
                    res = speculative_generate(self.target, draft, a["input_ids"], max_new_tokens=P.eval_max_new_tokens,
                                               gamma=check)
                    calls += res.target_calls
                    same += res.tokens == a["tokens"]
                tokens = sum(len(a["tokens"]) for a in answers)
                done["engine_check"][key] = {"tau_engine": tokens / calls, "target_calls_engine": calls,
                                             "target_calls_replay": done["entries"][key]["target_calls"],
                                             "outputs_equal_plain_greedy": f"{same} of {len(answers)}"}
                _atomic_json(path, done)
                self.log(f"engine check {key}: {done['engine_check'][key]}")
        return done

    def bench(self) -> dict:
        """Wall clock of plain greedy decoding against speculative decoding with the best
        draft at every gamma: interleaved, rotated rounds (:func:`draftalign.timing.compare_decoders`)."""
        from .data import load_prompts
        from .chat import chat_input_ids
        from .speculative import autoregressive_generate, speculative_generate
        from .timing import compare_decoders

        P = self.P
        target, tok = self.target, self.tokenizer
        device = target.device.type
        dtype = str(target.dtype).replace("torch.", "")
        path = self.root / f"bench-{device}-{dtype}.json"
        best = self.shipped_draft_name()
        draft = self.load_draft(self.drafts()[best], dtype=target.dtype)
        prompts = load_prompts("eval")[::2][: P.ref_bench_prompts // 2] + \
            load_prompts("mt_bench")[::2][: P.ref_bench_prompts - P.ref_bench_prompts // 2]
        ids = [chat_input_ids(tok, p["prompt"], device=target.device) for p in prompts]
        n = P.eval_max_new_tokens
        methods = {"plain": lambda x: autoregressive_generate(target, x, max_new_tokens=n)}
        for g in P.ref_gammas:
            methods[f"gamma={g}"] = lambda x, g=g: speculative_generate(target, draft, x, max_new_tokens=n, gamma=g)
        for x in ids[:2]:  # warm-up (allocator, kernels) outside the timed rounds
            methods["plain"](x)
            methods[f"gamma={P.ref_gammas[0]}"](x)
        table, first = compare_decoders(methods, ids, rounds=P.ref_bench_rounds, progress=self.progress)
        same = all(first[m][i].tokens == first["plain"][i].tokens for m in methods for i in range(len(ids)))
        result = {"draft": best, "device": device, "dtype": dtype, "threads": torch.get_num_threads(),
                  "prompts": len(ids), "rounds": P.ref_bench_rounds, "max_new_tokens": n,
                  "outputs_identical_to_plain": same, "table": table.reset_index().to_dict("records"),
                  "versions": versions()}
        _atomic_json(path, result)
        self.log(f"bench ({device}, {dtype}):\n{table.round(3).to_string()}")
        return result

    def export(self, out: Path | None = None) -> Path:
        """The best draft, in bf16, as ``data/drafts/<DRAFTER_NAME>/`` with its model card."""
        from .export import export_draft
        from .reference_card import drafter_card

        best = self.shipped_draft_name()
        folder = self.drafts()[best]
        draft = self.load_draft(folder)
        out = out or repo_root() / "data" / "drafts" / DRAFTER_NAME
        card = drafter_card(self, best)
        manifest = read_manifest(folder)
        return export_draft(draft, out, tokenizer=self.tokenizer, card=card, dtype=torch.bfloat16,
                            manifest={"spec": {"stage": "export", "draft": best, **manifest["spec"]},
                                      "inputs": manifest["inputs"],
                                      "results": {**manifest["results"], "run": _run_record(self)}})


def _run_record(run) -> dict:
    """Every manifest and measurement of the run, for the exported draft's provenance."""
    record = {}
    for folder in sorted(run.root.iterdir()):
        if folder.is_dir() and read_manifest(folder) is not None:
            record[folder.name] = read_manifest(folder)
    for name in ("evaluation.json", "tau.json"):
        record[name] = _read_json(run.root / name)
    for path in sorted(run.root.glob("bench-*.json")):
        record[path.name] = _read_json(path)
    for path in sorted(run.root.glob("plan-*.json")):
        record[path.name] = _read_json(path)
    return record
