"""Chapter 5's "where speculative decoding pays": runtimes side by side.

The speed-up of speculative decoding is set by three numbers of a runtime on a machine:
how the cost of a target pass over ``k`` tokens grows with ``k`` (``t(k) / t(1)``), what a
draft step costs (``c``, in one-token target passes), and the acceptance the draft earns.
PyTorch eager on this CPU is measured live by the chapter; llama.cpp on this CPU comes from
the stored benchmark ``data/results/llama_cpp.json`` (``make bench-llama-cpp``: the book
does not build llama.cpp); a GPU appears only where a record of one exists.

Reads that record and the shipped drafter's manifest (its wall-clock benchmark); writes
nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..costmodel import CostModel, alpha_needed
from .profiles import repo_root

__all__ = ["LLAMA_CPP_RESULTS", "llama_name", "load_llama_cpp", "pass_cost_curves", "plot_pass_costs", "runtime_table",
           "shipped_speedups", "cost_split_table", "shape_table", "regime", "reading", "trim_reading"]

LLAMA_CPP_RESULTS = Path("data") / "results" / "llama_cpp.json"
TORCH = "PyTorch eager, this CPU"


def load_llama_cpp(path=None) -> dict | None:
    """The stored llama.cpp benchmark (``draftalign bench --engine llama.cpp --json``), or
    ``None`` when there is none."""
    path = Path(path) if path else repo_root() / LLAMA_CPP_RESULTS
    return json.loads(path.read_text()) if path.exists() else None


def llama_name(threads: int) -> str:
    """The row name of llama.cpp at ``threads`` threads in this module's tables."""
    return f"llama.cpp, this CPU, {threads} thread{'s' if threads > 1 else ''}"


def _llama_points(record: dict, threads: int, model: str = "target") -> dict[int, float]:
    rows = [r for r in record["pass_costs"] if r["threads"] == threads and r["model"] == model]
    points = {1: next(r["ms_per_pass"] for r in rows if r["test"].startswith("tg"))}
    points.update({r["k"]: r["ms_per_pass"] for r in rows if r["test"].startswith("pp") and r["k"] >= 2})
    return points


def pass_cost_curves(torch_cost: pd.DataFrame, record: dict | None) -> pd.DataFrame:
    """``t(k) / t(1)`` per runtime (columns) and ``k`` (rows): PyTorch from
    :func:`draftalign.timing.pass_cost`'s table (``k``, ``ms_median``), llama.cpp from the
    record (one decoded token as ``t(1)``, ``llama-bench``'s pass over ``k`` prompt tokens)."""
    base = float(torch_cost.set_index("k").ms_median.loc[1])
    curves = {TORCH: torch_cost.set_index("k").ms_median / base}
    for th in (record or {}).get("threads", []):
        points = _llama_points(record, th)
        curves[llama_name(th)] = pd.Series({k: v / points[1] for k, v in points.items()})
    return pd.DataFrame(curves).rename_axis("k").sort_index()


def plot_pass_costs(curves: pd.DataFrame, colors: dict | None = None):
    """The curves of :func:`pass_cost_curves` between the two limits: flat (a pass over k
    tokens costs one: memory- or launch-bound) and the diagonal (k tokens cost k: compute-bound)."""
    fig, ax = plt.subplots(figsize=(8, 4.8), layout="constrained")
    k = np.array(curves.index, dtype=float)
    ax.plot(k, k, "k:", lw=1.5, label="compute-bound: t(k) = k t(1)")
    ax.plot(k, np.ones_like(k), "k--", lw=1.5, label="memory-bound: t(k) = t(1)")
    for name, series in curves.items():
        s = series.dropna()
        ax.plot(s.index, s.to_numpy(), "o-", lw=2, ms=7, label=name, color=(colors or {}).get(name))
    ax.set(xlabel="tokens k in one target pass", ylabel="t(k) / t(1)", xticks=list(curves.index),
           title="What verifying k tokens costs, relative to decoding one")
    ax.legend(loc="upper left", fontsize=9)
    return fig


def shipped_speedups(manifest: dict) -> dict[int, float]:
    """The shipped drafter's measured wall-clock speed-up per gamma in PyTorch on this CPU
    (the ``bench-cpu-*`` record its manifest holds), ``{}`` when it has none."""
    run = (manifest or {}).get("results", {}).get("run", {})
    bench = next((v for k, v in run.items() if k.startswith("bench-cpu")), None)
    if not bench:
        return {}
    return {int(r["method"].split("=")[1]): 1 / r["time_vs_plain"] for r in bench["table"]
            if r["method"].startswith("gamma=")}


