"""One training loop for the draft: pretraining (Chapter 2) and distillation (Chapter 4).

Reads a model, a :class:`Batches` source and a loss function; writes checkpoints to
``out_dir/checkpoint/`` (model, optimizer, scheduler, step, RNG states, history), and at
the end the trained draft as a standard Hugging Face folder ``out_dir/`` that
``AutoModelForCausalLM.from_pretrained`` loads.

Resume is exact: the data order is a pure function of (seed, step), and the checkpoint
holds everything else that changes during training, so a run killed at any point and
started again with the same arguments ends with the same weights as one that never
stopped (from the last checkpoint on).
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.std import tqdm

from .distributed import for_run

__all__ = ["TrainConfig", "Batches", "train", "lm_loss", "lr_at", "held_out_stats", "history_of", "steps_for_budget",
           "autocast_dtype"]


@dataclass(frozen=True)
class TrainConfig:
    max_steps: int
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 20
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    eval_every: int = 50
    eval_batches: int = 4
    checkpoint_every: int = 50
    seed: int = 0
    autocast: str = "auto"  # "auto" (the device's native 16-bit type, none on CPU), "bf16", "fp16" or "off"

    @classmethod
    def for_steps(cls, steps: int, *, batch_size: int, lr: float, warmup: int, evals: int = 10,
                  checkpoints: int = 10, **fields) -> "TrainConfig":
        """A config for a budget of ``steps`` optimizer steps, every cadence scaled to it: the
        warmup is ``warmup`` steps (at most the run); ``evals`` held-out evaluations and
        ``checkpoints`` checkpoints over the run (at least one step apart).
        The one constructor every stage (book, reference run, command line) builds its
        config with; ``fields`` sets the rest (``seed``, ``eval_batches``, ``autocast`` ...)."""
        steps = int(steps)
        if steps < 1 or evals < 1 or checkpoints < 1:
            raise ValueError(f"need steps, evals and checkpoints >= 1, got {steps}, {evals}, {checkpoints}")
        return cls(max_steps=steps, batch_size=batch_size, lr=lr, warmup_steps=max(1, min(int(warmup), steps)),
                   eval_every=max(1, steps // evals), checkpoint_every=max(1, steps // checkpoints), **fields)

    def __post_init__(self):
        if self.max_steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("max_steps, batch_size and grad_accum must be >= 1")
        if self.autocast not in ("auto", "bf16", "fp16", "off"):
            raise ValueError(f"autocast must be 'auto', 'bf16', 'fp16' or 'off', got {self.autocast!r}")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to ``lr``, then cosine decay to ``lr * min_lr_ratio`` at ``max_steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


class Batches:
    """Batches of examples in a seeded order that depends only on (seed, step).

    ``examples``: a dict of equal-length tensors (``input_ids`` ``[N, L]`` and optional
    ``loss_mask`` ``[N, L]`` for packed blocks) or a list of dicts of 1-D tensors
    (variable-length examples, right-padded per batch with ``pad_id``, the mask 0 there;
    any other key holds per-token rows, concatenated across the batch in row order).
    Each pass over the data ("epoch") uses a fresh permutation.
    """

    def __init__(self, examples, *, pad_id: int = 0, seed: int = 0):
        if isinstance(examples, dict):
            n = {len(v) for v in examples.values()}
            if len(n) != 1:
                raise ValueError("all tensors of a dict dataset need the same first dimension")
            self.n = n.pop()
        else:
            self.n = len(examples)
        if self.n == 0:
            raise ValueError("no training examples")
        self.examples, self.pad_id, self.seed = examples, pad_id, seed
        self._perms: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return self.n

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perms = {epoch: torch.randperm(self.n, generator=gen, device="cpu")}
        return self._perms[epoch]

    def indices(self, start: int, count: int) -> list[int]:
        """Example indices at positions ``start .. start + count`` of the endless stream."""
        return [int(self._perm(i // self.n)[i % self.n]) for i in range(start, start + count)]

    def get(self, idx: list[int]) -> dict:
        """The examples ``idx`` as one right-padded batch of CPU tensors (whatever torch's
        default device is); the consumer moves it to its model's device."""
        with torch.device("cpu"):
            return self._collate(idx)

    def _collate(self, idx: list[int]) -> dict:
        if isinstance(self.examples, dict):
            batch = {k: v[idx] for k, v in self.examples.items()}
            batch.setdefault("loss_mask", torch.ones_like(batch["input_ids"]))
            return batch
        rows = [self.examples[i] for i in idx]
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[j, :n] = torch.as_tensor(r["input_ids"])
            mask[j, :n] = torch.as_tensor(r.get("loss_mask", [1] * n))
        batch = {"input_ids": ids, "loss_mask": mask, "attention_mask": (torch.arange(width)[None]
                 < torch.tensor([len(r["input_ids"]) for r in rows])[:, None]).long()}
        # per-token extras (e.g. a cached top-k of the target): concatenated in row order
        for key in rows[0].keys() - {"input_ids", "loss_mask"}:
            batch[key] = torch.cat([torch.as_tensor(r[key]) for r in rows])
        return batch

    def batch(self, position: int, size: int) -> dict:
        return self.get(self.indices(position, size))


