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

Training checkpoints go to ``runs/loss-study/`` (a killed run continues from its last
checkpoint). Each run is scored as soon as it finishes, and its result (report rows,
per-prompt sums, held-out curve, seconds) kept in ``data/results/loss_study/runs/``, beside
the target's answers to the evaluation prompts: a run scored once is never trained again,
so the study goes on where it stopped in another session or on another machine of the same
kind, with nothing but those small files carried over (the cached top-k is recomputed, a
fixed cost per session). The table ``data/results/loss_study.json`` (settings, hardware,
times, the runs done and missing, held-out curves, the report, the verdict) is assembled
from whatever is kept; Chapter 4 reads it.

    draftalign study                      # every stage (hours on a 2-core CPU)
    draftalign study --stages report      # the table from the runs kept so far
    draftalign study --steps 4 --seeds 0 --out /tmp/study --set pool=32 --set curve_rows=16 \
        --set check_steps=4 --set eval_every=2 --results /tmp/study/results.json   # a quick try
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from .profiles import repo_root

__all__ = ["STAGES", "LOSSES", "ON_POLICY_LOSSES", "SIZES", "STEPS", "run_study", "run_keys", "study_groups",
           "assembled_report", "read_results", "write_report"]

STAGES = ("topk", "offline", "check", "onpolicy", "eval", "report")
LOSSES = ("fkl", "rkl", "tvd", "tvd++")
ON_POLICY_LOSSES = ("fkl", "tvd++")
PRETRAINED = "data/drafts/smollm2-135m-instruct-pretrained"
ANSWERS = "data/distill/smollm2-135m-reference"

# Sizes. One budget for every loss and mode: STEPS optimizer steps of BATCH answers.
SIZES = dict(
    held_out_share=0.1,  # prompts held out by held_out_split (by prompt, every category)
    pool=640,  # training answers, a seeded sample of the rest (= STEPS x BATCH: one pass)
    curve_rows=32,  # held-out answers of the curve (cached target), fixed for every run
    eval_per_category=4,  # held-out prompts per category for the acceptance report (11 categories: 44)
    batch=8, lr=3e-3, warmup=20, eval_every=10, max_length=512, sub_vocab=4,
    check_steps=20,  # the short run of each loss with the target online beside the cached one
    on_policy_max_new_tokens=128, on_policy_temperature=1.0,
    on_policy_seeds=1,  # the first training seeds on-policy (each step also samples 8 answers from the draft)
    report_max_new_tokens=64, report_gamma=4, engine_prompts=4, mt_bench_per_category=5,
)
STEPS = 80  # optimizer steps of every run (the check runs: check_steps)


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


def run_keys(seeds, sizes) -> list[str]:
    """Every run the study plans, by key (``mode/name``), in the order it trains them."""
    keys = ["pretrained"]
    keys += [f"offline/{loss}-s{s}" for s in seeds for loss in LOSSES]
    keys += [f"check/{loss}-{kind}" for loss in LOSSES for kind in ("cached", "online")]
    keys += [f"onpolicy/{loss}-s{s}" for s in seeds[: int(sizes["on_policy_seeds"])] for loss in ON_POLICY_LOSSES]
    return keys


def study_settings(steps: int, sizes: dict) -> dict:
    """What a run's result depends on: a result made with other settings is never mixed in."""
    return {**sizes, "steps": steps}


def result_path(rdir: Path, key: str) -> Path:
    return rdir / "runs" / (key.replace("/", "-") + ".json")


def eval_sets(target, tokenizer, data, rdir: Path, sizes) -> dict:
    """``{set name: (prompts, answers)}``: the target's answers to each evaluation set, made
    once and kept beside the results (every run, in any session, is scored on the same ones)."""
    from ..acceptance import target_answers
    from ..artifacts import read_json, write_json

    found = {}
    for name, prompts in (("held_out", data["held_prompts"]), ("mt_bench", data["mt_bench"])):
        settings = {"max_new_tokens": sizes["report_max_new_tokens"], "temperatures": [0.0, 0.7, 1.0],
                    "prompts": [p.get("id") for p in prompts]}
        path = rdir / f"answers-{name}.json"
        saved = read_json(path)
        if saved is not None and saved["settings"] != settings:
            raise ValueError(f"{path} holds the target's answers for other settings; move it away to start over")
        if saved is None:
            log(f"{name}: the target answers {len(prompts)} prompts")
            answers = target_answers(target, prompts, temperatures=(0.0, 0.7, 1.0), tokenizer=tokenizer,
                                     max_new_tokens=sizes["report_max_new_tokens"], progress=False)
            saved = {"settings": settings, "answers": answers}
            write_json(path, saved, indent=None)
        found[name] = (prompts, saved["answers"])
    return found


