"""Comparing drafts trained several times: intervals over prompts and training seeds, and
a verdict that never calls overlapping intervals a win.

Reads an acceptance report (:func:`draftalign.evaluate.acceptance_report`, whose
``attrs["per_prompt"]`` holds the per-answer numbers) and groups of its drafts (e.g. each
loss's drafts, one per training seed); writes nothing. Chapter 4 and the loss study
(``draftalign study``) decide between the losses with it.

A group's value is the mean over its seeds of each seed's pooled metric. Its interval comes
from a two-level bootstrap: each replicate resamples the prompts (the same resampling for
every group, so differences are paired) and, within the group, the seeds; the spread over
seeds is reported beside it (``*_seed_sd``, ``*_seed_min``, ``*_seed_max``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["METRICS", "seed_summary", "pairwise", "verdict", "summary_table", "flattening", "lesson", "study_tables"]

METRICS = ("alpha", "expected_tau")  # per-token acceptance; tau from the per-position acceptances


def _interval(replicates: np.ndarray) -> tuple[float, float]:
    """The central 95% of the bootstrap replicates; ``nan`` when there are none."""
    finite = replicates[np.isfinite(replicates)]
    if not len(finite):
        return float("nan"), float("nan")
    lo, hi = np.percentile(finite, [2.5, 97.5])
    return float(lo), float(hi)


def _per_seed(per: pd.DataFrame, drafts: list[str], temperature: float, n_prompts: int) -> dict[str, np.ndarray]:
    """``{metric part: [seeds, prompts]}``: the sums per prompt a pooled metric is built from."""
    rows = per[(per.temperature == temperature) & per.draft.isin(drafts)]
    out = {}
    for key in ("positions", "alpha_sum", "expected_calls", "tokens"):
        table = rows.pivot_table(index="draft", columns="prompt", values=key, aggfunc="sum", fill_value=0.0)
        out[key] = table.reindex(index=drafts, columns=range(n_prompts), fill_value=0.0).to_numpy(float)
    return out


def _pooled(parts: dict, metric: str, prompts_idx, seeds_idx=None) -> np.ndarray:
    """The metric of each seed (rows of ``seeds_idx``) over the prompts ``prompts_idx``."""
    num, den = (("alpha_sum", "positions") if metric == "alpha" else ("tokens", "expected_calls"))
    a, b = parts[num], parts[den]  # [S, P]
    with np.errstate(invalid="ignore", divide="ignore"):
        if prompts_idx.ndim == 1:
            return a[:, prompts_idx].sum(1) / b[:, prompts_idx].sum(1)  # [S]
        return a[:, prompts_idx].sum(-1) / b[:, prompts_idx].sum(-1)  # [S, B]


def _replicates(report: pd.DataFrame, groups: dict[str, list[str]], temperature: float, metric: str,
                n_boot: int, seed: int) -> tuple[dict, dict]:
    """Each group's per-seed values ``[S]`` and its bootstrap replicates of the seed mean ``[B]``."""
    per = report.attrs.get("per_prompt")
    if per is None:
        raise ValueError("the report has no per-prompt table (attrs['per_prompt']): make it with acceptance_report")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    n_prompts = int(report.prompts.max())
    rng = np.random.default_rng(seed)
    prompt_draws = rng.integers(0, n_prompts, size=(n_boot, n_prompts))  # shared by every group: paired
    values, reps = {}, {}
    for name, drafts in groups.items():
        missing = sorted(set(drafts) - set(report.draft))
        if missing or not drafts:
            raise ValueError(f"group {name!r} names drafts the report does not hold: {missing or 'none given'}")
        parts = _per_seed(per, list(drafts), temperature, n_prompts)
        values[name] = _pooled(parts, metric, np.arange(n_prompts))
        by_seed = _pooled(parts, metric, prompt_draws)  # [S, B]
        seed_draws = rng.integers(0, len(drafts), size=(n_boot, len(drafts)))  # [B, S]
        reps[name] = by_seed[seed_draws, np.arange(n_boot)[:, None]].mean(1)  # [B]
        if n_prompts < 2:  # one prompt: resampling it says nothing about another prompt
            reps[name] = np.full(n_boot, np.nan)
    return values, reps