def lm_loss(model, batch: dict) -> tuple[torch.Tensor, dict]:
    """Next-token cross-entropy over positions whose *target* token has ``loss_mask`` 1."""
    ids = batch["input_ids"]  # [B, T]
    logits = model(input_ids=ids, attention_mask=batch.get("attention_mask")).logits[:, :-1]  # [B, T-1, V]
    labels, mask = ids[:, 1:], batch["loss_mask"][:, 1:].float()  # [B, T-1]
    ce = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten(),
                                           reduction="none").view_as(labels)  # [B, T-1]
    loss = (ce * mask).sum() / mask.sum().clamp(min=1)
    with torch.no_grad():
        top1 = ((logits.argmax(-1) == labels).float() * mask).sum() / mask.sum().clamp(min=1)
    return loss, {"top1": float(top1), "tokens": float(mask.sum())}


def _to(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The dtype training computes in (``None``: fp32): ``cfg.autocast``, where ``"auto"``
    is the device's native 16-bit type (:func:`draftalign.models.half_dtype`)."""
    from .models import half_dtype

    return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.autocast) \
        if cfg.autocast != "auto" else half_dtype(device)


def _autocast(cfg: TrainConfig, device: torch.device):
    dtype = autocast_dtype(cfg, device)
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


@torch.no_grad()
def held_out_stats(model, data: Batches, loss_fn, cfg: TrainConfig) -> dict:
    """Mean loss (and stats) over the first ``eval_batches`` batches of ``data`` (fixed order)."""
    device = next(model.parameters()).device
    model.eval()
    totals: dict[str, float] = {}
    n = min(cfg.eval_batches, math.ceil(len(data) / cfg.batch_size))
    for b in range(n):
        idx = list(range(b * cfg.batch_size, min(len(data), (b + 1) * cfg.batch_size)))
        with _autocast(cfg, device):
            loss, stats = loss_fn(model, _to(data.get(idx), device))
        for k, v in {"loss": float(loss), **stats}.items():
            totals[k] = totals.get(k, 0.0) + v
    model.train()
    return {f"eval_{k}": v / n for k, v in totals.items() if k != "tokens"}


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


_COMPLETE = "complete"  # written last into a checkpoint folder


def _save_checkpoint(folder: Path, model, opt, sched, step: int, history: list, cfg, scaler=None) -> None:
    """Write to a temporary folder, then swap it in: a crash never leaves half a checkpoint
    (and :func:`_load_checkpoint` repairs a crash between the two renames). The previous
    checkpoint stays beside it as ``<folder>.old`` until the next save: on a synced drive
    (Google Drive on Colab) a disconnect can leave the new copy torn or unsynced, and
    training then resumes from the previous one instead of from step 0."""
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "step": step, "rng": _rng_state(), "config": asdict(cfg),
                "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None},
               tmp / "state.pt")
    pd.DataFrame(history).to_csv(tmp / "history.csv", index=False)
    (tmp / _COMPLETE).write_text(str(step))
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        if old.exists():  # the one before the previous: no longer needed
            shutil.rmtree(old)
        folder.rename(old)
    tmp.rename(folder)


