"""Chat formatting: user messages in the target's own chat template.

Reads a tokenizer (its chat template); writes nothing. Every prompt the book sends to a
target goes through :func:`chat_input_ids`, so the template is the model's own.
"""

from __future__ import annotations

import torch

__all__ = ["chat_input_ids", "DEMO_PROMPTS"]

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
    template, ending with the assistant's turn opened, ready for generation."""
    if not isinstance(user, str) or not user.strip():
        raise ValueError("the user message must be a non-empty string")
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    # transformers 5 returns a BatchEncoding; 4.x returned the tensor itself
    ids = encoded["input_ids"] if not isinstance(encoded, torch.Tensor) else encoded
    return ids.to(device) if device is not None else ids