def runtime_table(torch_model: CostModel, torch_c: float, torch_speedup: dict[int, float], record: dict | None,
                  gammas=(1, 2, 4)) -> pd.DataFrame:
    """One row per runtime: ``t(2)/t(1)`` and ``t(5)/t(1)`` of its fitted cost line, the
    shipped drafter's step cost ``c``, the acceptance each gamma needs to break even, and the
    speed-up each gamma measured (PyTorch: ``torch_speedup``; llama.cpp: its servers) and, for
    llama.cpp, the speed-up the cost model predicts from the server's own acceptance (the gap
    is what the server spends per block beyond a draft step and a verification pass)."""
    from ..llamacpp import cost_model

    rows = {}

    def row(model, c, speedups, accepted=None, per_gamma=None):
        out = {"t(2)/t(1)": float(model.verify(2)), "t(5)/t(1)": float(model.verify(5)), "c (shipped drafter)": c}
        for g in gammas:
            out[f"alpha needed, gamma {g}"] = alpha_needed(c, g, model)
        for g in gammas:
            out[f"speed-up, gamma {g}"] = speedups.get(g, np.nan)
        for g in gammas:  # tau = 1 + gamma x acceptance: every block drafts gamma tokens
            a = (per_gamma or {}).get(g)
            out[f"predicted speed-up, gamma {g}"] = (float(model.speedup(1 + g * a, g, c)) if a is not None
                                                     else np.nan)
        if accepted is not None:
            out["acceptance (server, smallest gamma)"] = accepted
        return out

    rows[TORCH] = row(torch_model, torch_c, torch_speedup)
    for th in (record or {}).get("threads", []):
        model = cost_model(record["pass_costs"], th)
        draft = f"draft ({record['served_type']})"
        c = _llama_points(record, th, draft)[1] / _llama_points(record, th)[1]
        run = next(r for r in record["servers"] if r["threads"] == th)
        speedups = {int(r["method"].split("=")[1]): r["speed_up"] for r in run["rows"] if r["method"] != "plain"}
        first = min((r for r in run["rows"] if r["method"] != "plain"), key=lambda r: int(r["method"].split("=")[1]))
        accepted = first.get("acceptance")  # per drafted token, at the smallest gamma
        per_gamma = {int(r["method"].split("=")[1]): r.get("acceptance") for r in run["rows"] if r["method"] != "plain"}
        rows[llama_name(th)] = row(model, c, speedups, accepted, per_gamma)
    return pd.DataFrame(rows).T.rename_axis("runtime")


def cost_split_table(torch_costs: pd.DataFrame, record: dict | None) -> pd.DataFrame:
    """Per runtime, :func:`draftalign.draftcost.cost_split` of the shipped drafter's step:
    ms per layer, ms of the rest (output layer, embedding, fixed cost per call) and the share
    of a step its layers take."""
    from ..draftcost import cost_split

    rows = {TORCH: cost_split(torch_costs)}
    for th in (record or {}).get("threads", []):
        shapes = pd.DataFrame([r for r in record.get("shape_costs", []) if r["threads"] == th])
        if len(shapes):
            rows[llama_name(th)] = cost_split(shapes.set_index("shape"))
    return pd.DataFrame(rows).T.rename_axis("runtime")


def shape_table(torch_costs: pd.DataFrame, record: dict | None, torch_model: CostModel, *, gamma: int,
                alpha: float) -> pd.DataFrame:
    """Each draft shape's ``c`` per runtime and the acceptance it would need at ``gamma`` to
    match the shipped drafter's speed-up there (which earns ``alpha``); a trimmed
    vocabulary has no llama.cpp column (a GGUF holds every token of its tokenizer)."""
    from ..llamacpp import cost_model
    from ..metrics import expected_tau

    def needed(model, c_own, c):
        goal = float(model.speedup(expected_tau(alpha, gamma), gamma, c_own))
        return alpha_needed(c, gamma, model, speedup=goal)

    out = pd.DataFrame({"parameters": torch_costs.parameters, f"c, {TORCH}": torch_costs.c})
    out[f"alpha to match, {TORCH}"] = [needed(torch_model, torch_costs.c["draft"], c) for c in torch_costs.c]
    for th in (record or {}).get("threads", []):
        shapes = pd.DataFrame([r for r in record.get("shape_costs", []) if r["threads"] == th])
        if not len(shapes):
            continue
        c = shapes.set_index("shape").c
        model = cost_model(record["pass_costs"], th)
        name = llama_name(th)
        out[f"c, {name}"] = c
        out[f"alpha to match, {name}"] = pd.Series({s: needed(model, c["draft"], v) for s, v in c.items()})
    return out.rename_axis("shape")