def _read_state(folder: Path):
    """The checkpoint in ``folder`` (state and history rows), or the reason it is unreadable."""
    try:
        state = torch.load(folder / "state.pt", weights_only=False, map_location="cpu")
        if not isinstance(state, dict) or not {"model", "optimizer", "step", "config"} <= state.keys():
            raise ValueError("not a training checkpoint")
        history = pd.read_csv(folder / "history.csv").to_dict("records") if state["step"] else []
        return state, history, None
    except Exception as exc:  # truncated, zero-filled, edited: torch raises many kinds
        return None, None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _load_checkpoint(folder: Path):
    """``(state, history)`` of the checkpoint in ``folder``, or ``None`` when there is none.

    Repairs what a crash can leave: the newest complete copy among ``folder``,
    ``folder.tmp`` (a crash after the new copy was written, between the two renames) and
    ``folder.old`` (the previous one) is used, with a warning when it is not ``folder``
    itself. A checkpoint that exists but cannot be read, with no readable copy beside it,
    raises :class:`draftalign.artifacts.CorruptFile` naming the file."""
    from .artifacts import CorruptFile

    tmp, old = folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")
    candidates = [c for c in (folder, tmp, old) if (c / "state.pt").exists() and (c != tmp or (c / _COMPLETE).exists())]
    if not candidates:
        return None
    readable, found = [], []
    for cand in candidates:
        state, history, error = _read_state(cand)
        if state is None:
            found.append(f"{cand / 'state.pt'}: {error}")
        else:
            readable.append((state["step"], cand, state, history))
    if readable:
        _, cand, state, history = max(readable, key=lambda r: r[0])  # the newest readable copy
        if cand != folder:
            warnings.warn(f"training resumes from {cand} (step {state['step']})"
                          + (f"; {found[0]}" if found else "; the last save was interrupted"), stacklevel=3)
        return state, history
    raise CorruptFile("no readable training checkpoint: " + "; ".join(found) + f". Delete {folder} to start "
                      f"training again from step 0.", folder / "state.pt")


