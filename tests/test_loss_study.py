"""The loss study keeps each run's result as it finishes (data/results/loss_study/runs/) and
assembles its table from whatever is kept: the plan of runs, the groups the verdict
compares, a report assembled from single-run results equal to the one made at once, a
result of other settings refused, and a table that says which runs are still missing."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from draftalign.artifacts import write_json
from draftalign.book import loss_study as L
from draftalign.compare import seed_summary

from test_compare import synthetic_report

SETTINGS = L.study_settings(L.STEPS, dict(L.SIZES))


def test_the_plan_names_every_run_once_in_training_order():
    keys = L.run_keys([0, 1, 2], dict(L.SIZES, on_policy_seeds=1))
    assert keys[0] == "pretrained" and len(keys) == len(set(keys))
    assert [k for k in keys if k.startswith("offline/")][:4] == [f"offline/{x}-s0" for x in L.LOSSES]
    assert sum(k.startswith("offline/") for k in keys) == 3 * len(L.LOSSES)
    assert sum(k.startswith("check/") for k in keys) == 2 * len(L.LOSSES)
    assert [k for k in keys if k.startswith("onpolicy/")] == [f"onpolicy/{x}-s0" for x in L.ON_POLICY_LOSSES]


def test_groups_gather_the_seeds_of_each_loss_and_mode():
    keys = {"pretrained", "offline/fkl-s0", "offline/fkl-s1", "offline/tvd++-s0", "onpolicy/tvd++-s0",
            "check/fkl-cached", "check/fkl-online"}
    assert L.study_groups(keys) == {"pretrained": ["pretrained"], "fkl": ["offline/fkl-s0", "offline/fkl-s1"],
                                    "tvd++": ["offline/tvd++-s0"], "tvd++ on-policy": ["onpolicy/tvd++-s0"]}


def kept_results(tmp_path, settings=SETTINGS):
    """A report of four drafts made at once, and the same kept run by run as the study keeps it."""
    report, _ = synthetic_report({"offline/fkl": (0.6, 2), "offline/tvd++": (0.55, 2)}, 12, temperatures=(0.0, 0.7, 1.0))
    rename = {f"offline/{loss}/s{s}": f"offline/{loss}-s{s}" for loss in ("fkl", "tvd++") for s in (0, 1)}
    report["draft"] = report.draft.map(rename)
    per = report.attrs["per_prompt"].assign(draft=lambda d: d.draft.map(rename))
    report.attrs["per_prompt"] = per
    for key in rename.values():
        write_json(L.result_path(tmp_path, key), {"key": key, "settings": settings, "train_seconds": 10.0,
                                                  "eval_seconds": 2.0,
                                                  "curve": {"step": [0, 40, 80], "eval_tvd": [0.5, 0.4, 0.38],
                                                            "eval_top1": [0.4, 0.5, 0.52]},
                                                  "sets": {"held_out": {
                                                      "report": report[report.draft == key].to_dict("records"),
                                                      "per_prompt": per[per.draft == key].to_dict("records")}}})
    return report


def test_a_report_assembled_run_by_run_gives_the_same_summary(tmp_path):
    whole = kept_results(tmp_path)
    results = L.read_results(tmp_path, SETTINGS)
    assembled = L.assembled_report(results, "held_out")
    groups = L.study_groups(set(assembled.draft))
    assert groups == {"fkl": ["offline/fkl-s0", "offline/fkl-s1"], "tvd++": ["offline/tvd++-s0", "offline/tvd++-s1"]}
    pd.testing.assert_frame_equal(seed_summary(assembled, groups, n_boot=200), seed_summary(whole, groups, n_boot=200))


def test_a_result_made_with_other_settings_is_refused(tmp_path):
    kept_results(tmp_path, settings={**SETTINGS, "steps": SETTINGS["steps"] + 1})
    with pytest.raises(ValueError, match="other settings .*steps"):
        L.read_results(tmp_path, SETTINGS)


def test_the_table_says_which_runs_are_missing(tmp_path):
    kept_results(tmp_path / "loss_study")
    write_json(tmp_path / "loss_study" / "times.json", {"sessions": [{"topk": 100.0}]})
    data = {"rows": 100, "train_rows": 90, "held_rows": 10, "pool": [{"response_ids": [1, 2, 3]}] * 4,
            "held_prompts": list(range(12)), "mt_bench": list(range(5))}
    planned = L.run_keys([0, 1, 2], dict(L.SIZES))
    L.write_report(data, tmp_path / "loss_study", [0, 1, 2], L.STEPS, tmp_path / "loss_study.json", dict(L.SIZES),
                   planned)
    table = json.loads((tmp_path / "loss_study.json").read_text())
    assert table["runs"]["done"] == [f"offline/{loss}-s{s}" for s in (0, 1) for loss in ("fkl", "tvd++")]
    assert "pretrained" in table["runs"]["missing"] and "offline/rkl-s0" in table["runs"]["missing"]
    assert table["seconds"]["offline/fkl-s0"] == 12.0 and table["seconds"]["session 1: topk"] == 100.0
    assert table["curves"]["offline/fkl-s1"]["step"] == [0, 40, 80]
    held = table["sets"]["held_out"]
    assert {r["group"] for r in held["summary"]} == {"fkl", "tvd++"} and len(held["verdict"]) == 6
    assert "mt_bench" not in table["sets"]