def evaluate_run(target, tokenizer, sets: dict, rdir: Path, key: str, draft, settings: dict, *,
                 folder: Path | None = None, seconds: float | None = None) -> None:
    """Score one draft on every evaluation set (:func:`draftalign.evaluate.acceptance_report`;
    the engine too for the pretrained draft and the first seed of fkl and tvd++) and keep
    its result, its held-out curve and its training time in ``rdir/runs/``: a finished run
    is never trained or scored again, in this session or another."""
    from ..acceptance import acceptance_report
    from ..artifacts import write_json
    from ..train import history_of

    engine = key == "pretrained" or key.split("/")[-1] in ("fkl-s0", "tvd++-s0")
    log(f"{key}: acceptance on {', '.join(f'{len(p)} {n}' for n, (p, _) in sets.items())} prompts"
        + (", the engine too" if engine else ""))
    start = time.time()
    out = {"key": key, "settings": settings, "sets": {}}
    if folder is not None:
        h = history_of(folder)
        ev = h.dropna(subset=["eval_tvd"])
        out["curve"] = {"step": ev.step.astype(int).tolist(), "eval_tvd": ev.eval_tvd.round(5).tolist(),
                        "eval_top1": ev.eval_top1.round(5).tolist()}
        out["train_seconds"] = round(float(h.seconds.sum()), 1) if seconds is None else round(seconds, 1)
    for name, (prompts, answers) in sets.items():
        report = acceptance_report(target, {key: draft}, prompts, temperatures=(0.0, 0.7, 1.0),
                                   gamma=settings["report_gamma"], max_new_tokens=settings["report_max_new_tokens"],
                                   tokenizer=tokenizer, answers=answers,
                                   engine_prompts=settings["engine_prompts"] if engine else 0, progress=False)
        out["sets"][name] = {"report": report.to_dict("records"),
                             "per_prompt": report.attrs["per_prompt"].to_dict("records")}
    out["eval_seconds"] = round(time.time() - start, 1)
    write_json(result_path(rdir, key), out, indent=None)


def read_results(rdir: Path, settings: dict) -> dict[str, dict]:
    """Every run's kept result by key; a result made with other settings raises."""
    found = {}
    for path in sorted((rdir / "runs").glob("*.json")):
        saved = json.loads(path.read_text())
        if saved["settings"] != settings:
            diff = sorted(k for k in set(saved["settings"]) | set(settings)
                          if saved["settings"].get(k) != settings.get(k))
            raise ValueError(f"{path} was made with other settings ({', '.join(diff)}): move {rdir} away to start over")
        found[saved["key"]] = saved
    return found


def study_groups(keys) -> dict[str, list[str]]:
    """The groups the verdict compares: each loss and mode over the seeds it has so far."""
    groups = {"pretrained": ["pretrained"]} if "pretrained" in keys else {}
    for mode, losses, label in (("offline", LOSSES, "{}"), ("onpolicy", ON_POLICY_LOSSES, "{} on-policy")):
        for loss in losses:
            members = sorted(k for k in keys if k.startswith(f"{mode}/{loss}-s"))
            if members:
                groups[label.format(loss)] = members
    return groups


def assembled_report(results: dict, set_name: str):
    """One set's report over every kept run: the rows of each, and their per-prompt tables."""
    import pandas as pd

    parts = [r["sets"][set_name] for r in results.values() if set_name in r["sets"]]
    report = pd.DataFrame([row for part in parts for row in part["report"]])
    report.attrs["per_prompt"] = pd.DataFrame([row for part in parts for row in part["per_prompt"]])
    return report


def write_report(data, rdir: Path, seeds, steps: int, results_path: Path, sizes, planned: list[str]) -> None:
    import sys

    import pandas as pd

    from ..artifacts import read_json, write_json
    from ..compare import pairwise, seed_summary, verdict
    from ..provenance import versions

    settings = study_settings(steps, sizes)
    results = read_results(rdir, settings)
    done = [k for k in planned if k in results]
    times = read_json(rdir / "times.json", {})
    seconds = {k: round(r.get("train_seconds", 0.0) + r.get("eval_seconds", 0.0), 1) for k, r in results.items()}
    out = {"made_by": "draftalign " + " ".join(sys.argv[1:]),
           "hardware_and_versions": versions(), "settings": {**settings, "seeds": seeds, "losses": LOSSES,
                                                             "on_policy_losses": ON_POLICY_LOSSES},
           "data": {"answers": ANSWERS, "rows": data["rows"], "train_rows": data["train_rows"],
                    "held_out_rows": data["held_rows"], "pool_rows": len(data["pool"]),
                    "pool_answer_tokens": sum(len(r["response_ids"]) for r in data["pool"]),
                    "held_out_prompts": len(data["held_prompts"]), "mt_bench_prompts": len(data["mt_bench"])},
           "runs": {"planned": planned, "done": done, "missing": [k for k in planned if k not in results]},
           "seconds": {**seconds, **{f"session {i + 1}: {k}": v for i, t in enumerate(times.get("sessions", []))
                                     for k, v in t.items()}},
           "curves": {k: r["curve"] for k, r in results.items() if "curve" in r}, "sets": {}}
    for name in ("held_out", "mt_bench"):
        report = assembled_report(results, name)
        if report.empty:
            continue
        groups = study_groups(set(report.draft))
        compared = {g: d for g, d in groups.items() if g != "pretrained"}
        measures = [(m, t) for m in ("alpha", "expected_tau") for t in (1.0, 0.7, 0.0)]
        check = {f"{loss} {kind}": [f"check/{loss}-{kind}"] for loss in LOSSES for kind in ("cached", "online")
                 if f"check/{loss}-{kind}" in set(report.draft)}
        out["sets"][name] = {
            "report": report.round(5).to_dict("records"),
            "summary": seed_summary(report, groups).round(5).to_dict("records"),
            "pairs": (pd.concat([pairwise(report, compared, temperature=t, metric=m) for m, t in measures])
                      .round(5).to_dict("records") if len(compared) > 1 else []),
            "verdict": [verdict(report, compared, temperature=t, metric=m) for m, t in measures]
            if len(compared) > 1 else [],
            "check": seed_summary(report, check).round(5).to_dict("records") if check else []}
    write_json(results_path, out, indent=1)
    log(f"wrote {results_path}: {len(done)} of {len(planned)} runs")