def seed_summary(report: pd.DataFrame, groups: dict[str, list[str]], *, temperatures=None,
                 metrics=METRICS, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per (group, temperature): for each metric its mean over the group's seeds,
    the seeds' standard deviation, minimum and maximum, and a 95% interval over prompts and
    seeds (``<metric>_lo``, ``<metric>_hi``); ``seeds`` and ``prompts`` counted."""
    temps = sorted(set(report.temperature)) if temperatures is None else list(temperatures)
    rows = []
    for temp in temps:
        row_by_group = {name: {"group": name, "temperature": temp, "seeds": len(d), "prompts": int(report.prompts.max())}
                        for name, d in groups.items()}
        for metric in metrics:
            values, reps = _replicates(report, groups, temp, metric, n_boot, seed)
            for name in groups:
                v, r = values[name], reps[name]
                lo, hi = _interval(r)
                row_by_group[name].update({metric: float(np.mean(v)), f"{metric}_lo": float(lo), f"{metric}_hi": float(hi),
                                           f"{metric}_seed_sd": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
                                           f"{metric}_seed_min": float(np.min(v)), f"{metric}_seed_max": float(np.max(v))})
        rows += list(row_by_group.values())
    return pd.DataFrame(rows)


def pairwise(report: pd.DataFrame, groups: dict[str, list[str]], *, temperature: float, metric: str = "alpha",
             n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Every ordered pair of groups (``a``, ``b``) with ``a`` ahead on the mean: the
    difference ``a - b`` and its paired 95% interval (``diff_lo``, ``diff_hi``: the same
    prompt and seed resamplings on both sides), and whether the two groups' own intervals
    overlap."""
    values, reps = _replicates(report, groups, temperature, metric, n_boot, seed)
    means = {g: float(np.mean(v)) for g, v in values.items()}
    order = sorted(groups, key=lambda g: -means[g])
    ranges = {g: _interval(reps[g]) for g in groups}
    rows = []
    for i, a in enumerate(order):
        for b in order[i + 1:]:
            lo, hi = _interval(reps[a] - reps[b])
            apart = ranges[a][0] > ranges[b][1]  # False when either interval is unknown (nan)
            rows.append({"a": a, "b": b, "metric": metric, "temperature": temperature, "diff": means[a] - means[b],
                         "diff_lo": lo, "diff_hi": hi, "intervals_overlap": not apart})
    return pd.DataFrame(rows)


def verdict(report: pd.DataFrame, groups: dict[str, list[str]], *, temperature: float, metric: str = "alpha",
            n_boot: int = 1000, seed: int = 0, label: str | None = None) -> str:
    """One sentence: which group leads on ``metric`` at ``temperature``, and over which
    others the lead is resolved (its interval lies wholly above theirs) or not."""
    pairs = pairwise(report, groups, temperature=temperature, metric=metric, n_boot=n_boot, seed=seed)
    summary = seed_summary(report, groups, temperatures=[temperature], metrics=(metric,), n_boot=n_boot, seed=seed)
    summary = summary.set_index("group")
    what = label or (f"{'alpha' if metric == 'alpha' else 'expected tau'} at "
                     + ("greedy decoding" if temperature == 0 else f"T = {temperature:g}"))
    if pairs.empty:
        return f"{what}: one group only"
    best = pairs.iloc[0].a
    beaten = [r.b for r in pairs[pairs.a == best].itertuples() if not r.intervals_overlap]
    tied = [r.b for r in pairs[pairs.a == best].itertuples() if r.intervals_overlap]
    s = summary.loc[best]
    interval = (f"95% interval {s[f'{metric}_lo']:.3f}-{s[f'{metric}_hi']:.3f}" if s[f"{metric}_lo"] == s[f"{metric}_lo"]
                else "no interval from a single prompt")
    text = f"{what}: {best} leads ({s[metric]:.3f}, {interval})"
    if beaten:
        gaps = ", ".join(f"{b} by {pairs.loc[(pairs.a == best) & (pairs.b == b), 'diff'].iloc[0]:.3f}" for b in beaten)
        text += f"; it beats {gaps} (intervals apart)"
    if tied:
        text += f"; not resolved against {', '.join(tied)} (intervals overlap)"
    return text


def summary_table(summary: pd.DataFrame, measures) -> pd.DataFrame:
    """A readable table of :func:`seed_summary`: one row per group, one column per measure
    ``(metric, temperature, label)``, each cell ``mean [lo, hi]`` and, with more than one
    seed, ``± sd`` over seeds."""
    cols = {}
    for metric, temp, label in measures:
        part = summary[summary.temperature == temp].set_index("group")
        cols[label] = {g: f"{r[metric]:.3f} [{r[f'{metric}_lo']:.3f}, {r[f'{metric}_hi']:.3f}]"
                          + (f" ± {r[f'{metric}_seed_sd']:.3f}" if r["seeds"] > 1 else "")
                       for g, r in part.iterrows()}
    return pd.DataFrame(cols).rename_axis("draft")


def flattening(histories: dict, *, column: str = "eval_tvd", tail: float = 1 / 3, flat: float = 0.1) -> pd.DataFrame:
    """Whether training has flattened, from the held-out curve of each run
    (``{(loss, seed): history}``): per run the held-out ``column`` at its first and last
    points and how much of its total change came in the last ``tail`` of the steps. A run
    has flattened when that share is below ``flat``. ``attrs["reading"]`` says it in a
    sentence per loss."""
    rows = []
    for (loss, seed), h in histories.items():
        ev = h.dropna(subset=[column])
        if len(ev) < 3:
            continue
        steps, values = ev.step.to_numpy(), ev[column].to_numpy(float)
        cut = steps[-1] - tail * (steps[-1] - steps[0])
        before = values[steps <= cut][-1]
        total = values[0] - values[-1]
        rows.append({"loss": loss, "seed": seed, "first": values[0], "last": values[-1], "total change": total,
                     "change in the last part": before - values[-1],
                     "share in the last part": (before - values[-1]) / total if total else float("nan")})
    table = pd.DataFrame(rows)
    if table.empty:
        table.attrs["reading"] = "Too few points on the held-out curves to say whether training has flattened."
        return table
    per_loss = table.groupby("loss", sort=False)[["total change", "change in the last part", "share in the last part"]].mean()
    parts = []

    def moved(x):
        return f"fell {x:.3f}" if x >= 0 else f"rose {-x:.3f}"

    for loss, r in per_loss.iterrows():
        state = "flattened" if abs(r["share in the last part"]) < flat else "still moving"
        parts.append(f"{loss}: it {moved(r['total change'])} over the run and {moved(r['change in the last part'])} "
                     f"in the last {tail:.0%} of the steps ({state})")
    done = (per_loss["share in the last part"].abs() < flat).all()
    table.attrs["reading"] = (
        f"**Has training flattened?** The held-out {column.replace('eval_', '').upper()} of each loss, mean over "
        f"seeds: " + "; ".join(parts) + ". "
        + ("Every loss changed by less than a tenth of its total in that stretch: more steps of the same "
           "schedule would change little." if done else
           "Not every loss has flattened: where the curve still falls, the budget, not only the loss, limits "
           "the draft, and the verdict below is a verdict at this budget."))
    return table


def _fmt_pair(pairs: pd.DataFrame, set_name: str, label: str, a: str, b: str) -> str | None:
    """``a`` against ``b`` on one measure: the difference a - b and its paired interval."""
    for x, y, sign in ((a, b, 1), (b, a, -1)):
        key = (set_name, label, x, y)
        if key in pairs.index:
            r = pairs.loc[key]
            d, lo, hi = sign * r["diff"], *(sorted((sign * r["diff_lo"], sign * r["diff_hi"])))
            if not r["intervals_overlap"]:
                state = "resolved"
            elif lo > 0 or hi < 0:
                state = "one sign over the paired prompts, but within the losses' own intervals: not resolved"
            else:
                state = "not resolved"
            return f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}], {state}"
    return None


