"""Chat formatting: user messages in the target's own chat template.

Reads a tokenizer (its chat template); writes nothing. Every prompt the book sends to a
target goes through :func:`chat_input_ids`, so the template is the model's own.
"""

from __future__ import annotations

import torch

__all__ = ["chat_input_ids", "generation_prefix_ids", "distill_example", "encode_chat_example", "DEMO_PROMPTS"]

# A few everyday requests, used by Chapter 1 and the benchmark.
DEMO_PROMPTS = [
    "Explain in three sentences why the sky is blue.",
    "Write a short poem about a lighthouse keeper.",
    "List five tips for learning a new language.",
    "What is the difference between a list and a tuple in Python?",
    "Summarize the plot of Romeo and Juliet in two sentences.",
    "Give me a recipe for a simple tomato soup.",
    "How do vaccines train the immune system?",
    "Suggest three names for a bakery that sells bread made with local grain.",
]


def chat_input_ids(tokenizer, user: str, *, system: str | None = None, device=None) -> torch.Tensor:
    """``[1, T]`` ids of one user turn (and optional system turn) in the tokenizer's chat
    template, ending with the assistant's turn opened, ready for generation. On ``device``,
    else on the CPU (whatever torch's default device is)."""
    if not isinstance(user, str) or not user.strip():
        raise ValueError("the user message must be a non-empty string")
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    with torch.device("cpu"):
        encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    # transformers 5 returns a BatchEncoding; 4.x returned the tensor itself
    ids = encoded["input_ids"] if not isinstance(encoded, torch.Tensor) else encoded
    return ids.to(device) if device is not None else ids


def generation_prefix_ids(tokenizer, user: str, *, system: str | None = None) -> list[int]:
    """The ids of :func:`chat_input_ids` as a plain list."""
    return chat_input_ids(tokenizer, user, system=system)[0].tolist()


def distill_example(prompt_ids: list[int], response_ids: list[int]) -> dict:
    """A training example from ids the target itself produced: the prompt in its chat
    template, then its response (ending with the end-of-turn token when it finished).
    ``loss_mask`` is 1 exactly on the response tokens: the draft learns to predict what
    the target writes, never the prompt."""
    if not response_ids:
        raise ValueError("empty response")
    return {"input_ids": list(prompt_ids) + list(response_ids),
            "loss_mask": [0] * len(prompt_ids) + [1] * len(response_ids)}


def encode_chat_example(tokenizer, user: str, response: str, *, system: str | None = None) -> dict:
    """A training example from text (e.g. a public dataset's answer), through the
    tokenizer's own chat template. ``loss_mask`` is 1 on the assistant's content and its
    end-of-turn token, and 0 on everything else (system and user turns, role headers, and
    what the template adds after the end of turn).

    Raises ``ValueError`` if the template does not render the prompt as a prefix of the
    whole conversation (then masks by position would be wrong).
    """
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    prompt = generation_prefix_ids(tokenizer, user, system=system)
    full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": response}],
                                         return_tensors="pt")
    full = (full["input_ids"] if not isinstance(full, torch.Tensor) else full)[0].tolist()
    if full[: len(prompt)] != prompt:
        raise ValueError("the chat template does not render the prompt as a prefix of the conversation")
    end_ids = {int(e) for e in _as_list(tokenizer.eos_token_id)}
    end = next((i for i in range(len(prompt), len(full)) if full[i] in end_ids), None)
    if end is None:
        raise ValueError("no end-of-turn token after the assistant's response")
    mask = [0] * len(full)
    mask[len(prompt): end + 1] = [1] * (end + 1 - len(prompt))
    return {"input_ids": full[: end + 1], "loss_mask": mask[: end + 1]}


def _as_list(x) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]
