"""On-policy distillation: the draft writes the answers, the target scores them.

Reads a draft, the target and prompts (templated ids); writes, through
:func:`draftalign.train.train`, checkpoints and the trained draft like
:func:`draftalign.distill.distill`. The other half of DistillSpec (Zhou et al. 2023) and
GKD (Agarwal et al. 2024): a draft trained only on the target's answers meets, when it
drafts, prefixes of its own that it never saw in training; trained on its own samples, it
learns where it actually goes wrong. Each step the current draft samples an answer to every
prompt of the batch (at ``temperature``, seeded by the step, so a resumed run samples what
an uninterrupted one would), then the loss compares the draft with the target, computed
online, at every answer position. The loss study (``draftalign study``) compares it
with the target's own answers at the same budget.
"""

from __future__ import annotations

import pandas as pd
import torch
from transformers import DynamicCache

from .chat import distill_example
from .distill import train_kd
from .models import cache_kwargs, eos_ids
from .train import Batches, TrainConfig

__all__ = ["sample_answers", "OnPolicyBatches", "distill_on_policy"]


@torch.inference_mode()
def sample_answers(model, prompts: list[list[int]], *, max_new_tokens: int, temperature: float = 1.0,
                   seed: int = 0, pad_id: int = 0) -> list[list[int]]:
    """One sampled answer per prompt (ids of a templated prompt), in one left-padded batch
    with a KV cache; an answer ends with the model's EOS or at ``max_new_tokens``.
    ``temperature = 0`` is greedy. The draws come from a CPU generator seeded with ``seed``."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("need at least one prompt, and no empty prompt")
    if max_new_tokens < 1 or temperature < 0:
        raise ValueError(f"need max_new_tokens >= 1 and temperature >= 0, got {max_new_tokens}, {temperature}")
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for j, p in enumerate(prompts):  # left padding: every prompt ends at the same column
        ids[j, width - len(p):] = torch.as_tensor(p)
        mask[j, width - len(p):] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(1) - 1).clamp(min=0)  # [B, T]: the padded rows' positions start at 0
    cache = DynamicCache(config=model.config)
    eos = eos_ids(model)
    gen = torch.Generator().manual_seed(int(seed))
    answers: list[list[int]] = [[] for _ in prompts]
    done = torch.zeros(len(prompts), dtype=torch.bool)
    x = ids
    for _ in range(max_new_tokens):
        logits = model(input_ids=x, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1,
                       **cache_kwargs(model, cache)).logits[:, -1].float().cpu()  # [B, V]
        if temperature == 0:
            nxt = logits.argmax(-1)
        else:
            nxt = torch.multinomial((logits / temperature).softmax(-1), 1, generator=gen)[:, 0]
        for j in range(len(prompts)):
            if not done[j]:
                answers[j].append(int(nxt[j]))
                done[j] = int(nxt[j]) in eos
        if bool(done.all()):
            break
        x = nxt[:, None].to(device)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        positions = positions[:, -1:] + 1
    return answers


class OnPolicyBatches(Batches):
    """Batches of prompts whose answers ``draft`` samples when the batch is drawn.

    The prompt order is :class:`~draftalign.train.Batches`' (seeded, one permutation per
    pass); the answers of the batch at stream position ``position`` are sampled with seed
    ``(seed, position)`` by the draft as it is at that moment (in eval mode, no gradient).
    """

    def __init__(self, prompts: list[list[int]], draft, *, max_new_tokens: int, temperature: float = 1.0,
                 max_length: int | None = None, pad_id: int = 0, seed: int = 0):
        super().__init__([{"prompt_ids": list(p)} for p in prompts], pad_id=pad_id, seed=seed)
        self.draft, self.max_new_tokens, self.temperature = draft, max_new_tokens, temperature
        self.max_length = max_length

    def batch(self, position: int, size: int) -> dict:
        idx = self.indices(position, size)
        prompts = [self.examples[i]["prompt_ids"] for i in idx]
        was_training = self.draft.training
        self.draft.eval()
        answers = sample_answers(self.draft, prompts, max_new_tokens=self.max_new_tokens,
                                 temperature=self.temperature, seed=self.seed * 1_000_003 + position,
                                 pad_id=self.pad_id)
        self.draft.train(was_training)
        rows = []
        for p, a in zip(prompts, answers):
            ex = distill_example(p, a)
            rows.append({k: v[:self.max_length] for k, v in ex.items()} if self.max_length else ex)
        with torch.device("cpu"):
            return Batches(rows, pad_id=self.pad_id)._collate(list(range(len(rows))))


def distill_on_policy(draft, target, prompts: list[list[int]], out_dir, *, loss: str, cfg: TrainConfig,
                      max_new_tokens: int = 192, temperature: float = 1.0, max_length: int | None = None,
                      eval_dataset=None, eval_topk: dict | None = None, loss_options: dict | None = None,
                      pad_id: int = 0, resume: bool = True, stop_after: int | None = None,
                      progress: bool = True) -> pd.DataFrame:
    """Fine-tune ``draft`` in place with the KD loss ``loss`` on answers it writes itself
    (:class:`OnPolicyBatches`), the target computed online at every answer position; returns
    the training history. ``prompts``: templated prompt ids. The held-out curve
    (``eval_dataset``: the target's own answers, optionally with ``eval_topk``), checkpoints,
    resume and the final folder as in :func:`draftalign.distill.distill`."""
    if not prompts:
        raise ValueError("no prompts to answer")
    data = OnPolicyBatches(prompts, draft, max_new_tokens=max_new_tokens, temperature=temperature,
                           max_length=max_length, pad_id=pad_id, seed=cfg.seed)
    return train_kd(draft, target, data, out_dir, loss=loss, cfg=cfg, max_length=max_length,
                    eval_dataset=eval_dataset, eval_topk=eval_topk, loss_options=loss_options, pad_id=pad_id,
                    resume=resume, stop_after=stop_after, progress=progress, desc=f"on-policy ({loss})")
