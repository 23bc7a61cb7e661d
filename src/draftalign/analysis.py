"""Chapter 5's measurements: where acceptance is lost, which gamma pays, what temperature
does, our engine against transformers' assisted generation, and when a draft breaks even.

Reads a target, drafts (the profile's artifacts in ``runs/<profile>/`` and the shipped
folders ``data/drafts/*/``), prompts and the results of
:func:`draftalign.speculative.speculative_generate`; writes nothing. Chapter 5 calls it.

Greedy speculative decoding is deterministic given the target's greedy answer ``y``: the
drafts that survive are ``y``'s own tokens, so the draft's proposal at answer position
``t`` is its argmax after the prompt and ``y[:t]``, and the blocks follow from where that
argmax agrees with ``y``. One teacher-forced draft pass per answer (:func:`agreements`)
therefore gives tau for every draft and every gamma (:func:`replay_greedy`), without
decoding again; the chapter checks the replay against the engine.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch
from tqdm.std import tqdm

from .chat import chat_input_ids
from .metrics import acceptance_rate, expected_tau, mbsu, mean_tau, per_position_acceptance
from .models import vocab_size
from .profiles import Profile, repo_root, runs_dir
from .speculative import GenerationResult, _budget, _eos_ids, autoregressive_generate, speculative_generate
from .subvocab import SubVocabDraft, load_draft
from .timing import compare_decoders, pass_cost

__all__ = ["shipped_draft_folders", "chapter_drafts", "full_vocabulary_draft", "greedy_answers", "agreements",
           "replay_greedy", "replay_table", "tau_from_positions", "acceptance_summary", "gamma_sweep",
           "wall_clock_by_gamma", "replay_check", "CostModel", "fit_cost_model", "step_ms", "speedup_grid",
           "alpha_needed", "tau_per_temperature", "hf_assisted", "against_transformers", "output_agreement",
           "PAPER", "paper_table"]


# -- the drafts of the book --------------------------------------------------------------------------

def shipped_draft_folders(root: Path | None = None) -> list[Path]:
    """Every folder ``data/drafts/<name>/`` holding a ``config.json``, in name order."""
    base = (root or repo_root()) / "data" / "drafts"
    return sorted(f for f in base.glob("*/") if (f / "config.json").exists()) if base.is_dir() else []


def chapter_drafts(target, tokenizer, P: Profile, *, progress: bool = False) -> tuple[dict, dict]:
    """``(drafts, folders)``: the pretrained draft, each loss's distilled draft (reused from
    ``runs/<profile>/``; trained only if missing) and every other shipped draft that fits
    the target's vocabulary, by name; ``folders`` maps each name to its standard model folder."""
    from .pipeline import distilled_draft, pretrained_draft

    drafts = {"pretrained": pretrained_draft(target, tokenizer, P, progress=progress)[0]}
    folders = {"pretrained": runs_dir(P) / "draft-pretrained"}
    for loss in P.kd_losses:
        drafts[loss] = distilled_draft(target, tokenizer, P, loss, progress=progress)[0]
        folders[loss] = runs_dir(P) / f"draft-{loss}"
    param = next(target.parameters())
    start = getattr(P, "pretrained_from", None)  # a shipped folder the pretrained draft was copied from
    for folder in shipped_draft_folders():
        if start and folder.resolve() == (repo_root() / start).resolve():
            continue  # already in, as "pretrained"
        try:
            drafts[folder.name] = load_draft(folder, dtype=param.dtype, device=param.device,
                                             vocab_size=vocab_size(target)).eval()
            folders[folder.name] = folder
        except ValueError as exc:  # a draft for another target's vocabulary
            warnings.warn(f"skipping the shipped draft {folder.name}: {exc}")
    return drafts, folders


def full_vocabulary_draft(folder, target):
    """The plain transformers model in ``folder`` (what ``generate(assistant_model=...)``
    takes), or ``None`` when the folder holds a sub-vocabulary draft."""
    param = next(target.parameters())
    model = load_draft(folder, dtype=param.dtype, device=param.device, vocab_size=vocab_size(target)).eval()
    return None if isinstance(model, SubVocabDraft) else model


# -- greedy answers and their replay -----------------------------------------------------------------

