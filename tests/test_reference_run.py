"""The reference run's stages end to end at tiny size (:mod:`draftalign.book.reference`), as
the book's pipeline is tested: every stage leaves its artifact, a second run reuses them all
without training again, and the export is a standard folder with its card.

A tiny Llama over SmolLM2's vocabulary stands in for the target, with SmolLM2's tokenizer.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from draftalign.book import stages
from draftalign.book.profiles import REFERENCE_STAGES, get_profile
from draftalign.book.reference import Run, run_stages

TINY = dict(draft_hidden=16, draft_layers=1, draft_heads=2, draft_intermediate=32, draft_init="target",
            pretrain_corpus="stdlib", pretrain_texts=40, pretrain_block=32, pretrain_eval_blocks=2,
            pretrain_steps=2, pretrain_batch=2, pretrain_warmup=1, ref_builtin_per_category=1, ref_self_instruct=0,
            ref_passages=3, ref_prompt_batch=4, ref_answer_batch=12, ref_answer_max_new_tokens=6, ref_shard=8,
            ref_kd_shards=1, kd_steps=2, kd_batch=2, kd_warmup=1, kd_max_length=256, kd_held_out_share=0.2,
            ref_finetune_steps=2, ref_finetune_batch=2, ref_finetune_max_length=256, ref_gammas=(1, 2),
            eval_max_new_tokens=5, ref_bench_prompts=2, ref_bench_rounds=1)


@pytest.fixture()
def run(tmp_path, monkeypatch, tiny_llama, tokenizer):
    monkeypatch.setenv("DRAFTALIGN_RUNS", str(tmp_path / "runs"))
    target = tiny_llama(vocab_size=49152, hidden_size=16, num_layers=1, eos_token_id=2, max_position_embeddings=512,
                        seed=3)
    target.draftalign_source = "local:tiny"
    return Run(get_profile("reference", **TINY), progress=False, _loaded=(target, tokenizer))


def test_every_stage_runs_and_a_second_run_reuses_them(run, tmp_path, monkeypatch):
    out = tmp_path / "shipped"
    run_stages(run, REFERENCE_STAGES, out=out)
    root = run.root
    for folder in ("corpus", "draft-pretrained", "prompts", "draft-fkl", "draft-tvd++", "draft-finetuned"):
        assert (root / folder / "manifest.json").exists(), folder
    shards = sorted(p.parent.name + "/" + p.name for p in root.glob("answers-*/shard-*"))
    assert shards[0] == "answers-greedy/shard-0000" and "answers-sampled/shard-0000" in shards
    evaluation = json.loads((root / "evaluation.json").read_text())
    assert evaluation["best"] in ("fkl", "tvd++") and evaluation["sets"]["eval"] == 72
    tau = json.loads((root / "tau.json").read_text())
    assert {e["gamma"] for e in tau["entries"].values()} == {1, 2}
    for check in tau["engine_check"].values():  # the replay is the engine, call for call (fp32)
        assert check["target_calls_engine"] == check["target_calls_replay"]
    bench = json.loads(next(root.glob("bench-cpu-float32.json")).read_text())
    assert bench["outputs_identical_to_plain"] and [r["method"] for r in bench["table"]] == ["plain", "gamma=1",
                                                                                              "gamma=2"]
    shipped = AutoModelForCausalLM.from_pretrained(out)
    assert shipped.config.vocab_size == 49152 and shipped.dtype == torch.bfloat16
    card = (out / "README.md").read_text()
    assert "## How it was made" in card and "draftalign reference" in card
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["spec"]["draft"] == "finetuned" and "draft-fkl" in manifest["results"]["run"]

    def refuse(*_, **__):
        raise AssertionError("a finished stage was trained again")

    monkeypatch.setattr(stages, "train", refuse)
    before = {p: p.stat().st_mtime_ns for p in root.glob("*/manifest.json")}
    run_stages(run, ("corpus", "pretrain", "prompts", "answers", "kd", "finetune"))
    assert {p: p.stat().st_mtime_ns for p in root.glob("*/manifest.json")} == before


def test_a_budget_plans_the_steps_once(run):
    """A stage given a budget times a few steps and saves the steps that fit as its plan; a
    later call (without a budget, e.g. after the deadline stopped it) keeps to that plan."""
    run.budgets = {"pretrain": 2.0}
    run_stages(run, ("corpus", "pretrain"))
    plan = json.loads((run.root / "plan-pretrain.json").read_text())
    assert plan["steps"] >= 1 and plan["budget_s"] == 2.0
    run.budgets = {}
    run_stages(run, ("pretrain",))
    spec = json.loads((run.root / "draft-pretrained" / "manifest.json").read_text())["spec"]
    assert spec["train"]["max_steps"] == plan["steps"]
