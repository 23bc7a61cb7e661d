"""The book's pipeline stages (:mod:`draftalign.book.pipeline`): an artifact is reused when its
spec matches, rebuilt when it differs, resumed when interrupted, restarted when its partial
work has other settings; a distilled draft is left as a standard folder over the target's
vocabulary (its training form inside, under ``_training``).

A tiny Llama over SmolLM2's vocabulary stands in for the target, with SmolLM2's tokenizer.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from transformers import AutoModelForCausalLM

from draftalign.book import pipeline, stages
from draftalign.book.profiles import get_profile
from draftalign.data import held_out_split
from draftalign.subvocab import SubVocabDraft

TINY = dict(draft_hidden=16, draft_layers=1, draft_heads=2, draft_intermediate=32, pretrain_texts=40,
            pretrain_block=32, pretrain_eval_blocks=2, pretrain_steps=2, pretrain_batch=2, pretrain_warmup=1,
            distill_per_category=1, distill_max_new_tokens=6, distill_batch=9, distill_topk=4,
            kd_data="generated", kd_target="cached", kd_steps=2, kd_batch=2, kd_warmup=1, kd_max_length=96,
            kd_sub_vocab=2)


@pytest.fixture()
def runs(tmp_path, monkeypatch):
    monkeypatch.setenv("DRAFTALIGN_RUNS", str(tmp_path))
    return tmp_path


@pytest.fixture(scope="module")
def target(tiny_llama):
    model = tiny_llama(vocab_size=49152, hidden_size=16, num_layers=1, eos_token_id=2, max_position_embeddings=256)
    model.draftalign_source = "local:tiny"
    return model


def _no_training(monkeypatch):
    def refuse(*_, **__):
        raise AssertionError("a finished artifact was rebuilt")
    monkeypatch.setattr(stages, "train", refuse)  # every training stage trains through the stage helper
    monkeypatch.setattr(pipeline, "generate_distillation_data", refuse)


def test_pretrained_draft_is_reused_rebuilt_and_carries_a_card(target, tokenizer, runs, monkeypatch):
    P = get_profile("ci", **TINY)
    draft, history, manifest = pipeline.pretrained_draft(target, tokenizer, P, progress=False)
    folder = runs / "ci" / "draft-pretrained"
    assert (folder / "README.md").read_text().startswith("---\nbase_model:")
    assert len(history) == 2 and manifest["spec"]["stage"] == "pretrain"
    with monkeypatch.context() as m:
        _no_training(m)
        again, _, _ = pipeline.pretrained_draft(target, tokenizer, P, progress=False)
    for a, b in zip(draft.parameters(), again.parameters()):
        torch.testing.assert_close(a, b)
    longer = get_profile("ci", **{**TINY, "pretrain_steps": 3})
    with pytest.warns(UserWarning, match="kept as .*draft-pretrained.previous"):
        _, history, manifest = pipeline.pretrained_draft(target, tokenizer, longer, progress=False)
    assert len(history) == 3 and manifest["spec"]["train"]["max_steps"] == 3
    kept = json.loads((runs / "ci" / "draft-pretrained.previous" / "manifest.json").read_text())
    assert kept["spec"]["train"]["max_steps"] == 2  # the finished artifact of the other spec is not destroyed


def test_a_checkpoint_of_other_settings_is_restarted(target, tokenizer, runs):
    P = get_profile("ci", **TINY)
    other = get_profile("ci", **{**TINY, "pretrain_lr": 1e-4, "pretrain_steps": 4})
    from draftalign.train import Batches, train

    draft = pipeline.make_profile_draft(target, other)
    blocks = torch.randint(0, 100, (6, 32))
    train(draft, Batches({"input_ids": blocks}), pipeline.pretrain_config(other)(other.pretrain_steps), runs / "ci" / "draft-pretrained",
          progress=False, stop_after=1)  # an interrupted run of other settings
    _, history, manifest = pipeline.pretrained_draft(target, tokenizer, P, progress=False)
    assert len(history) == 2 and manifest["spec"]["train"]["lr"] == P.pretrain_lr


def test_distillation_data_is_reused_and_rebuilt(target, tokenizer, runs, monkeypatch):
    P = get_profile("ci", **TINY)
    ds = pipeline.distillation_data(target, tokenizer, P, progress=False)
    assert len(ds) == 9
    with monkeypatch.context() as m:
        _no_training(m)
        m.setattr(pipeline, "distill_prompts", lambda P: (_ for _ in ()).throw(AssertionError("prompts loaded")))
        # reused as it is: neither generated again nor its prompts fetched (a hub dataset needs the network)
        assert pipeline.distillation_data(target, tokenizer, P, progress=False)["response_ids"] == ds["response_ids"]
    changed = get_profile("ci", **{**TINY, "distill_max_new_tokens": 3})
    with pytest.warns(UserWarning, match="kept as"):
        shorter = pipeline.distillation_data(target, tokenizer, changed, progress=False)
    assert max(len(r) for r in shorter["response_ids"]) <= 3


def test_distilled_sub_vocabulary_draft_is_left_as_a_full_vocabulary_folder(target, tokenizer, runs, monkeypatch):
    P = get_profile("ci", **TINY)
    draft, history, manifest = pipeline.distilled_draft(target, tokenizer, P, "fkl", progress=False)
    assert isinstance(draft, SubVocabDraft) and len(history) == 2
    folder = runs / "ci" / "draft-fkl"
    assert (folder / pipeline.TRAINING_FORM / "sub_vocab.json").exists()
    exported = AutoModelForCausalLM.from_pretrained(folder)
    assert exported.config.vocab_size == 49152
    ids = torch.randint(0, 49152, (2, 12), generator=torch.Generator().manual_seed(1))
    assert torch.equal(exported(input_ids=ids).logits.argmax(-1), draft(input_ids=ids).logits.argmax(-1))
    text = (folder / "README.md").read_text()
    assert "distilled with fkl" in text and "sub-vocabulary" in text
    assert json.loads((folder / "manifest.json").read_text())["spec"]["loss"] == "fkl"
    with monkeypatch.context() as m:
        _no_training(m)
        again, _, _ = pipeline.distilled_draft(target, tokenizer, P, "fkl", progress=False)
    assert isinstance(again, SubVocabDraft)


def test_held_out_split_is_by_prompt_and_covers_every_category():
    rows = [{"prompt": f"{cat} question {i}", "category": cat, "sample": s}
            for cat in ("math", "code", "open_qa") for i in range(30) for s in range(2)]
    train, held = held_out_split(rows)
    held_prompts = {r["prompt"] for r in held}
    assert not held_prompts & {r["prompt"] for r in train}  # no prompt on both sides
    assert len(held) == 2 * len(held_prompts)  # both samples of a held-out prompt
    assert {r["category"] for r in held} == {"math", "code", "open_qa"}
    assert len(held_prompts) == 3 * round(0.05 * 30)
    assert held_out_split(list(reversed(rows)))[1] != []  # stable: a hash, not the order
    assert {r["prompt"] for r in held_out_split(list(reversed(rows)))[1]} == held_prompts
    one_each = [r for r in rows if r["prompt"].endswith(" 0")]  # one prompt per category
    train, held = held_out_split(one_each)
    assert len({r["prompt"] for r in held}) == 1 and train
    with pytest.raises(ValueError, match="too few prompts"):
        held_out_split(rows[:2])


def test_shipped_pretrained_draft_is_copied_reused_and_never_destroys_a_trained_one(target, tokenizer, runs,
                                                                                     tmp_path, monkeypatch):
    """A profile with ``pretrained_from`` copies the shipped folder (never trains), reuses the
    copy while the shipped weights are unchanged, and sets aside (never deletes) a draft that
    was pretrained in the same folder before."""
    P = get_profile("ci", **TINY)
    trained, _, _ = pipeline.pretrained_draft(target, tokenizer, P, progress=False)  # pretrained here
    folder = runs / "ci" / "draft-pretrained"
    shipped = tmp_path / "repo" / "data" / "drafts" / "shipped"
    other = pipeline.make_profile_draft(target, P)
    other.save_pretrained(shipped)
    tokenizer.save_pretrained(shipped)
    monkeypatch.setattr(pipeline, "repo_root", lambda: tmp_path / "repo")
    with pytest.raises(FileNotFoundError, match="holds no history.csv"):
        pipeline.pretrained_draft(target, tokenizer, get_profile("ci", **TINY, pretrained_from="data/drafts/shipped"),
                                  progress=False)
    (shipped / "history.csv").write_text((folder / "history.csv").read_text())
    monkeypatch.setattr(pipeline, "repo_root", lambda: tmp_path / "repo")
    Q = get_profile("ci", **TINY, pretrained_from="data/drafts/shipped")
    _no_training(monkeypatch)
    with pytest.warns(UserWarning, match="kept as"):
        draft, _, manifest = pipeline.pretrained_draft(target, tokenizer, Q, progress=False)
    assert manifest["spec"]["from"] == "data/drafts/shipped"
    for a, b in zip(draft.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)
    aside = folder.with_name("draft-pretrained.previous")
    assert json.loads((aside / "manifest.json").read_text())["spec"]["stage"] == "pretrain"
    assert "from" not in json.loads((aside / "manifest.json").read_text())["spec"], "the trained draft is kept"
    mtime = (folder / "manifest.json").stat().st_mtime_ns
    pipeline.pretrained_draft(target, tokenizer, Q, progress=False)  # reused: not copied again
    assert (folder / "manifest.json").stat().st_mtime_ns == mtime


def test_colab_profile_distils_on_the_shipped_reference_answers(target, tokenizer, runs):
    """The ``colab`` profile's Chapter 2 and 4 paths at tiny budgets on the CPU: the shipped
    pretraining stage is copied (no pretraining, no hub corpus), and each loss distils on the
    shipped packed reference answers with the target online (no hub prompts, no Chapter 3)."""
    P = get_profile("colab", kd_steps=2, kd_batch=2, kd_warmup=1, kd_max_length=96)
    assert P.kd_sub_vocab is None and P.kd_target == "online"
    data, folder = pipeline.kd_dataset(target, tokenizer, P, progress=False)
    provenance = json.loads((folder / "provenance.json").read_text())
    assert len(data) == provenance["rows"] and {"prompt_ids", "response_ids", "kind"} <= set(data.column_names)
    assert pipeline.kd_dataset(target, tokenizer, P, progress=False)[0] is data  # read once per process
    draft, history, manifest = pipeline.distilled_draft(target, tokenizer, P, "tvd++", progress=False)
    assert len(history) == 2 and manifest["spec"]["data_rows"] == provenance["rows"]
    assert manifest["spec"]["base"]["from"] == P.pretrained_from
    assert draft.config.hidden_size == P.draft_hidden and draft.config.num_hidden_layers == P.draft_layers
    shipped = AutoModelForCausalLM.from_pretrained(runs / "colab" / "draft-tvd++")
    assert shipped.config.vocab_size == 49152


def test_kd_rows_draws_the_same_sample_every_run(target, tokenizer, runs):
    """``kd_rows``: that many answers of the set, the same ones for the same seed, other ones
    for another seed; the distilled draft's spec records the sample."""
    P = get_profile("colab", kd_rows=40, kd_steps=1, kd_batch=2, kd_warmup=1, kd_max_length=96)
    data, _ = pipeline.kd_dataset(target, tokenizer, P, progress=False)
    again, _ = pipeline.kd_dataset(target, tokenizer, P, progress=False)
    other, _ = pipeline.kd_dataset(target, tokenizer, replace(P, seed=1), progress=False)
    assert len(data) == 40 and data["response_ids"] == again["response_ids"] != other["response_ids"]
    assert len({r["category"] for r in data}) > 1  # drawn across the set, not its first rows
    _, _, manifest = pipeline.distilled_draft(target, tokenizer, P, "fkl", progress=False)
    assert manifest["spec"]["data_rows"] == 40 and manifest["spec"]["data_sample"] == {"rows": 40, "seed": 0}
    with pytest.raises(ValueError, match="kd_rows"):
        pipeline.kd_dataset(target, tokenizer, replace(P, kd_rows=0), progress=False)