def greedy_answers(target, tokenizer, prompts: list[dict], *, max_new_tokens: int,
                   progress: bool = False) -> list[dict]:
    """The target's greedy answer to each prompt (plain decoding): dicts with ``id``,
    ``category``, ``input_ids`` ``[1, T]``, ``tokens`` (the answer), ``budget`` (the
    engine's token budget) and ``result``."""
    out = []
    for i, p in enumerate(tqdm(prompts, desc="answers", disable=not progress, mininterval=2)):
        ids = chat_input_ids(tokenizer, p["prompt"], device=target.device)  # [1, T]
        res = autoregressive_generate(target, ids, max_new_tokens=max_new_tokens)
        out.append({"id": p.get("id", i), "category": p.get("category"), "input_ids": ids,
                    "tokens": list(res.tokens), "budget": _budget(target, ids.shape[1], max_new_tokens),
                    "result": res})
    return out


@torch.inference_mode()
def agreements(draft, answers: list[dict]) -> list[np.ndarray]:
    """Per answer, whether the draft's argmax after the prompt and ``tokens[:t]`` is
    ``tokens[t]`` (teacher forcing, one draft pass per answer): ``bool [L]`` arrays."""
    device = next(draft.parameters()).device
    out = []
    for a in answers:
        y = torch.tensor([a["tokens"]], dtype=torch.long, device=device)  # [1, L]
        ids = torch.cat([a["input_ids"].to(device), y], dim=1)  # [1, T + L]
        logits = draft(input_ids=ids, logits_to_keep=y.shape[1] + 1).logits[0, :-1]  # [L, V]
        out.append((logits.argmax(-1) == y[0]).cpu().numpy())
    return out


def replay_greedy(tokens: Sequence[int], agree: Sequence[bool], *, gamma: int,
                  budget: int | None = None) -> GenerationResult:
    """The blocks greedy speculative decoding makes on an answer ``tokens`` with a draft
    whose argmax agrees with it where ``agree`` is true (:func:`agreements`).

    Follows :func:`~draftalign.speculative.speculative_generate` step for step: a block at
    answer position ``t`` drafts ``g = min(gamma, budget - t - 1)`` tokens, accepts the
    leading ones that agree and adds one target token. ``budget``: the engine's (default
    ``len(tokens)``). Drafts past the end of an answer that stopped at EOS count as
    rejected (the engine compares them with target predictions no answer records), so
    only the last block's ``accepted`` can differ from the engine's; tau cannot.
    """
    if int(gamma) != gamma or gamma < 1:
        raise ValueError(f"gamma must be a positive integer, got {gamma!r}")
    n = len(tokens)
    if len(agree) != n:
        raise ValueError(f"{len(agree)} agreement flags for {n} tokens")
    budget = n if budget is None else int(budget)
    if budget < n:
        raise ValueError(f"budget {budget} is below the answer's {n} tokens")
    accepted, drafted, t = [], [], 0
    while t < n:
        g = min(int(gamma), budget - t - 1)
        k = 0
        while k < g and t + k < n and agree[t + k]:
            k += 1
        accepted.append(k)
        drafted.append(g)
        t += k + 1
    return GenerationResult(tokens=list(tokens), target_calls=len(accepted), draft_calls=sum(drafted),
                            accepted=accepted, drafted=drafted, gamma=int(gamma))


def replay_table(answers: list[dict], agree: list[np.ndarray], *, gamma: int,
                 max_new_tokens: int | None = None) -> pd.DataFrame:
    """:func:`draftalign.evaluate.tau_table`'s table from replays: one row per answer with
    ``id``, ``category``, ``tokens``, ``target_calls``, ``tau``, ``alpha`` and ``result``.
    ``max_new_tokens``: replay decoding with this smaller budget (the greedy answer's first
    tokens are the shorter greedy answer)."""
    rows = []
    for a, ok in zip(answers, agree, strict=True):
        budget = a.get("budget") or len(a["tokens"])
        n = budget if max_new_tokens is None else min(budget, int(max_new_tokens))
        res = replay_greedy(a["tokens"][:n], ok[:n], gamma=gamma, budget=n)
        rows.append({"id": a["id"], "category": a["category"], "tokens": len(res.tokens),
                     "target_calls": res.target_calls, "tau": res.tau, "alpha": acceptance_rate([res]),
                     "result": res})
    return pd.DataFrame(rows)


# -- where acceptance is lost ------------------------------------------------------------------------

def tau_from_positions(acceptance: Sequence[float]) -> float:
    """``E[tau] = 1 + sum_i prod_{j <= i} a_j`` with ``a_j`` the acceptance at position ``j``
    given the earlier drafts were accepted (no independence assumed); unreached positions
    (``nan``) count as 0."""
    a = np.nan_to_num(np.asarray(acceptance, dtype=float), nan=0.0)
    return float(1.0 + np.cumprod(a).sum())