def lesson(summaries: dict[str, pd.DataFrame], pairs: pd.DataFrame, *, measures, seeds: int) -> str:
    """The run's lesson in prose, built from :func:`seed_summary` per prompt set and the
    :func:`pairwise` table (index ``prompts, measure, a, b``): the order on each measure,
    and TVD++ against FKL and against TVD with paired intervals."""
    lines = []
    for set_name, summary in summaries.items():
        orders = []
        for metric, temp, label in measures:
            part = summary[summary.temperature == temp].set_index("group")[metric]
            part = part[[g for g in part.index if g not in ("pretrained", "reference drafter")]]
            orders.append(f"{label}: " + ", ".join(f"{g} {v:.3f}" for g, v in part.sort_values(ascending=False).items()))
        lines.append(f"**{set_name}** (mean over {seeds} seed{'s' if seeds != 1 else ''}): " + "; ".join(orders) + ".")
        for other in ("fkl", "tvd"):
            found = [(label, _fmt_pair(pairs, set_name, label, "tvd++", other)) for _, _, label in measures]
            found = [(label, f) for label, f in found if f]
            if found:
                lines.append(f"TVD++ minus {other.upper()} on {set_name}: "
                             + "; ".join(f"{label} {f}" for label, f in found) + ".")
    lines.append("A difference is called resolved only when the two losses' own intervals (over prompts and "
                 "seeds) do not overlap; the bracket is the paired interval of the difference, narrower because "
                 "both sides see the same prompts.")
    return "\n\n".join(lines)