def run_study(*, stages=STAGES, steps: int = STEPS, seeds=(0, 1, 2), out: Path | None = None,
              results: Path | None = None, threads: int | None = None, sets=()) -> None:
    """Run the study's ``stages`` (of :data:`STAGES`, in order; each resumes what it finds in
    ``out``); ``sets``: ``SIZE=VALUE`` changes to :data:`SIZES`."""
    import torch

    from ..answers import compute_topk, load_topk
    from ..artifacts import read_json, write_json
    from ..drafts import load_draft_for
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
    rdir = results.with_suffix("")  # data/results/loss_study/: each run's result, kept as it finishes
    settings = study_settings(steps, sizes)
    planned = run_keys(seeds, sizes)
    done = set(read_results(rdir, settings))
    log(f"{len(done)} of {len(planned)} runs already scored in {rdir}")
    times = read_json(rdir / "times.json", {"sessions": []})
    session: dict = {}
    times["sessions"].append(session)

    def timed(name, fn):
        begin = time.time()
        value = fn()
        session[name] = round(session.get(name, 0.0) + time.time() - begin, 1)
        write_json(rdir / "times.json", times)
        return value

    def modes(stage):
        return {"offline": "offline/", "check": "check/", "onpolicy": "onpolicy/"}[stage]

    todo = [k for k in planned if k not in done and any(s in stages and k.startswith(modes(s))
                                                        for s in ("offline", "check", "onpolicy"))]
    sets_ = None

    def score(key, draft, folder=None):
        nonlocal sets_
        if sets_ is None:
            sets_ = timed("target answers", lambda: eval_sets(target, tokenizer, data, rdir, sizes))
        evaluate_run(target, tokenizer, sets_, rdir, key, draft, settings, folder=folder)
        done.add(key)

    if "eval" in stages and "pretrained" not in done:
        score("pretrained", load_draft_for(repo_root() / PRETRAINED, target, dtype=torch.float32))
    topk = keep = None
    if todo or "topk" in stages:
        timed("topk", lambda: compute_topk(target, data["pool"] + data["curve"], out / "topk", progress=True))
        topk = load_topk(out / "topk")
        keep = torch.tensor(sub_vocabulary(data["pool"], topk=topk, per_position=sizes["sub_vocab"],
                                           always=tokenizer.all_special_ids).tolist())
        log(f"sub-vocabulary: {len(keep)} tokens of {vocab_size(target)}")
    prompts = [list(p) for p in sorted({tuple(r["prompt_ids"]) for r in data["pool"]})]
    for key in todo:
        mode, name = key.split("/")
        folder = out / mode / name
        loss, _, tail = name.rpartition("-s") if mode != "check" else (name.rsplit("-", 1)[0], "", "0")
        if mode == "offline":
            run_offline(target, tokenizer, data, topk, keep, folder, loss, int(tail), steps, sizes)
        elif mode == "check":
            run_offline(target, tokenizer, data, topk, keep, folder, loss, 0, sizes["check_steps"], sizes,
                        cached=name.endswith("cached"))
        else:
            run_on_policy(target, tokenizer, data, topk, keep, folder, prompts, loss, int(tail), steps, sizes)
        score(key, load_draft_for(folder, target, dtype=torch.float32), folder)
    if "eval" in stages:  # runs trained earlier whose scoring was interrupted
        for key in planned:
            mode, _, name = key.partition("/")
            if key not in done and name and finished(out / mode / name):
                score(key, load_draft_for(out / mode / name, target, dtype=torch.float32), out / mode / name)
    if "report" in stages:
        write_report(data, rdir, seeds, steps, results, sizes, planned)
    log("done: " + ", ".join(stages))