def acceptance_summary(tables: dict[str, pd.DataFrame], *, gamma: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """For each draft's table (:func:`replay_table` or ``tau_table``): measured tau, pooled
    alpha, E[tau] from alpha (book eq. tau-iid) and from the per-position acceptance; and
    the per-position acceptance itself (rows: positions 1..gamma, columns: drafts)."""
    rows, positions = {}, {}
    for name, table in tables.items():
        res = list(table.result)
        pos = per_position_acceptance(res, gamma)
        alpha = acceptance_rate(res)
        positions[name] = pos
        rows[name] = {"tau (measured)": mean_tau(res), "alpha (pooled)": alpha,
                      "E[tau] from alpha, i.i.d.": expected_tau(alpha, gamma) if alpha == alpha else np.nan,
                      "E[tau] from per-position acceptance": tau_from_positions(pos)}
    pos_df = pd.DataFrame(positions, index=pd.RangeIndex(1, gamma + 1, name="draft position"))
    return pd.DataFrame(rows).T.rename_axis("draft"), pos_df


# -- gamma ---------------------------------------------------------------------------------------------

def gamma_sweep(answers: list[dict], agree_by_draft: dict[str, list], gammas: Sequence[int], *,
                parameters: dict[str, int], n_target: int) -> pd.DataFrame:
    """tau, alpha and the memory-bound speed-up (MBSU) of every draft at every gamma, from
    replays: one row per (draft, gamma)."""
    rows = []
    for name, agree in agree_by_draft.items():
        for g in gammas:
            res = list(replay_table(answers, agree, gamma=g).result)
            tau = mean_tau(res)
            rows.append({"draft": name, "gamma": int(g), "tau": tau, "alpha": acceptance_rate(res),
                         "mbsu": mbsu(tau, int(g), parameters[name], n_target)})
    return pd.DataFrame(rows)


def wall_clock_by_gamma(target, draft, prompts: list[torch.Tensor], gammas: Sequence[int], *,
                        max_new_tokens: int, rounds: int, progress: bool = False) -> tuple[pd.DataFrame, dict]:
    """Plain decoding and greedy speculative decoding at each gamma, timed in interleaved
    rounds (:func:`draftalign.timing.compare_decoders`). The table gains ``gamma`` (0 for
    plain) and ``speed-up`` (1 / time relative to plain); results are keyed by gamma."""
    methods = {"plain": lambda x: autoregressive_generate(target, x, max_new_tokens=max_new_tokens)}
    for g in gammas:
        methods[f"gamma={g}"] = (lambda x, g=g: speculative_generate(target, draft, x, gamma=g,
                                                                     max_new_tokens=max_new_tokens))
    table, first = compare_decoders(methods, prompts, rounds=rounds, progress=progress)
    table.insert(0, "gamma", [0, *map(int, gammas)])
    table["speed-up"] = 1.0 / table["time_vs_plain"]
    return table, {0: first["plain"]} | {int(g): first[f"gamma={g}"] for g in gammas}


def replay_check(engine: dict[int, list], answers: list[dict], agree: list[np.ndarray]) -> pd.DataFrame:
    """The engine's results (``{gamma: [result per answer]}``, e.g. from
    :func:`wall_clock_by_gamma`) against the replays of the same answers: tau of both, and
    in how many answers the tokens and the accepted counts are the same."""
    rows = []
    for g, results in engine.items():
        if g == 0:
            continue
        replays = [replay_greedy(a["tokens"], ok, gamma=g, budget=a.get("budget"))
                   for a, ok in zip(answers, agree)]
        rows.append({"gamma": g, "tau (engine)": mean_tau(results), "tau (replay)": mean_tau(replays),
                     "same tokens": sum(r.tokens == p.tokens for r, p in zip(results, replays)),
                     "same blocks": sum(r.accepted == p.accepted for r, p in zip(results, replays)),
                     "answers": len(results)})
    return pd.DataFrame(rows).set_index("gamma")


# -- the cost model ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CostModel:
    """A target pass over ``k`` new tokens costs ``t(k) = a + b k`` (ms); a draft step
    costs ``c`` one-token target passes. Then a block of ``gamma`` drafts costs
    ``gamma c + t(gamma + 1) / t(1)`` one-token passes, and the speed-up over plain
    decoding is ``tau / (gamma c + t(gamma + 1) / t(1))``: book eq. speedup with the
    verification pass's own growth."""

    a_ms: float
    b_ms: float

    @classmethod
    def memory_bound(cls) -> "CostModel":
        """A pass over a few tokens costs as much as over one (``b = 0``): eq. speedup itself."""
        return cls(1.0, 0.0)

    @property
    def t1_ms(self) -> float:
        return self.a_ms + self.b_ms

    def verify(self, k) -> float | np.ndarray:
        """``t(k) / t(1)``."""
        return (self.a_ms + self.b_ms * np.asarray(k, dtype=float)) / self.t1_ms

    def speedup(self, tau, gamma: int, c):
        return np.asarray(tau) / (gamma * np.asarray(c) + self.verify(gamma + 1))

    def predicted(self, alpha: float, gammas: Sequence[int], c: float) -> pd.Series:
        """Speed-up at each gamma with tau = E[tau](alpha, gamma) (eq. tau-iid)."""
        return pd.Series({int(g): float(self.speedup(expected_tau(alpha, int(g)), int(g), c)) for g in gammas},
                         name="predicted speed-up").rename_axis("gamma")

    def best_gamma(self, alpha: float, c: float, gammas: Sequence[int] = range(1, 9)) -> int:
        s = self.predicted(alpha, gammas, c)
        return int(s.idxmax())


def fit_cost_model(costs: pd.DataFrame) -> CostModel:
    """Least-squares line ``ms = a + b k`` through :func:`draftalign.timing.pass_cost`'s medians."""
    if len(costs) < 2:
        raise ValueError("need pass costs at two or more k to fit a line")
    b, a = np.polyfit(costs.k.to_numpy(float), costs.ms_median.to_numpy(float), 1)
    return CostModel(float(a), float(b))


def step_ms(model, *, prefix_len: int, repeats: int, seed: int = 0) -> float:
    """Median ms of one cached one-token step of ``model`` (a draft step)."""
    return float(pass_cost(model, prefix_len=prefix_len, ks=(1,), repeats=repeats, seed=seed).ms_median.iloc[0])


# -- break-even ----------------------------------------------------------------------------------------

def speedup_grid(alphas: Sequence[float], cs: Sequence[float], gamma: int, cost: CostModel) -> np.ndarray:
    """Speed-up ``[len(cs), len(alphas)]`` for acceptance ``alpha`` and draft cost ``c``."""
    taus = np.array([expected_tau(float(a), gamma) for a in alphas])  # [A]
    return np.asarray(cost.speedup(taus[None, :], gamma, np.asarray(cs, dtype=float)[:, None]))


def alpha_needed(c: float, gamma: int, cost: CostModel, speedup: float = 1.0) -> float:
    """The smallest acceptance alpha whose E[tau] reaches ``speedup`` at draft cost ``c``
    (``speedup = 1``: the break-even contour); ``nan`` if even alpha = 1 does not."""
    need = speedup * (gamma * c + float(cost.verify(gamma + 1)))  # E[tau] needed
    if need <= 1.0:
        return 0.0
    if need > gamma + 1:
        return float("nan")
    lo, hi = 0.0, 1.0
    for _ in range(60):  # E[tau] grows with alpha: bisect
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if expected_tau(mid, gamma) < need else (lo, mid)
    return hi


# -- temperature -------------------------------------------------------------------------------------

def tau_per_temperature(target, drafts: dict, prompts: list[torch.Tensor], *, temperatures: Sequence[float],
                        gamma: int, max_new_tokens: int, seed: int = 0, progress: bool = False) -> pd.DataFrame:
    """Speculative decoding of ``prompts`` (``[1, T]`` ids) with each draft at each
    temperature (0: greedy; sampled otherwise, seed ``seed + i`` for prompt ``i``): one row
    per (draft, temperature) with pooled tau and alpha, and the results."""
    rows = []
    bar = tqdm(total=len(drafts) * len(temperatures) * len(prompts), desc="tau", disable=not progress)
    for name, draft in drafts.items():
        for temp in temperatures:
            res = []
            for i, ids in enumerate(prompts):
                res.append(speculative_generate(target, draft, ids, gamma=gamma, max_new_tokens=max_new_tokens,
                                                temperature=float(temp), seed=seed + i))
                bar.update()
            rows.append({"draft": name, "temperature": float(temp), "tau": mean_tau(res),
                         "alpha": acceptance_rate(res), "results": res})
    bar.close()
    return pd.DataFrame(rows)


# -- against transformers ------------------------------------------------------------------------------

def hf_assisted(target, draft, *, gamma: int, max_new_tokens: int, dynamic: bool = False, pad_token_id=None):
    """transformers' greedy assisted generation as a decoder ``fn([1, T] ids) -> result``
    with ``tokens`` (up to and including EOS) and ``target_calls`` (target forward passes,
    counted by a hook that lives only during the call).

    Fixed: ``gamma`` assistant tokens per block (schedule ``"constant"``, no confidence
    stop). Dynamic: transformers' ``"heuristic"`` schedule from ``gamma`` (+2 after a block
    fully accepted, -1 otherwise) and its default confidence stop (0.4). Every call starts
    from these settings (the heuristic's count would otherwise carry over between calls).
    """
    config = copy.deepcopy(draft.generation_config)
    config.num_assistant_tokens = int(gamma)
    config.num_assistant_tokens_schedule = "heuristic" if dynamic else "constant"
    config.assistant_confidence_threshold = 0.4 if dynamic else 0.0
    eos = _eos_ids(target)

    def run(ids):
        own, draft.generation_config = draft.generation_config, copy.deepcopy(config)
        calls = [0]
        hook = target.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
        try:
            out = target.generate(ids, attention_mask=torch.ones_like(ids), assistant_model=draft, do_sample=False,
                                  max_new_tokens=max_new_tokens, pad_token_id=pad_token_id)
        finally:
            hook.remove()
            draft.generation_config = own
        toks = out[0, ids.shape[1]:].tolist()
        stop = next((i for i, t in enumerate(toks) if t in eos), None)
        toks = toks if stop is None else toks[: stop + 1]
        return SimpleNamespace(tokens=toks, target_calls=calls[0], drafted=[], accepted=[])

    return run


def against_transformers(target, draft, prompts: list[torch.Tensor], *, gamma: int, max_new_tokens: int,
                         rounds: int, pad_token_id=None, progress: bool = False) -> tuple[pd.DataFrame, dict]:
    """Plain decoding, our engine and transformers' assisted generation (fixed and
    dynamic), all greedy with the same full-vocabulary ``draft``, in interleaved rounds."""
    n = max_new_tokens
    methods = {
        "plain": lambda x: autoregressive_generate(target, x, max_new_tokens=n),
        f"ours, gamma={gamma}": lambda x: speculative_generate(target, draft, x, gamma=gamma, max_new_tokens=n),
        f"transformers, gamma={gamma}": hf_assisted(target, draft, gamma=gamma, max_new_tokens=n,
                                                    pad_token_id=pad_token_id),
        "transformers, dynamic": hf_assisted(target, draft, gamma=gamma, max_new_tokens=n, dynamic=True,
                                             pad_token_id=pad_token_id),
    }
    table, first = compare_decoders(methods, prompts, rounds=rounds, progress=progress)
    table["speed-up"] = 1.0 / table["time_vs_plain"]
    return table, first


def output_agreement(results: dict[str, list], reference: str = "plain") -> pd.DataFrame:
    """Per method: in how many prompts its tokens equal the reference's, and where the
    first differing token is in the others."""
    ref = results[reference]
    rows = {}
    for name, res in results.items():
        firsts = [next((i for i, (x, y) in enumerate(zip(r.tokens, b.tokens)) if x != y),
                       min(len(r.tokens), len(b.tokens))) for r, b in zip(res, ref) if r.tokens != b.tokens]
        rows[name] = {f"same tokens as {reference}": f"{len(res) - len(firsts)} of {len(res)}",
                      "first difference at token": ", ".join(map(str, firsts)) or "-"}
    return pd.DataFrame(rows).T


# -- against the paper ---------------------------------------------------------------------------------

PAPER = {  # Goel et al. 2024, arXiv 2403.00858: the abstract's numbers (it names no hardware)
    "target": "Llama 2 Chat 7B", "draft": "Llama 2 Chat Drafter 115M", "size ratio": 0.0164,
    "tau": 2.3, "speed-up": 2.4, "hardware": "a GPU (not named in the abstract)",
    "data": "instruction-response pairs generated by the target",
}


def paper_table(book: pd.DataFrame) -> pd.DataFrame:
    """The paper's headline numbers ("up to", over tasks) above the book's drafts.
    ``book``: one row per draft with ``size ratio``, ``tau`` and speed-up columns."""
    paper = pd.DataFrame([{"size ratio": PAPER["size ratio"], "tau": PAPER["tau"],
                           "speed-up (reported)": PAPER["speed-up"]}],
                         index=[f"paper: {PAPER['draft']} (up to)"])
    return pd.concat([paper, book]).rename_axis("draft")
