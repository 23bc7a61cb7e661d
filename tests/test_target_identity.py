"""Which target an artifact belongs to: the identity recorded in specs and cards, and the
warning when a draft made against one target's weights is loaded for another's."""

from __future__ import annotations

import json
import warnings

import pytest

from draftalign.drafts import load_draft_for, recorded_target
from draftalign.models import same_target, target_id, target_identity


@pytest.fixture()
def saved_target(tiny_llama, tmp_path):
    model = tiny_llama(vocab_size=32, seed=0)
    model.save_pretrained(tmp_path / "target")
    model.draftalign_source = f"local:{tmp_path / 'target'}"
    return model


def test_a_local_target_is_identified_by_its_weights(saved_target, tmp_path, tiny_llama):
    ident = target_identity(saved_target)
    assert ident["id"] == target_id(saved_target) and len(ident["weights_sha256"]) == 64
    assert target_identity(saved_target) == ident  # kept in the folder, not hashed again
    assert json.loads((tmp_path / "target" / "draftalign_provenance.json").read_text())["weights_sha256"] == \
        ident["weights_sha256"]
    other = tiny_llama(vocab_size=32, seed=1)
    other.save_pretrained(tmp_path / "other")
    other.draftalign_source = f"local:{tmp_path / 'target'}"  # same id, other weights: told apart by digest
    (tmp_path / "other" / "model.safetensors").replace(tmp_path / "target" / "model.safetensors")
    assert target_identity(other)["weights_sha256"] != ident["weights_sha256"]
    assert same_target(ident, other) is False and same_target(None, other) is None
    assert same_target(ident["id"], other) is True  # an older record (an id string) is compared by id


def test_a_draft_made_against_other_weights_is_loaded_with_a_warning(saved_target, tmp_path, tiny_llama):
    draft = tiny_llama(vocab_size=32, seed=2)
    for name, recorded in (("mine", target_identity(saved_target)),
                           ("theirs", {"id": "hub:org/other-chat-model", "revision": "abc", "weights_sha256": None})):
        draft.save_pretrained(tmp_path / name)
        (tmp_path / name / "manifest.json").write_text(json.dumps({"spec": {"stage": "distill", "target": recorded}}))
        assert recorded_target(tmp_path / name) == recorded
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_draft_for(tmp_path / "mine", saved_target)
    with pytest.warns(UserWarning, match="trained against hub:org/other-chat-model; the target here is local:"):
        load_draft_for(tmp_path / "theirs", saved_target)
