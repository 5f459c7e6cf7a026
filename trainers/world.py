"""The process group a run trains in: its rank and size, and the few collectives the loop needs.

A run of one process has a world of size 1 and no process group; the loop is the same code at
every size. A run given several workers (Ray Train's TorchTrainer, orchestrator/sweep/group.py,
or torchrun) finds torch.distributed initialized, and trains data-parallel:
  - every rank draws the same global batch from the same seeded generator and takes its share
    (torch.tensor_split: shares may differ by one example);
  - each rank's loss is its share's summed token losses over the global batch's labelled tokens,
    times the world size (DDP averages gradients over ranks), so the update equals the one a
    single process makes on the whole batch, to float tolerance;
  - rank 0 evaluates, reports and writes the checkpoint; every stop decision is rank 0's,
    broadcast, so all ranks leave the loop at the same step.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @classmethod
    def current(cls) -> World:
        """The initialized process group's, else a world of one."""
        if not (dist.is_available() and dist.is_initialized()):
            return cls()
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def as_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def _tensor(value: float) -> torch.Tensor:
        # NCCL moves CUDA tensors only (on this rank's current device); gloo CPU ones.
        nccl = dist.get_backend() == "nccl"
        device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
        return torch.tensor([value], dtype=torch.float64, device=device)

    def sum(self, value: float) -> float:
        """The sum over ranks of a float (the step's loss); the value itself at size 1."""
        if self.size == 1:
            return value
        t = self._tensor(value)
        dist.all_reduce(t)
        return float(t.item())

    def agree(self, flag: bool) -> bool:
        """Rank 0's flag, on every rank."""
        if self.size == 1:
            return flag
        t = self._tensor(float(flag))
        dist.broadcast(t, src=0)
        return bool(t.item())

    def share(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's share of a global batch (of indices or examples)."""
        if self.size == 1:
            return batch
        return torch.tensor_split(batch, self.size)[self.rank]
