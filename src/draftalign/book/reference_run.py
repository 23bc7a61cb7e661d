"""One reference run's shared state and what it has finished: the profile, the budgets, the
target (loaded on first use), the run folder, the finished drafts and which one it ships.

Reads ``runs/<profile>/`` (the drafts' manifests, ``evaluation.json``); writes nothing. The
stages (:mod:`draftalign.book.reference`), the measurements
(:mod:`draftalign.book.reference_measure`) and the model card
(:mod:`draftalign.book.reference_card`) all take a :class:`Run`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..artifacts import read_json
from ..models import load_target
from .profiles import Profile, runs_dir

__all__ = ["Run", "drafts", "best_draft_name", "shipped_draft_name"]


@dataclass
class Run:
    """What the stages of one reference run share: the profile, the budgets (seconds per
    stage), the target (loaded on first use) and the run folder."""

    P: Profile
    dtype: str | None = None
    budgets: dict = field(default_factory=dict)
    progress: bool = True
    _loaded: tuple | None = field(default=None, repr=False)

    @property
    def root(self) -> Path:
        root = runs_dir(self.P)
        root.mkdir(parents=True, exist_ok=True)
        return root

    @property
    def target(self):
        if self._loaded is None:
            self._loaded = load_target(self.P.target, dtype=self.dtype)
        return self._loaded[0]

    @property
    def tokenizer(self):
        self.target  # noqa: B018 (loads the target and its tokenizer)
        return self._loaded[1]

    def log(self, text: str) -> None:
        print(f"[reference] {text}", flush=True)


def drafts(run: Run) -> dict[str, Path]:
    """The finished drafts of this run by name (``pretrained``, each loss, ``finetuned``)."""
    names = {"pretrained": run.root / "draft-pretrained"}
    names.update({loss: run.root / f"draft-{loss}" for loss in run.P.kd_losses})
    names["finetuned"] = run.root / "draft-finetuned"
    return {n: f for n, f in names.items() if (f / "manifest.json").exists()}


def best_draft_name(run: Run) -> str | None:
    """The loss whose draft had the highest greedy agreement on held-out answers, from the
    ``agreement`` stage's ``evaluation.json`` (``None`` before that stage ran)."""
    return (read_json(run.root / "evaluation.json") or {}).get("best")


def shipped_draft_name(run: Run) -> str:
    """The draft the run ships: the fine-tuned one when that stage exists, else the best loss's."""
    if run.P.ref_finetune_steps > 0:
        return "finetuned"
    best = best_draft_name(run)
    if best is None:
        raise RuntimeError("no agreement measured yet: run the agreement stage first")
    return best
