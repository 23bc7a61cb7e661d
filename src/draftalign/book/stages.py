"""The stage helper every training stage of the book and of the reference run goes through.

Reads a stage's spec, its data and a way to build its model; writes the stage's folder
under ``runs/<profile>/`` (checkpoints, the trained model, ``manifest.json`` last) and, for
a stage given a time budget, ``plan-<name>.json`` beside it (the steps that fit the budget,
so a rerun resumes the same plan). :func:`train_stage` is the one place where a stage is
reused (same spec), set aside and rebuilt (other spec), resumed (same config) or restarted
(a checkpoint of another config), and stopped at its deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from ..artifacts import clear_finished, is_complete, read_json, read_manifest, resume_or_restart, write_json, \
    write_manifest
from ..provenance import versions
from ..train import Batches, TrainConfig, lm_loss, steps_for_budget, train

__all__ = ["planned_steps", "deadline", "train_stage"]


def planned_steps(root: Path, name: str, default: int, budget: float | None, probe: Callable[[float], int], *,
                  log: Callable[[str], None] = print) -> int:
    """Steps of a training stage: the plan saved in ``root/plan-<name>.json``, else the steps
    that fit ``budget`` seconds (``probe(budget)`` times a few; saved as the plan), else
    ``default``."""
    path = Path(root) / f"plan-{name}.json"
    plan = read_json(path)
    if plan is not None:
        return int(plan["steps"])
    if budget is None:
        return int(default)
    steps = int(probe(budget))
    write_json(path, {"steps": steps, "budget_s": budget, "hardware": versions()["hardware"]})
    log(f"{name}: {steps} steps fit the budget of {budget:.0f} s")
    return steps


def deadline(budget: float | None, *, slack: float = 1.0) -> float | None:
    """When a stage with a ``budget`` (seconds) must stop: ``slack`` times the budget from
    now (training stages plan their steps to fit it, so for them the deadline is a safety
    net), or ``None``."""
    return None if budget is None else time.time() + slack * budget


def train_stage(folder: Path, spec: dict, *, build: Callable, data: Batches, config: Callable[[int], TrainConfig],
                steps: int, loss_fn: Callable = lm_loss, eval_data: Batches | None = None,
                budget: float | None = None, progress: bool = True, desc: str = "training",
                train_dir: Path | None = None,
                finish: Callable | None = None) -> tuple[object, object, dict | None]:
    """Train one stage's model into ``folder`` unless it is there already.

    ``spec`` (plus the config of ``steps``, under ``"train"``) names the artifact: a folder
    whose manifest holds the same spec is reused, ``(None, history, manifest)`` (the caller
    loads the model); one with another spec is set aside as ``<folder>.previous``.
    Otherwise ``build()`` makes the model and :func:`draftalign.train.train` trains it in
    ``train_dir`` (default ``folder``), resuming its checkpoint or restarting one of another
    config, stopping at the budget's deadline. Returns ``(model, history, manifest)``; the
    manifest is ``None`` when the deadline came first (run again to finish). At the end
    ``finish(model, history)`` returns ``(inputs, results)`` for the manifest (and may write
    more into ``folder``: a tokenizer, a model card, an exported form).
    """
    cfg = config(steps)
    spec = {**spec, "train": asdict(cfg)}
    train_dir = Path(train_dir or folder)
    if is_complete(folder, spec):
        from ..train import history_of

        return None, history_of(train_dir), read_manifest(folder)
    clear_finished(folder)

    def run():
        model = build()
        return model, train(model, data, cfg, train_dir, loss_fn=loss_fn, eval_data=eval_data, progress=progress,
                            desc=desc, deadline=deadline(budget, slack=1.3))

    start = time.time()
    model, history = resume_or_restart(run)
    if len(history) < cfg.max_steps:
        return model, history, None
    inputs, results = finish(model, history) if finish is not None else ({}, {})
    results = {"train_seconds": float(history.seconds.sum()), "wall_seconds_this_call": time.time() - start,
               "hardware": versions()["hardware"], **results}
    return model, history, write_manifest(folder, spec, inputs=inputs, results=results)


def probe_steps(build: Callable, data: Batches, config: Callable[[int], TrainConfig], loss_fn: Callable = lm_loss,
                *, margin: float = 0.92) -> Callable[[float], int]:
    """A ``probe(budget)`` for :func:`planned_steps`: times a few steps of a fresh model."""
    return lambda budget: steps_for_budget(build(), data, config(1_000), budget, loss_fn=loss_fn, margin=margin)
