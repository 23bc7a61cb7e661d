"""Chat formatting and loss masks with SmolLM2's real tokenizer (ChatML template).

``encode_chat_example`` is checked against a golden fixture (``fixtures/smollm2_chat_golden.json``,
inspected token by token when it was written) and, independently of the fixture, by
its meaning: the masked tokens decode to the response plus ``<|im_end|>``, and the
unmasked prefix is exactly the generation prompt of ``chat_input_ids``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from draftalign.chat import chat_input_ids, distill_example, encode_chat_example, generation_prefix_ids

GOLDEN = Path(__file__).parent / "fixtures" / "smollm2_chat_golden.json"
IM_START, IM_END = 1, 2  # SmolLM2's <|im_start|> and <|im_end|> (= eos)
CASES = json.loads(GOLDEN.read_text(encoding="utf-8"))["cases"]


def test_golden_fixture_is_what_it_claims():
    """The fixture itself: three cases, one with a system prompt, one multi-line answer,
    masks 0/1 of the ids' length (guards against a hand-edited or truncated fixture)."""
    assert [c["name"] for c in CASES] == ["plain", "system_prompt", "multiline"]
    assert sum(c["system"] is not None for c in CASES) == 1
    assert any("\n" in c["response"] for c in CASES)
    for c in CASES:
        assert len(c["input_ids"]) == len(c["loss_mask"]) > 10
        assert set(c["loss_mask"]) == {0, 1}
        assert c["input_ids"][-1] == IM_END and c["loss_mask"][-1] == 1


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_encode_chat_example_matches_golden(tokenizer, case):
    ex = encode_chat_example(tokenizer, case["user"], case["response"], system=case["system"])
    assert len(ex["input_ids"]) == len(case["input_ids"])
    for pos, (got, want) in enumerate(zip(ex["input_ids"], case["input_ids"])):
        assert got == want, f"input_ids[{pos}]: {got} != {want}"
    for pos, (got, want) in enumerate(zip(ex["loss_mask"], case["loss_mask"])):
        assert got == want, f"loss_mask[{pos}]: {got} != {want}"


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_encode_chat_example_semantics(tokenizer, case):
    """Independently of the fixture: the mask is one contiguous run at the end; what it
    covers decodes to the response plus <|im_end|>; what it leaves out is exactly the
    prompt with the assistant turn opened (system/user turns and the assistant header)."""
    user, response, system = case["user"], case["response"], case["system"]
    ex = encode_chat_example(tokenizer, user, response, system=system)
    ids, mask = ex["input_ids"], ex["loss_mask"]
    assert len(ids) == len(mask)
    first = mask.index(1)
    assert mask == [0] * first + [1] * (len(mask) - first)  # contiguous, to the end

    prompt = chat_input_ids(tokenizer, user, system=system)[0].tolist()
    assert ids[:first] == prompt
    assert prompt == generation_prefix_ids(tokenizer, user, system=system)
    # the assistant header is the last thing of the prompt, and is not masked in
    assert tokenizer.decode(prompt).endswith("<|im_start|>assistant\n")
    assert prompt[-4] == IM_START and ids[first - 4] == IM_START

    masked = ids[first:]
    assert tokenizer.decode(masked) == response + "<|im_end|>"
    assert masked.count(IM_END) == 1 and masked[-1] == IM_END
    # the system turn (given or the template's default) and the user turn are unmasked
    unmasked_text = tokenizer.decode(ids[:first])
    assert user in unmasked_text and response not in unmasked_text
    if system is not None:
        assert unmasked_text.startswith(f"<|im_start|>system\n{system}<|im_end|>")
    else:
        assert unmasked_text.startswith("<|im_start|>system\n")  # SmolLM2's default system turn
    # nothing the template renders after <|im_end|> (its newline) is kept
    assert ids[-1] == IM_END


def test_chat_input_ids_shape_and_device(tokenizer):
    ids = chat_input_ids(tokenizer, "Hello there", device="cpu")
    assert isinstance(ids, torch.Tensor) and ids.dim() == 2 and ids.shape[0] == 1
    assert ids.dtype == torch.long
    text = tokenizer.decode(ids[0])
    assert text.endswith("<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n")
    with_system = tokenizer.decode(chat_input_ids(tokenizer, "Hello there", system="Be brief.")[0])
    assert with_system.startswith("<|im_start|>system\nBe brief.<|im_end|>\n")
    assert "SmolLM" not in with_system  # the given system turn replaces the default one


@pytest.mark.parametrize("user", ["", "   ", "\n\t", None, 3])
def test_chat_input_ids_rejects_empty_user(tokenizer, user):
    with pytest.raises(ValueError, match="non-empty"):
        chat_input_ids(tokenizer, user)


def test_distill_example_masks_only_the_response():
    ex = distill_example([5, 6, 7], [8, 9, IM_END])
    assert ex == {"input_ids": [5, 6, 7, 8, 9, IM_END], "loss_mask": [0, 0, 0, 1, 1, 1]}
    # a truncated response (no end-of-turn token) is kept as is
    ex = distill_example((1, 2), (4,))
    assert ex == {"input_ids": [1, 2, 4], "loss_mask": [0, 0, 1]}
    assert isinstance(ex["input_ids"], list)


def test_distill_example_with_real_prompt(tokenizer):
    prompt = generation_prefix_ids(tokenizer, "Say hi.")
    response = tokenizer("Hi!", add_special_tokens=False)["input_ids"] + [IM_END]
    ex = distill_example(prompt, response)
    assert len(ex["input_ids"]) == len(ex["loss_mask"]) == len(prompt) + len(response)
    masked = [t for t, m in zip(ex["input_ids"], ex["loss_mask"]) if m]
    assert tokenizer.decode(masked) == "Hi!<|im_end|>"
    # same layout as encode_chat_example for the same conversation
    assert ex == encode_chat_example(tokenizer, "Say hi.", "Hi!")


@pytest.mark.parametrize("empty", [[], ()])
def test_distill_example_rejects_empty_response(empty):
    with pytest.raises(ValueError, match="empty response"):
        distill_example([1, 2, 3], empty)