def train(model, data: Batches, cfg: TrainConfig, out_dir, *, loss_fn: Callable = lm_loss,
          eval_data: Batches | None = None, resume: bool = True, stop_after: int | None = None,
          progress: bool = True, desc: str = "training", deadline: float | None = None) -> pd.DataFrame:
    """Train ``model`` in place and return the history (one row per optimizer step).

    ``loss_fn(model, batch) -> (loss, stats)`` sees batches of ``cfg.batch_size`` examples;
    each step accumulates ``cfg.grad_accum`` of them. With ``resume``, training continues
    from ``out_dir/checkpoint`` if it exists and its config equals ``cfg``. ``stop_after``
    ends this call after that many steps (with a checkpoint), to split training across
    sessions; ``deadline`` (a ``time.time()`` value) does the same once that time has
    passed. When ``max_steps`` is reached the model is saved to ``out_dir`` with
    ``save_pretrained`` and the checkpoint is kept for inspection.

    Under ``accelerate launch`` with several processes (:mod:`draftalign.distributed`) the
    same call trains data-parallel: ``cfg.batch_size`` is the global batch, split over the
    processes, and the steps, losses and checkpoints are those of one process with that batch.
    """
    out_dir = Path(out_dir)
    ckpt = out_dir / "checkpoint"
    low = sorted({str(p.dtype) for p in model.parameters() if p.requires_grad and p.dtype != torch.float32})
    if low:
        raise ValueError(f"the model's trainable weights are {', '.join(low)}: train fp32 master weights "
                         f"(model.float()); 16-bit compute comes from autocast (TrainConfig.autocast)")
    dist = for_run()  # one process, or several under `accelerate launch` (draftalign.distributed)
    if dist.world > 1:
        if type(data).batch is not Batches.batch:
            raise NotImplementedError(f"{type(data).__name__} draws its batches itself: it trains on one process")
        model.to(dist.device)
    device = next(model.parameters()).device
    # fp16 needs its gradients scaled (they underflow otherwise); bf16 and fp32 do not
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype(cfg, device) == torch.float16)
    step, history = 0, []
    # loaded to the CPU first: the RNG states must stay CPU tensors; load_state_dict moves
    # the weights and the optimizer's moments to the model's device
    loaded = _load_checkpoint(ckpt) if resume else None
    if loaded is not None:
        from .artifacts import SettingsMismatch

        state, history = loaded
        if state["config"] != asdict(cfg):
            raise SettingsMismatch(f"{ckpt} was written with another config; delete it or pass resume=False\n"
                                   f"  checkpoint: {state['config']}\n  now:        {asdict(cfg)}", ckpt)
        model.load_state_dict(state["model"])
    wrapped = dist.wrap(model)  # the model itself on one process
    decay = [p for n, p in wrapped.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in wrapped.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, cfg) / cfg.lr)
    if loaded is not None:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        step = state["step"]
        _set_rng_state(state["rng"])
    else:
        torch.manual_seed(cfg.seed)
    wrapped.train()
    end = cfg.max_steps if stop_after is None else min(cfg.max_steps, step + stop_after)
    # at most ~20 updates: in an executed notebook every update is a line of output. An
    # infinite maxinterval stops tqdm's monitor thread from dropping miniters to 1 after a
    # slow step (an evaluation), which would print a line every mininterval from then on.
    bar = tqdm(total=cfg.max_steps, initial=step, desc=desc, disable=not progress or not dist.is_main, mininterval=2,
               miniters=max(1, cfg.max_steps // 20), maxinterval=float("inf"))
    examples_per_step = cfg.batch_size * cfg.grad_accum
    while step < end:
        start = time.perf_counter()
        totals: dict[str, float] = {}
        for micro in range(cfg.grad_accum):
            position = step * examples_per_step + micro * cfg.batch_size
            raw = data.batch(position, cfg.batch_size) if dist.world == 1 else \
                data.get(dist.indices(data.indices(position, cfg.batch_size)))  # this process's share
            batch = _to(raw, device)
            positions = batch["loss_mask"][:, 1:].sum()  # what the loss is a mean over
            with dist.no_sync(wrapped, last=micro == cfg.grad_accum - 1):
                with _autocast(cfg, device):
                    loss, stats = loss_fn(wrapped, batch)
                scaler.scale(dist.weight(loss, positions) / cfg.grad_accum).backward()
            stats = dist.reduce_stats({"loss": float(loss.detach()), **stats}, float(positions))
            for k, v in stats.items():
                totals[k] = totals.get(k, 0.0) + (v if k == "tokens" else v / cfg.grad_accum)
        scaler.unscale_(opt)
        grad_norm = dist.clip(wrapped, cfg.grad_clip)
        row = {"step": step + 1, "lr": sched.get_last_lr()[0], **totals, "grad_norm": float(grad_norm)}
        scaler.step(opt)
        scaler.update()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        row["seconds"] = time.perf_counter() - start
        row["tokens_per_s"] = totals.get("tokens", 0.0) / row["seconds"]
        if eval_data is not None and (step % cfg.eval_every == 0 or step == cfg.max_steps):
            row.update(held_out_stats(wrapped, eval_data, loss_fn, cfg))
        history.append(row)
        bar.update()
        bar.set_postfix(loss=f"{row['loss']:.3f}", tok_s=f"{row['tokens_per_s']:.0f}", refresh=False)
        late = dist.any(deadline is not None and time.time() > deadline and step < end)
        if step % cfg.checkpoint_every == 0 or step == end or late:
            if dist.is_main:
                _save_checkpoint(ckpt, model, opt, sched, step, history, cfg, scaler)
            dist.barrier()
        if late:
            break
    bar.close()
    model.eval()
    if step >= cfg.max_steps and dist.is_main:
        model.save_pretrained(out_dir)
        (out_dir / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2))
        pd.DataFrame(history).to_csv(out_dir / "history.csv", index=False)
    dist.barrier()
    return pd.DataFrame(history)


def history_of(out_dir) -> pd.DataFrame:
    """The saved history of a finished run in ``out_dir``."""
    path = Path(out_dir) / "history.csv"
    if not path.exists():
        raise FileNotFoundError(f"no finished training run in {out_dir}")
    return pd.read_csv(path)



def steps_for_budget(model, data: Batches, cfg: TrainConfig, seconds: float, *, loss_fn: Callable = lm_loss,
                     probe: int = 4, warmup: int = 3, margin: float = 0.92) -> int:
    """How many optimizer steps of ``cfg`` fit in ``seconds`` on this machine: times
    ``probe`` steps (after ``warmup`` untimed ones: on a GPU the first steps pay for
    allocation and kernel selection, and timing them made a run plan 4x too few steps) on
    a copy of ``model`` with a throwaway optimizer, and returns ``margin`` of the steps
    that fit (at least 1). ``model`` and the random state are left as they were."""
    import copy

    device = next(model.parameters()).device
    probe_model = copy.deepcopy(model).train()
    opt = torch.optim.AdamW(probe_model.parameters(), lr=0.0)
    per_step = cfg.batch_size * cfg.grad_accum

    def one(i):
        for micro in range(cfg.grad_accum):
            batch = _to(data.batch(i * per_step + micro * cfg.batch_size, cfg.batch_size), device)
            with _autocast(cfg, device):
                loss, _ = loss_fn(probe_model, batch)
            (loss / cfg.grad_accum).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if device.type == "cuda" else []):
        for i in range(warmup):
            one(i)
        start = time.perf_counter()
        for i in range(warmup, warmup + probe):
            one(i)
        step_s = (time.perf_counter() - start) / probe
    return max(1, int(margin * seconds / step_s))
