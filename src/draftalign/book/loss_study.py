"""The loss study at the reference scale: does TVD++ beat FKL on what it optimises?

Distils every loss (fkl, rkl, tvd, tvd++) from the reference drafter's pretraining stage
(``data/drafts/smollm2-135m-instruct-pretrained``) on the shipped reference answers
(``data/distill/smollm2-135m-reference``), several training seeds per loss, with the
target's cached top-k (computed once here: the shipped set has none); then fkl and tvd++
on-policy (the draft writes the answers, the target scores them online) at the same
budget; then one short run per loss with the target online beside the cached one (how far
the cached target's verdict is from the exact one). Every draft is measured with
:func:`draftalign.evaluate.acceptance_report` on held-out prompts of the set (split by
prompt, every category) and on MT-Bench's first turns: acceptance alpha at T = 1 and
T = 0.7, greedy tau, with 95% bootstrap intervals over prompts.

Writes ``runs/loss-study/`` (every stage resumable: a killed run continues from its last
checkpoint) and the table ``data/results/loss_study.json`` (settings, hardware, times,
held-out curves, the report, the verdict). Chapter 4 reads that table.

    draftalign study                      # every stage (hours on a 2-core CPU)
    draftalign study --stages topk,offline
    draftalign study --steps 4 --seeds 0 --out /tmp/study --set pool=32 --set curve_rows=16 \
        --set check_steps=4 --set eval_every=2 --results /tmp/study/results.json   # a quick try
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from .profiles import repo_root

__all__ = ["STAGES", "LOSSES", "ON_POLICY_LOSSES", "SIZES", "run_study"]

STAGES = ("topk", "offline", "check", "onpolicy", "eval", "report")
LOSSES = ("fkl", "rkl", "tvd", "tvd++")
ON_POLICY_LOSSES = ("fkl", "tvd++")
PRETRAINED = "data/drafts/smollm2-135m-instruct-pretrained"
ANSWERS = "data/distill/smollm2-135m-reference"

# Sizes. One budget for every loss and mode: STEPS optimizer steps of BATCH answers.
SIZES = dict(
    held_out_share=0.1,  # prompts held out by held_out_split (by prompt, every category)
    pool=2400,  # training answers, a seeded sample of the rest (= STEPS x BATCH: one pass)
    curve_rows=32,  # held-out answers of the curve (cached target), fixed for every run
    eval_per_category=4,  # held-out prompts per category for the acceptance report (11 categories)
    batch=8, lr=3e-3, warmup=20, eval_every=25, max_length=512, sub_vocab=4,
    check_steps=60,  # the short run of each loss with the target online beside the cached one
    on_policy_max_new_tokens=128, on_policy_temperature=1.0,
    report_max_new_tokens=128, report_gamma=4, engine_prompts=4, mt_bench_per_category=10,
)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def study_data(tokenizer, sizes: dict) -> dict:
    """Rows, the split and the evaluation prompts: a pure function of the shipped files."""
    from ..data import held_out_split, load_prompts, pick_prompts
    from ..packed import read_packed_answers

    rows = read_packed_answers(repo_root() / ANSWERS, tokenizer)
    train_rows, held_rows = held_out_split(rows, share=sizes["held_out_share"])
    pool = random.Random(0).sample(train_rows, min(sizes["pool"], len(train_rows)))
    curve = random.Random(1).sample(held_rows, min(sizes["curve_rows"], len(held_rows)))
    held_prompts = pick_prompts(held_rows, sizes["eval_per_category"])
    return {"rows": len(rows), "train_rows": len(train_rows), "held_rows": len(held_rows), "pool": pool,
            "curve": curve, "held_prompts": held_prompts, "mt_bench": load_prompts("mt_bench", limit_per_category=sizes["mt_bench_per_category"])}


def train_config(steps: int, seed: int, sizes: dict):
    from ..train import TrainConfig

    every = max(1, steps // sizes["eval_every"])  # evaluations (and checkpoints) over the run
    return TrainConfig.for_steps(steps, batch_size=sizes["batch"], lr=sizes["lr"], warmup=sizes["warmup"],
                                 evals=every, checkpoints=every, eval_batches=sizes["curve_rows"] // sizes["batch"],
                                 seed=seed, autocast="bf16")


def start_draft(target, keep):
    import torch

    from ..drafts import load_draft_for
    from ..subvocab import sub_vocab_draft

    return sub_vocab_draft(load_draft_for(repo_root() / PRETRAINED, target, dtype=torch.float32), keep)


def finished(folder: Path) -> bool:
    return (folder / "history.csv").exists() and (folder / "config.json").exists()


def run_offline(target, tokenizer, data, topk, keep, folder: Path, loss: str, seed: int, steps: int,
                sizes: dict, *, cached: bool = True) -> None:
    if finished(folder):
        return
    from ..distill import distill

    log(f"{folder.name}: {steps} steps, target {'cached' if cached else 'online'}")
    draft = start_draft(target, keep)
    distill(draft, target, data["pool"], folder, loss=loss, cfg=train_config(steps, seed, sizes),
            max_length=sizes["max_length"], eval_dataset=data["curve"], pad_id=tokenizer.pad_token_id,
            topk=topk if cached else None, eval_topk=topk, progress=False)


def run_on_policy(target, tokenizer, data, topk, keep, folder: Path, prompts, loss: str, seed: int, steps: int,
                  sizes: dict) -> None:
    if finished(folder):
        return
    from ..onpolicy import distill_on_policy

    log(f"{folder.name}: {steps} steps on-policy, target online")
    draft = start_draft(target, keep)
    distill_on_policy(draft, target, prompts, folder, loss=loss, cfg=train_config(steps, seed, sizes),
                      max_new_tokens=sizes["on_policy_max_new_tokens"], temperature=sizes["on_policy_temperature"],
                      max_length=sizes["max_length"], eval_dataset=data["curve"], eval_topk=topk,
                      pad_id=tokenizer.pad_token_id, progress=False)


def study_drafts(target, out: Path, seeds) -> tuple[dict, dict]:
    """``(drafts, groups)``: every finished draft of the study by name, and the groups the
    verdict compares (each loss and mode over its seeds)."""
    import torch

    from ..drafts import load_draft_for

    drafts = {"pretrained": load_draft_for(repo_root() / PRETRAINED, target, dtype=torch.float32)}
    groups = {"pretrained": ["pretrained"]}
    for mode, losses, names in (("offline", LOSSES, [f"{loss}-s{s}" for s in seeds for loss in LOSSES]),
                                ("onpolicy", ON_POLICY_LOSSES, [f"{loss}-s{s}" for s in seeds for loss in ON_POLICY_LOSSES]),
                                ("check", LOSSES, [f"{loss}-{kind}" for loss in LOSSES for kind in ("cached", "online")])):
        for name in names:
            folder = out / mode / name
            if finished(folder):
                drafts[f"{mode}/{name}"] = load_draft_for(folder, target, dtype=torch.float32)
        for loss in losses:
            members = [f"{mode}/{loss}-s{s}" for s in seeds if f"{mode}/{loss}-s{s}" in drafts]
            if mode != "check" and members:
                groups[loss if mode == "offline" else f"{loss} on-policy"] = members
    return drafts, groups


def evaluate(target, tokenizer, data, out: Path, seeds, sizes) -> None:
    """The acceptance report of every draft on each evaluation set, saved per set."""
    from ..acceptance import acceptance_report, target_answers
    from ..artifacts import write_json

    drafts, groups = study_drafts(target, out, seeds)
    engine = ["pretrained"] + [f"{mode}/{loss}-s{seeds[0]}" for mode in ("offline", "onpolicy")
                               for loss in ("fkl", "tvd++") if f"{mode}/{loss}-s{seeds[0]}" in drafts]
    for name, prompts in (("held_out", data["held_prompts"]), ("mt_bench", data["mt_bench"])):
        path = out / "eval" / f"{name}.json"
        if path.exists() and set(json.loads(path.read_text())["drafts"]) == set(drafts):
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        answers_path = out / "eval" / f"{name}-answers.json"
        if answers_path.exists():
            answers = json.loads(answers_path.read_text())
        else:
            log(f"{name}: the target answers {len(prompts)} prompts")
            answers = target_answers(target, prompts, temperatures=(0.0, 0.7, 1.0), tokenizer=tokenizer,
                                     max_new_tokens=sizes["report_max_new_tokens"], progress=False)
            write_json(answers_path, answers, indent=None)
        log(f"{name}: acceptance of {len(drafts)} drafts, the engine on {sizes['engine_prompts']} prompts for {engine}")
        report = acceptance_report(target, drafts, prompts, temperatures=(0.0, 0.7, 1.0), gamma=sizes["report_gamma"],
                                   max_new_tokens=sizes["report_max_new_tokens"], tokenizer=tokenizer, answers=answers,
                                   engine_prompts=sizes["engine_prompts"], engine_drafts=engine, progress=False)
        write_json(path, {"drafts": list(drafts), "groups": groups, "report": report.to_dict("records"),
                          "per_prompt": report.attrs["per_prompt"].to_dict("records")}, indent=None)


def load_report(path: Path):
    import pandas as pd

    saved = json.loads(path.read_text())
    report = pd.DataFrame(saved["report"])
    report.attrs["per_prompt"] = pd.DataFrame(saved["per_prompt"])
    return report, saved["groups"]


def curves(out: Path) -> dict:
    """The held-out curve of every run: step, eval TVD and top-1 agreement (cached target)."""
    from ..train import history_of

    found = {}
    for folder in sorted(out.glob("*/*")):
        if finished(folder) and folder.parent.name in ("offline", "onpolicy", "check"):
            h = history_of(folder).dropna(subset=["eval_tvd"])
            found[f"{folder.parent.name}/{folder.name}"] = {
                "step": h.step.astype(int).tolist(), "eval_tvd": h.eval_tvd.round(5).tolist(),
                "eval_top1": h.eval_top1.round(5).tolist(),
                "train_seconds": round(float(history_of(folder).seconds.sum()), 1)}
    return found


def write_report(data, out: Path, seeds, steps: int, results_path: Path, sizes, times) -> None:
    import sys

    import pandas as pd

    from ..artifacts import write_json
    from ..compare import pairwise, seed_summary, verdict
    from ..provenance import versions

    results = {"made_by": "draftalign " + " ".join(sys.argv[1:]),
               "hardware_and_versions": versions(), "settings": {**sizes, "steps": steps, "seeds": seeds,
                                                                "losses": LOSSES, "on_policy_losses": ON_POLICY_LOSSES},
               "data": {"answers": ANSWERS, "rows": data["rows"], "train_rows": data["train_rows"],
                        "held_out_rows": data["held_rows"], "pool_rows": len(data["pool"]),
                        "pool_answer_tokens": sum(len(r["response_ids"]) for r in data["pool"]),
                        "held_out_prompts": len(data["held_prompts"]), "mt_bench_prompts": len(data["mt_bench"])},
               "seconds": times, "curves": curves(out), "sets": {}}
    for name in ("held_out", "mt_bench"):
        path = out / "eval" / f"{name}.json"
        if not path.exists():
            continue
        report, groups = load_report(path)
        main_groups = {g: d for g, d in groups.items()}
        summary = seed_summary(report, main_groups)
        verdicts = [verdict(report, {g: d for g, d in main_groups.items() if g != "pretrained"},
                            temperature=t, metric=m) for m in ("alpha", "expected_tau") for t in (1.0, 0.7, 0.0)]
        check = {f"{loss} {kind}": [f"check/{loss}-{kind}"] for loss in LOSSES for kind in ("cached", "online")
                 if f"check/{loss}-{kind}" in set(report.draft)}
        results["sets"][name] = {
            "report": report.round(5).to_dict("records"), "summary": summary.round(5).to_dict("records"),
            "pairs": pd.concat([pairwise(report, {g: d for g, d in main_groups.items() if g != "pretrained"},
                                         temperature=t, metric=m) for m in ("alpha", "expected_tau")
                                for t in (1.0, 0.7, 0.0)]).round(5).to_dict("records"),
            "verdict": verdicts,
            "check": seed_summary(report, check).round(5).to_dict("records") if check else []}
    write_json(results_path, results, indent=1)
    log(f"wrote {results_path}")


def run_study(*, stages=STAGES, steps: int = 300, seeds=(0, 1, 2), out: Path | None = None,
              results: Path | None = None, threads: int | None = None, sets=()) -> None:
    """Run the study's ``stages`` (of :data:`STAGES`, in order; each resumes what it finds in
    ``out``); ``sets``: ``SIZE=VALUE`` changes to :data:`SIZES`."""
    import torch

    from ..answers import compute_topk, load_topk
    from ..models import load_target, vocab_size
    from ..subvocab import sub_vocabulary

    seeds = [int(s) for s in seeds]
    if threads:
        torch.set_num_threads(threads)
    out = Path(out) if out else repo_root() / "runs" / "loss-study"
    results = Path(results) if results else repo_root() / "data" / "results" / "loss_study.json"
    out.mkdir(parents=True, exist_ok=True)
    sizes = dict(SIZES)
    for item in sets:
        key, _, value = item.partition("=")
        if key not in SIZES:
            raise ValueError(f"no size {key!r}; choose from {', '.join(SIZES)}")
        sizes[key] = type(SIZES[key])(float(value)) if isinstance(SIZES[key], int) else float(value)
    target, tokenizer = load_target(dtype=torch.float32)
    data = study_data(tokenizer, sizes)
    log(f"{data['rows']} answers: {data['train_rows']} train, {data['held_rows']} held out; pool {len(data['pool'])}, "
        f"{len(data['held_prompts'])} held-out prompts, {len(data['mt_bench'])} MT-Bench")
    times_path = out / "times.json"
    times = json.loads(times_path.read_text()) if times_path.exists() else {}

    def timed(name, fn):
        start = time.time()
        fn()
        times[name] = times.get(name, 0.0) + time.time() - start
        times_path.write_text(json.dumps(times, indent=2))

    topk = keep = None
    if set(stages) & {"topk", "offline", "check", "onpolicy"}:
        timed("topk", lambda: compute_topk(target, data["pool"] + data["curve"], out / "topk", progress=True))
        topk = load_topk(out / "topk")
        keep_path = out / "sub_vocab.json"
        if not keep_path.exists():
            keep = sub_vocabulary(data["pool"], topk=topk, per_position=sizes["sub_vocab"],
                                  always=tokenizer.all_special_ids)
            keep_path.write_text(json.dumps(keep.tolist()))
        keep = torch.tensor(json.loads(keep_path.read_text()))
        log(f"sub-vocabulary: {len(keep)} tokens of {vocab_size(target)}")
    if "offline" in stages:
        for seed in seeds:
            for loss in LOSSES:
                folder = out / "offline" / f"{loss}-s{seed}"
                timed(f"offline/{folder.name}", lambda: run_offline(target, tokenizer, data, topk, keep, folder,
                                                                      loss, seed, steps, sizes))
    if "check" in stages:
        for loss in LOSSES:
            for cached in (True, False):
                folder = out / "check" / f"{loss}-{'cached' if cached else 'online'}"
                timed(f"check/{folder.name}", lambda: run_offline(target, tokenizer, data, topk, keep, folder, loss,
                                                                    0, sizes["check_steps"], sizes, cached=cached))
    if "onpolicy" in stages:
        prompts = sorted({tuple(r["prompt_ids"]) for r in data["pool"]})
        for seed in seeds:
            for loss in ON_POLICY_LOSSES:
                folder = out / "onpolicy" / f"{loss}-s{seed}"
                timed(f"onpolicy/{folder.name}", lambda: run_on_policy(target, tokenizer, data, topk, keep, folder,
                                                                        [list(p) for p in prompts], loss, seed,
                                                                        steps, sizes))
    if "eval" in stages:
        timed("eval", lambda: evaluate(target, tokenizer, data, out, seeds, sizes))
    if "report" in stages:
        write_report(data, out, seeds, steps, results, sizes, times)
    log("done: " + ", ".join(stages))