def regime(t5: float) -> str:
    """What ``t(5) / t(1)`` says about a runtime's passes: near 1, verification is nearly free
    (fixed cost per call, or memory, dominates); near 5, every token costs its arithmetic."""
    if t5 <= 1.6:
        return "a pass is mostly fixed cost or memory traffic, so verifying several tokens costs little more than one"
    if t5 >= 3.0:
        return "the arithmetic of each token is most of the cost, so verifying k tokens costs nearly k tokens"
    return "verification costs well above one token but below k: between the memory- and the compute-bound limit"


def _speedups(row) -> str:
    return ", ".join(f"{row[f'speed-up, gamma {g}']:.2f}x at gamma {g}" for g in (1, 2, 4)
                     if f"speed-up, gamma {g}" in row and row[f"speed-up, gamma {g}"] == row[f"speed-up, gamma {g}"])


def reading(table: pd.DataFrame, split: pd.DataFrame, *, gamma: int) -> str:
    """Paragraphs built from :func:`runtime_table` and :func:`cost_split_table`: per runtime,
    its pass costs and what they mean (:func:`regime`), the break-even acceptance at
    ``gamma`` and the measured speed-ups; then where a draft step's time goes."""
    parts = []
    min_gamma = min(int(c.rsplit(" ", 1)[1]) for c in table.columns if c.startswith("speed-up, gamma"))
    for name, row in table.iterrows():
        text = (f"**{name}**: a pass over 2 tokens costs {row['t(2)/t(1)']:.2f} times one and over 5 tokens "
                f"{row['t(5)/t(1)']:.2f} times (the fitted line): {regime(row['t(5)/t(1)'])}. With the shipped "
                f"drafter's step at c = {row['c (shipped drafter)']:.3f}, gamma = {gamma} breaks even at "
                f"alpha = {row[f'alpha needed, gamma {gamma}']:.2f}")
        measured = _speedups(row)
        if measured:
            text += f"; measured, speculative decoding gives {measured}"
            accepted = row.get("acceptance (server, smallest gamma)")
            if accepted is not None and accepted == accepted:
                text += f" (acceptance {accepted:.2f} per drafted token)"
            predicted = row.get(f"predicted speed-up, gamma {min_gamma}")
            if predicted is not None and predicted == predicted:
                text += (f", where the cost model predicts {predicted:.2f}x at gamma {min_gamma} from that acceptance: "
                         f"the rest is what the server spends per block beyond a draft step and a verification pass")
        parts.append(text + ".")
    for name, s in split.iterrows():
        parts.append(f"**Where a draft step goes, {name}**: {1000 * s['per_layer_ms']:.0f} us per layer and "
                     f"{1000 * s['rest_ms']:.0f} us for the rest (output layer, embedding, fixed cost per call); the "
                     f"layers are {100 * s['layers_share']:.0f}% of the shipped drafter's step.")
    return "\n\n".join(parts)


def trim_reading(trim: pd.DataFrame, *, gamma: int) -> str:
    """A sentence from the chapter's full-against-trimmed table (``vocabulary``, ``c (PyTorch,
    measured)``, ``tau at gamma <gamma>``, ``predicted speed-up (PyTorch)``)."""
    full, cut = trim.loc["full"], trim.loc["trimmed"]
    tau = f"tau at gamma {gamma}"
    return (f"Trimmed to the {int(cut['vocabulary']):,} tokens of its distillation answers "
            f"({cut['vocabulary'] / full['vocabulary']:.0%} of the vocabulary), the shipped drafter's step costs "
            f"c = {cut['c (PyTorch, measured)']:.3f} instead of {full['c (PyTorch, measured)']:.3f} in PyTorch, and "
            + (f"its tau at gamma = {gamma} stays at {full[tau]:.3f} on this chapter's answers: "
               if round(full[tau], 3) == round(cut[tau], 3) else
               f"its tau at gamma = {gamma} goes from {full[tau]:.3f} to {cut[tau]:.3f} on this chapter's answers: ")
            + f"a predicted speed-up of {cut['predicted speed-up (PyTorch)']:.2f}x against "
            f"{full['predicted speed-up (PyTorch)']:.2f}x. llama.cpp cannot take the trimmed head: a GGUF holds one "
            f"embedding row per token of its tokenizer.")
