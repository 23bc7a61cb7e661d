"""The loss verdict (draftalign.compare) on synthetic reports: a group's value is the mean
of its seeds, intervals cover it and shrink with more prompts, a clear lead is called a win
and a tie or a single prompt is not, flattening is read from held-out curves."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from draftalign.compare import flattening, lesson, pairwise, seed_summary, study_tables, summary_table, verdict


def synthetic_report(groups: dict[str, tuple[float, int]], n_prompts: int, *, noise: float = 0.05, seed: int = 0,
                     temperatures=(0.0, 1.0)) -> tuple[pd.DataFrame, dict]:
    """A report as acceptance_report writes it: per group ``(alpha, seeds)``, every prompt
    with 50 positions whose acceptance is the group's alpha plus prompt and seed noise."""
    rng = np.random.default_rng(seed)
    prompt_effect = rng.normal(0, noise, n_prompts)
    per, rows, members = [], [], {}
    for name, (alpha, seeds) in groups.items():
        members[name] = [f"{name}/s{s}" for s in range(seeds)]
        for draft in members[name]:
            seed_effect = rng.normal(0, noise / 4)
            for temp in temperatures:
                for i in range(n_prompts):
                    a = float(np.clip(alpha + prompt_effect[i] + seed_effect + rng.normal(0, noise / 4), 0.01, 0.99))
                    per.append({"draft": draft, "temperature": temp, "seed": 0, "prompt": i, "id": i, "category": "x",
                                "positions": 50, "alpha_sum": 50 * a, "accept_sum": 50 * a,
                                "expected_calls": 50 / (1 + a), "tokens": 50})
                part = [p for p in per if p["draft"] == draft and p["temperature"] == temp]
                rows.append({"draft": draft, "temperature": temp, "prompts": n_prompts,
                             "alpha": sum(p["alpha_sum"] for p in part) / sum(p["positions"] for p in part),
                             "expected_tau": sum(p["tokens"] for p in part) / sum(p["expected_calls"] for p in part)})
    report = pd.DataFrame(rows)
    report.attrs["per_prompt"] = pd.DataFrame(per)
    return report, members


def test_group_value_is_the_mean_of_its_seeds():
    report, groups = synthetic_report({"a": (0.6, 3), "b": (0.5, 3)}, 20)
    s = seed_summary(report, groups, temperatures=[1.0], n_boot=200).set_index("group")
    for name, drafts in groups.items():
        seeds = report[(report.temperature == 1.0) & report.draft.isin(drafts)]
        assert s.loc[name, "alpha"] == pytest.approx(seeds.alpha.mean())
        assert s.loc[name, "alpha_seed_min"] == pytest.approx(seeds.alpha.min())
        assert s.loc[name, "alpha_seed_sd"] == pytest.approx(seeds.alpha.std(ddof=1))
        assert s.loc[name, "alpha_lo"] <= s.loc[name, "alpha"] <= s.loc[name, "alpha_hi"]
        assert s.loc[name, "seeds"] == 3


def test_intervals_shrink_with_more_prompts():
    widths = []
    for n in (8, 128):
        report, groups = synthetic_report({"a": (0.6, 3)}, n, seed=1)
        s = seed_summary(report, groups, temperatures=[1.0], n_boot=400).iloc[0]
        widths.append(s.alpha_hi - s.alpha_lo)
    assert widths[1] < 0.5 * widths[0]


def test_a_clear_lead_is_a_win_and_a_tie_is_not():
    report, groups = synthetic_report({"strong": (0.7, 3), "weak": (0.4, 3), "twin": (0.4, 3)}, 30)
    text = verdict(report, groups, temperature=1.0, n_boot=300)
    assert text.startswith("alpha at T = 1: strong leads") and "beats" in text and "weak" in text
    pairs = pairwise(report, groups, temperature=1.0, n_boot=300).set_index(["a", "b"])
    assert not pairs.loc[("strong", "weak"), "intervals_overlap"]
    assert pairs.loc[("strong", "weak"), "diff_lo"] > 0
    tie = pairwise(report, {"weak": groups["weak"], "twin": groups["twin"]}, temperature=1.0, n_boot=300).iloc[0]
    assert tie.intervals_overlap
    assert "not resolved" in verdict(report, {"weak": groups["weak"], "twin": groups["twin"]}, temperature=1.0)


def test_a_single_prompt_resolves_nothing():
    report, groups = synthetic_report({"a": (0.7, 1), "b": (0.3, 1)}, 1)
    text = verdict(report, groups, temperature=0.0, metric="expected_tau", n_boot=50)
    assert "no interval" in text and "not resolved" in text and "beats" not in text


