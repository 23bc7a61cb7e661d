"""The inputs of Chapter 4's loss verdict: which prompts, and the target's answers to them.

Reads the profile's distillation set (its held-out split) and the MT-Bench first turns;
writes ``runs/<profile>/answers-<set>/`` (the target's answers at the profile's report
temperatures, reused while the target, prompts and settings are the same). The verdict
itself is :func:`draftalign.evaluate.acceptance_report` with :mod:`draftalign.compare`.
"""

from __future__ import annotations

import hashlib
import time

from ..acceptance import target_answers
from ..artifacts import clear_finished, is_complete, read_json, write_json, write_manifest
from ..data import load_prompts, pick_prompts
from ..models import target_identity
from .pipeline import kd_split
from .profiles import Profile, runs_dir

__all__ = ["report_prompts", "report_answers"]


def report_prompts(data, P: Profile) -> dict[str, list[dict]]:
    """The prompts of Chapter 4's verdict: ``held-out`` (prompts of the distillation set no
    draft trained on, :func:`~draftalign.book.pipeline.kd_split`, ``P.report_per_category``
    per category: the same kind of prompt as the training data) and ``MT-Bench`` (first
    turns, a public set of another kind: the out-of-distribution check)."""
    _, held = kd_split(data, P)
    return {"held-out": pick_prompts(held, P.report_per_category),
            "MT-Bench": load_prompts("mt_bench", limit_per_category=P.report_mt_bench_per_category)}


def report_answers(target, tokenizer, P: Profile, name: str, prompts: list[dict], *, progress: bool = True) -> list[dict]:
    """The target's answers to ``prompts`` at the profile's report temperatures
    (:func:`draftalign.acceptance.target_answers`), kept in ``runs/<profile>/answers-<name>/``
    and reused while the target, prompts and settings are the same."""
    folder = runs_dir(P) / f"answers-{name}"
    texts = [p["prompt"] for p in prompts]
    spec = {"stage": "report-answers", "target": target_identity(target), "dtype": str(next(target.parameters()).dtype),
            "prompts_sha256": hashlib.sha256("\0".join(texts).encode("utf-8")).hexdigest(),
            "temperatures": list(P.report_temperatures), "max_new_tokens": P.report_max_new_tokens, "seeds": [P.seed]}
    path = folder / "answers.json"
    if is_complete(folder, spec) and path.exists():
        return read_json(path)
    clear_finished(folder)
    start = time.perf_counter()
    answers = target_answers(target, prompts, temperatures=P.report_temperatures, tokenizer=tokenizer,
                             max_new_tokens=P.report_max_new_tokens, seeds=(P.seed,), progress=progress)
    write_json(path, answers, indent=None)
    write_manifest(folder, spec, inputs={"prompts": len(prompts)},
                   results={"answers": len(answers), "tokens": sum(len(a["tokens"]) for a in answers),
                            "seconds": time.perf_counter() - start})
    return answers
