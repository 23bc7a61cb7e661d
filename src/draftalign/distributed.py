"""Training on several processes: what :func:`draftalign.train.train` does differently when
it runs under ``accelerate launch`` (or ``torchrun``) with more than one process.

Reads the launcher's environment (``WORLD_SIZE``, ``RANK``, ...); writes nothing. One
process (no launcher, or one process) gets :class:`Single`, which changes nothing. Several
get :class:`Multi`: the model is wrapped by ``accelerate`` (DDP, or FSDP with an accelerate
config such as ``configs/accelerate/fsdp.yaml``), each process takes its share of every
global batch, each share's loss is weighted by its share of the batch's loss positions (so
the averaged gradient is exactly the one-process gradient of the global batch, whatever the
answers' lengths), the logged statistics are the global batch's, and only the first process
writes checkpoints, the history and the trained model.
"""

from __future__ import annotations

import contextlib
import os

import torch

__all__ = ["Single", "Multi", "for_run"]


class Single:
    """One process: the identity of everything below."""

    world, rank, is_main = 1, 0, True

    def wrap(self, model):
        return model

    def unwrap(self, model):
        return model

    def indices(self, indices: list[int]) -> list[int]:
        return indices

    def weight(self, loss: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return loss

    def reduce_stats(self, stats: dict, positions: float) -> dict:
        return stats

    def no_sync(self, model, last: bool):
        return contextlib.nullcontext()

    def clip(self, model, max_norm: float) -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)

    def any(self, flag: bool) -> bool:
        return flag

    def barrier(self) -> None:
        pass


class Multi(Single):
    """Several processes under accelerate: DDP (or FSDP) over a process group."""

    def __init__(self):
        from accelerate import Accelerator

        self.accelerator = Accelerator()
        self.world, self.rank = self.accelerator.num_processes, self.accelerator.process_index
        self.is_main = self.accelerator.is_main_process
        self.device = self.accelerator.device

    def wrap(self, model):
        return self.accelerator.prepare_model(model)

    def unwrap(self, model):
        return self.accelerator.unwrap_model(model)

    def indices(self, indices: list[int]) -> list[int]:
        """This process's contiguous share of a global batch's examples."""
        if len(indices) % self.world:
            raise ValueError(f"a batch of {len(indices)} examples does not split over {self.world} processes: "
                             f"make batch_size a multiple of the number of processes")
        share = len(indices) // self.world
        return indices[self.rank * share:(self.rank + 1) * share]

    def _sum(self, value: float) -> float:
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        return float(self.accelerator.reduce(t, reduction="sum").item())

    def weight(self, loss: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``loss`` (the mean over this share's loss positions) times ``world x local / global``
        positions: averaged over processes, the gradient is that of the mean over the whole batch."""
        local = float(positions)
        total = self._sum(local)
        return loss * (self.world * local / total) if total else loss * 0

    def reduce_stats(self, stats: dict, positions: float) -> dict:
        """Each statistic of the global batch: token counts summed, the others averaged with
        each share weighted by its loss positions."""
        total = self._sum(positions)
        out = {}
        for key, value in stats.items():
            out[key] = self._sum(value) if key == "tokens" else self._sum(value * positions) / max(total, 1.0)
        return out

    def no_sync(self, model, last: bool):
        return contextlib.nullcontext() if last else self.accelerator.no_sync(model)

    def clip(self, model, max_norm: float) -> torch.Tensor:
        return self.accelerator.clip_grad_norm_(model.parameters(), max_norm)

    def any(self, flag: bool) -> bool:
        """True on every process when it is true on one (a deadline seen by one stops all)."""
        return self._sum(float(flag)) > 0

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()


def for_run() -> Single:
    """:class:`Multi` when a launcher started several processes, else :class:`Single`."""
    return Multi() if int(os.environ.get("WORLD_SIZE", "1")) > 1 else Single()