def test_summary_table_and_lesson_read_the_summary():
    report, groups = synthetic_report({"fkl": (0.6, 2), "tvd++": (0.62, 2), "tvd": (0.5, 2)}, 12)
    measures = (("alpha", 1.0, "alpha at T = 1"), ("expected_tau", 0.0, "greedy tau"))
    summary = seed_summary(report, groups, n_boot=100)
    table = summary_table(summary, measures)
    assert list(table.columns) == ["alpha at T = 1", "greedy tau"] and set(table.index) == set(groups)
    assert table.loc["fkl", "alpha at T = 1"].startswith(f"{summary.query('temperature == 1').set_index('group').loc['fkl', 'alpha']:.3f} [")
    pairs = pd.concat([pairwise(report, groups, temperature=t, metric=m, n_boot=100).assign(measure=label)
                       for m, t, label in measures]).assign(prompts="held-out")
    pairs = pairs.set_index(["prompts", "measure", "a", "b"])
    text = lesson({"held-out": summary}, pairs, measures=measures, seeds=2)
    assert "TVD++ minus FKL on held-out: alpha at T = 1 +0.0" in text and "TVD++ minus TVD" in text


def test_pair_states_follow_the_rule():
    from draftalign.compare import _fmt_pair

    def pairs(lo, hi, overlap):
        idx = pd.MultiIndex.from_tuples([("held-out", "m", "tvd++", "fkl")], names=["prompts", "measure", "a", "b"])
        return pd.DataFrame({"diff": [(lo + hi) / 2], "diff_lo": [lo], "diff_hi": [hi],
                             "intervals_overlap": [overlap]}, index=idx)

    assert _fmt_pair(pairs(0.01, 0.03, False), "held-out", "m", "tvd++", "fkl").endswith(", resolved")
    one_sign = _fmt_pair(pairs(0.01, 0.03, True), "held-out", "m", "tvd++", "fkl")
    assert "one sign over the paired prompts" in one_sign and one_sign.endswith("not resolved")
    assert _fmt_pair(pairs(-0.01, 0.03, True), "held-out", "m", "tvd++", "fkl").endswith("], not resolved")
    # asked the other way round, the difference and its interval change sign
    assert _fmt_pair(pairs(0.01, 0.03, False), "held-out", "m", "fkl", "tvd++").startswith("-0.020 [-0.030, -0.010]")


def test_flattening_reads_the_held_out_curve():
    steps = np.arange(1, 101)
    flat = pd.DataFrame({"step": steps, "eval_tvd": np.where(steps % 10 == 0, 0.3 + 0.4 * np.exp(-steps / 10), np.nan)})
    falling = pd.DataFrame({"step": steps, "eval_tvd": np.where(steps % 10 == 0, 0.7 - 0.004 * steps, np.nan)})
    t = flattening({("fkl", 0): flat, ("tvd", 0): falling}).set_index("loss")
    assert abs(t.loc["fkl", "share in the last part"]) < 0.1 < t.loc["tvd", "share in the last part"]
    assert "fkl" in t.attrs["reading"] and "Not every loss has flattened" in t.attrs["reading"]
    assert "tvd: it fell 0.360 over the run and fell 0.120 in the last 33% of the steps (still moving)" in t.attrs["reading"]
    rising = pd.DataFrame({"step": steps, "eval_tvd": np.where(steps % 10 == 0, 0.3 + 0.001 * steps, np.nan)})
    assert "it rose 0.090 over the run" in flattening({("rkl", 0): rising}).attrs["reading"]
    assert "less than a tenth" in flattening({("fkl", 0): flat}).attrs["reading"]


def test_study_tables_reads_the_saved_study():
    report, groups = synthetic_report({"fkl": (0.6, 2), "tvd++": (0.6, 2)}, 10)
    summary = seed_summary(report, groups, n_boot=50)
    study = {"settings": {"losses": ["fkl", "tvd++"], "seeds": [0, 1], "steps": 300, "batch": 8, "check_steps": 60},
             "data": {"pool_rows": 2400, "pool_answer_tokens": 400_000, "held_out_prompts": 44, "mt_bench_prompts": 80},
             "hardware_and_versions": {"hardware": "a CPU"}, "seconds": {"x": 7200},
             "sets": {"held_out": {"summary": summary.to_dict("records"), "verdict": ["alpha at T = 1: fkl leads"]}}}
    table, verdicts, facts = study_tables(study, (("alpha", 1.0, "alpha at T = 1"),))
    assert ("held-out", "fkl") in table.index and verdicts == ["**held-out.** Alpha at T = 1: fkl leads."]
    assert "2 losses x 2 seeds, 300 steps" in facts and "2.0 h on a CPU" in facts
    study["runs"] = {"planned": ["pretrained", "offline/fkl-s0", "offline/fkl-s1"], "done": ["pretrained", "offline/fkl-s0"],
                     "missing": ["offline/fkl-s1"]}
    assert study_tables(study, (("alpha", 1.0, "alpha at T = 1"),))[2].endswith(
        "2 of 3 runs done so far; still to run: offline/fkl-s1")
