"""Faults a user meets, each injected: a clear error naming the file and what to do, or a
repair with a warning, and nothing lost.

- distillation records: a torn last line saved with its newline (repaired), a garbage line
  in the middle (refused, file and line named), ``settings.json`` deleted before a rerun
  with other settings (refused);
- training checkpoints: truncated or zero-filled ``state.pt`` (refused, or the previous
  copy used), a crash between the two renames of a save (resumed from the newest copy, to
  the same weights as an uninterrupted run);
- draft folders: no ``config.json``, truncated weights, a sub-vocabulary folder without its
  ``sub_vocab.json``; a target path that does not exist or is not a model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from draftalign.artifacts import CorruptFile, SettingsMismatch
from draftalign.answers import generate_distillation_rows, load_distillation_data, read_distillation_rows
from draftalign.models import load_target
from draftalign.subvocab import sub_vocab_draft, SUB_VOCAB_FILE
from draftalign.drafts import load_draft
from draftalign.train import Batches, train, TrainConfig

PROMPTS = ["Hi there", "Name a colour.", "Count to three.", "Say yes.", "What is two plus two?"]
KW = dict(max_new_tokens=4, temperature=0.0, top_p=1.0, batch_size=2, seed=0, progress=False)


@pytest.fixture(scope="module")
def target(tiny_llama):
    return tiny_llama(vocab_size=49152, hidden_size=16, num_layers=1, eos_token_id=2, max_position_embeddings=128)


@pytest.fixture(scope="module")
def answered(target, tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("answers")
    return generate_distillation_rows(target, tokenizer, PROMPTS, folder, **KW), folder


def _copy(folder, tmp_path):
    dest = tmp_path / "copy"
    shutil.copytree(folder, dest)
    return dest


# -- distillation records -----------------------------------------------------------------

def test_torn_last_line_saved_with_a_newline_is_repaired(target, tokenizer, answered, tmp_path):
    rows, folder = answered
    folder = _copy(folder, tmp_path)
    path = folder / "records.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1] + [lines[-1][:25]]) + "\n")  # an editor saved the torn line
    with pytest.warns(UserWarning, match="torn last line"):
        again = generate_distillation_rows(target, tokenizer, PROMPTS, folder, **KW)
    assert again == rows


@pytest.mark.parametrize("reader", ["generate", "load"])
def test_garbage_line_in_the_middle_names_file_and_line(target, tokenizer, answered, tmp_path, reader):
    _, folder = answered
    folder = _copy(folder, tmp_path)
    path = folder / "records.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:2] + ["<<<<<<< merge conflict"] + lines[2:]) + "\n")
    with pytest.raises(CorruptFile, match=r"records.jsonl, line 3 is not a record.*Delete that line"):
        if reader == "generate":
            generate_distillation_rows(target, tokenizer, PROMPTS, folder, **KW)
        else:
            load_distillation_data(folder)
    assert len(path.read_text().splitlines()) == len(lines) + 1  # nothing was cut


def test_deleted_settings_with_other_settings_are_refused(target, tokenizer, answered, tmp_path):
    _, folder = answered
    folder = _copy(folder, tmp_path)
    (folder / "settings.json").unlink()
    with pytest.raises(SettingsMismatch, match="no settings.json"):
        generate_distillation_rows(target, tokenizer, PROMPTS, folder, **{**KW, "temperature": 0.7})
    assert not (folder / "settings.json").exists()
    assert len(read_distillation_rows(folder)) == len(PROMPTS)  # the answers are still there


# -- training checkpoints -----------------------------------------------------------------

def _data():
    gen = torch.Generator().manual_seed(0)
    return Batches({"input_ids": torch.randint(0, 32, (20, 10), generator=gen)}, seed=2)


CFG = TrainConfig(max_steps=6, batch_size=4, lr=1e-2, warmup_steps=1, checkpoint_every=2)


def _trained(tiny_llama, folder, stop_after=None):
    model = tiny_llama(vocab_size=32, seed=4)
    train(model, _data(), CFG, folder, progress=False, stop_after=stop_after)
    return model


@pytest.mark.parametrize("damage", ["truncated", "zero-filled"])
def test_unreadable_state_is_refused_with_the_file_named(tiny_llama, tmp_path, damage):
    _trained(tiny_llama, tmp_path, stop_after=4)
    shutil.rmtree(tmp_path / "checkpoint.old")  # no previous copy to fall back on
    state = tmp_path / "checkpoint" / "state.pt"
    size = state.stat().st_size
    state.write_bytes(state.read_bytes()[: size // 3] if damage == "truncated" else bytes(size))
    with pytest.raises(CorruptFile, match=r"checkpoint/state.pt.*Delete .*checkpoint"):
        _trained(tiny_llama, tmp_path)


def test_unreadable_state_falls_back_to_the_previous_copy(tiny_llama, tmp_path):
    """A save keeps the previous checkpoint beside the new one until the next save: when the
    new one is torn (a disconnect before a synced drive had it whole), training resumes from
    the previous one, not from step 0."""
    whole = _trained(tiny_llama, tmp_path / "whole")
    _trained(tiny_llama, tmp_path / "cut", stop_after=2)
    ckpt = tmp_path / "cut" / "checkpoint"
    _trained(tiny_llama, tmp_path / "cut", stop_after=2)  # now at step 4 ...
    assert torch.load(ckpt.with_name("checkpoint.old") / "state.pt", weights_only=False)["step"] == 2
    (ckpt / "state.pt").write_bytes(b"")  # ... whose state is lost, with step 2's copy beside it
    with pytest.warns(UserWarning, match="resumes from .*checkpoint.old"):
        resumed = _trained(tiny_llama, tmp_path / "cut")
    for a, b in zip(whole.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("left", ["tmp and old", "old only"])
def test_crash_between_the_two_renames_resumes_the_newest_copy(tiny_llama, tmp_path, left):
    whole = _trained(tiny_llama, tmp_path / "whole")
    run = tmp_path / "cut"
    _trained(tiny_llama, run, stop_after=2)
    ckpt = run / "checkpoint"
    _trained(tiny_llama, run, stop_after=2)  # step 4 in checkpoint/, step 2 kept as checkpoint.old
    # the crash: checkpoint/ was renamed to .old (step 2), the new copy (step 4) is still .tmp
    ckpt.rename(run / "checkpoint.tmp")
    if left == "old only":  # the crash came before the new copy was complete
        (run / "checkpoint.tmp" / "complete").unlink()
    with pytest.warns(UserWarning, match="resumes from"):
        resumed = _trained(tiny_llama, run)
    assert torch.load(run / "checkpoint.old" / "state.pt", weights_only=False)["step"] < 6  # an earlier, whole copy
    hist = json.loads(json.dumps(pd_rows(run)))
    assert [r["step"] for r in hist] == list(range(1, 7))
    for a, b in zip(whole.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b)


def pd_rows(run: Path) -> list[dict]:
    import pandas as pd

    return pd.read_csv(run / "history.csv").to_dict("records")


# -- draft folders and targets ------------------------------------------------------------

@pytest.fixture()
def saved_draft(tiny_llama, tmp_path):
    draft = tiny_llama(vocab_size=40, seed=3)
    draft.save_pretrained(tmp_path / "draft")
    return tmp_path / "draft"


def test_draft_folder_without_config_is_named(saved_draft):
    (saved_draft / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_draft(saved_draft)
    with pytest.raises(FileNotFoundError, match="no draft folder"):
        load_draft(saved_draft.parent / "nowhere")


def test_truncated_weights_name_the_folder_and_file(saved_draft):
    weights = saved_draft / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CorruptFile, match=r"model.safetensors.*truncated"):
        load_draft(saved_draft)


def test_sub_vocabulary_folder_without_its_map_is_refused(tiny_llama, tmp_path):
    draft = tiny_llama(vocab_size=40, seed=3)
    sub = sub_vocab_draft(draft, torch.tensor([1, 2, 3, 9, 20]))
    sub.save_pretrained(tmp_path / "sub")
    assert load_draft(tmp_path / "sub", vocab_size=40).full_vocab_size == 40
    (tmp_path / "sub" / SUB_VOCAB_FILE).unlink()
    with pytest.raises(ValueError, match="over 6 ids.*over 40.*sub_vocab.json is missing"):
        load_draft(tmp_path / "sub", vocab_size=40)


def test_target_paths_that_are_not_models(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        load_target(str(tmp_path / "no" / "such" / "folder"))
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(FileNotFoundError, match="holds no config.json"):
        load_target(str(tmp_path))