def study_tables(study: dict, measures) -> tuple[pd.DataFrame, list[str], str]:
    """From the loss study's results (``data/results/loss_study.json``): its summary table
    over both prompt sets (:func:`summary_table`), its verdict lines, and a line saying what
    it ran on."""
    tables, verdicts = {}, []
    for set_name, part in study.get("sets", {}).items():
        label = {"held_out": "held-out", "mt_bench": "MT-Bench"}.get(set_name, set_name)
        tables[label] = summary_table(pd.DataFrame(part["summary"]), measures)
        verdicts += [f"**{label}.** {v[0].upper()}{v[1:]}." for v in part.get("verdict", [])]
        if part.get("check"):
            check = pd.DataFrame(part["check"])
            greedy = check[check.temperature == 0].set_index("group")
            t1 = check[check.temperature == 1.0].set_index("group")
            cached = [g for g in greedy.index if g.endswith("cached")]
            diffs = [f"{g.removesuffix(' cached')} alpha at T = 1 {t1.loc[g, 'alpha']:.3f} cached, "
                     f"{t1.loc[g.replace('cached', 'online'), 'alpha']:.3f} online"
                     for g in cached if g.replace("cached", "online") in t1.index]
            if diffs:
                verdicts.append(f"**{label}, cached against exact target** (one seed, "
                                f"{study['settings'].get('check_steps')} steps): " + "; ".join(diffs) + ".")
    table = pd.concat(tables, names=["prompts"]) if tables else pd.DataFrame()
    s, d = study.get("settings", {}), study.get("data", {})
    hw = study.get("hardware_and_versions", {})
    hours = sum(study.get("seconds", {}).values()) / 3600
    facts = (f"{len(s.get('losses', []))} losses x {len(s.get('seeds', []))} seeds, {s.get('steps')} steps of "
             f"{s.get('batch')} answers, on {d.get('pool_rows', 0):,} answers ({d.get('pool_answer_tokens', 0):,} "
             f"answer tokens) of the shipped set; {d.get('held_out_prompts')} held-out prompts, "
             f"{d.get('mt_bench_prompts')} MT-Bench; {hours:.1f} h on {hw.get('cpu', hw.get('hardware', 'this CPU'))}")
    runs = study.get("runs")
    if runs and runs.get("missing"):
        facts += (f". {len(runs['done'])} of {len(runs['planned'])} runs done so far; still to run: "
                  f"{', '.join(runs['missing'])}")
    return table, verdicts, facts
