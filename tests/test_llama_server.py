"""llama.cpp itself (skipped where ``make llama-cpp`` has not built it): the exported GGUF
draft decodes as transformers does, drafting in ``llama-server -md`` leaves the target's
output unchanged, and distillation data served by llama-server reads back as the
in-process generator's rows."""

from __future__ import annotations

import pytest
import torch

from draftalign.llamacpp import binaries, bench_servers, complete, serve

try:
    binaries()
except FileNotFoundError:
    pytest.skip("llama.cpp is not built (make llama-cpp)", allow_module_level=True)

from draftalign.drafts import load_draft  # noqa: E402
from draftalign.gguf_export import export_gguf  # noqa: E402
from draftalign.models import offline_target_gguf  # noqa: E402

SHIPPED = "data/drafts/smollm2-135m-instruct-drafter"
PROMPTS = ["Name three rivers in Europe.", "Why is the sky blue?", "Write a haiku about tea."]


@pytest.fixture(scope="module")
def draft_gguf(tmp_path_factory):
    return export_gguf(SHIPPED, tmp_path_factory.mktemp("gguf") / "draft-f32.gguf", dtype="f32",
                       tokenizer_pre="smollm")


def _greedy(model, ids, n):
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, min_new_tokens=n,
                             pad_token_id=0)
    return out[0, len(ids):].tolist()


def test_gguf_draft_decodes_as_transformers(draft_gguf, tokenizer):
    from draftalign.chat import chat_input_ids

    draft = load_draft(SHIPPED).float().eval()
    with serve(draft_gguf) as url:
        for text in PROMPTS:
            ids = chat_input_ids(tokenizer, text)[0].tolist()
            served = complete(url, ids, max_new_tokens=24)["tokens"]
            mine = _greedy(draft, ids, 24)[: len(served)]
            # f32 weights on both sides; summation order differs, so a near-tie may flip late
            agree = next((i for i, (a, b) in enumerate(zip(served, mine)) if a != b), len(served))
            assert agree >= 12, (text, served, mine)


def test_drafting_leaves_the_target_output_unchanged(draft_gguf, tokenizer):
    from draftalign.chat import chat_input_ids

    prompts = [chat_input_ids(tokenizer, t)[0].tolist() for t in PROMPTS[:2]]
    record = bench_servers(offline_target_gguf(), draft_gguf, prompts, gammas=(2,), rounds=1,
                           max_new_tokens=32, progress=False)
    rows = {r["method"]: r for r in record["rows"]}
    assert rows["gamma=2"]["same_tokens_as_plain"] == len(prompts)
    assert 0 < rows["gamma=2"]["acceptance"] <= 1


def test_llama_server_answers_train_a_draft(tmp_path, tokenizer):
    from draftalign.answers import load_topk, read_distillation_rows
    from draftalign.serving import generate_from_server

    with serve(offline_target_gguf(), slots=2) as url:
        rows = generate_from_server(url, tokenizer, PROMPTS, tmp_path / "answers", max_new_tokens=16,
                                    temperature=0.0, top_p=1.0, batch_size=2, seed=0, topk=4, concurrency=2,
                                    progress=False)
    assert len(rows) == len(PROMPTS) and all(r["response_ids"] for r in rows)
    assert read_distillation_rows(tmp_path / "answers") == rows
    topk = load_topk(tmp_path / "answers")
    for row in rows:  # the served top-4 at every answer position, the answer's own token first (greedy)
        ids, logprobs = topk[row["index"]]
        assert ids.shape == (len(row["response_ids"]), 4)
        assert ids[:, 0].tolist() == row["response_ids"]