def test_gpu_profile_stages_run_at_tiny_sizes_with_local_stand_ins_for_the_hub(target, tokenizer, runs,
                                                                                monkeypatch):
    """The ``gpu`` profile's own paths (web corpus, hub prompts, full-vocabulary drafts, the
    target online) at tiny budgets on the CPU: the streamed FineWeb-Edu texts and the Dolly
    prompts are replaced by local stand-ins, everything else is the profile's code."""
    from draftalign.data import load_prompts

    asked = {}

    def web_stand_in(source, *, n_texts=None):
        asked["corpus"] = (source, n_texts)
        return [f"Document {i}: rivers carry water from the hills to the sea, and towns grow on their banks."
                for i in range(60)]

    def hub_stand_in(name, *, limit=None, seed=0, **_):
        asked["prompts"] = (name, limit)
        return load_prompts("distill", limit_per_category=1)[:limit]

    monkeypatch.setattr(pipeline, "pretraining_texts", web_stand_in)
    monkeypatch.setattr(pipeline, "load_hub_prompts", hub_stand_in)
    P = get_profile("gpu", draft_hidden=16, draft_layers=1, draft_heads=2, draft_intermediate=32,
                    pretrain_texts=60, pretrain_block=32, pretrain_eval_blocks=2, pretrain_steps=2,
                    pretrain_batch=2, pretrain_warmup=1, distill_per_category=1, distill_max_new_tokens=6,
                    distill_batch=9, kd_steps=2, kd_batch=2, kd_warmup=1, kd_max_length=96)
    assert (P.pretrain_corpus, P.kd_target, P.kd_sub_vocab) == ("web", "online", None)
    _, history, _ = pipeline.pretrained_draft(target, tokenizer, P, progress=False)
    assert asked["corpus"] == ("web", 60) and len(history) == 2
    data = pipeline.distillation_data(target, tokenizer, P, progress=False)
    # hub prompts are decontaminated too: two of the stand-in's nine (d0115, d0296) share a
    # run of 8 words with evaluation prompts and are left out
    assert asked["prompts"][0] == P.distill_source and len(data) == asked["prompts"][1] - 2
    draft, history, manifest = pipeline.distilled_draft(target, tokenizer, P, "tvd++", progress=False)
    assert len(history) == 2 and manifest["spec"]["data"] == "generated"
    assert not isinstance(draft, SubVocabDraft) and draft.config.vocab_size == 49152
