"""How the model is laid over a run's workers: alone (one process), replicated (DDP), or sharded
(FSDP2's fully_shard, `train.shard: true`). The loop talks to one `Layout` whatever the case:

  - `trained`: what the training step calls (DDP's wrapper, or the sharded model);
  - `forward`: what evaluation calls. Alone and under DDP it is the plain module, so rank 0 can
    evaluate by itself; sharded, every rank must take part in each forward (its parameters
    are gathered), so `eval_on_every_rank` says so;
  - `accumulating(last)`: gradients are synchronised on the last micro-batch only;
  - `state`/`load`: the model's and the optimizer's whole (unsharded) state, in torch's own
    layout when alone or replicated, for the checkpoint rank 0 writes;
  - `weight_norm`: over the whole model, whichever rank holds which shard.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from trainers.world import World


class Layout:
    """One process, or DDP: every rank holds the whole model."""

    eval_on_every_rank = False

    def __init__(self, model: nn.Module, forward: nn.Module, world: World, device: torch.device) -> None:
        self.model, self.forward, self.world = model, forward, world
        self.trained = forward
        if world.size > 1:
            ids = [device.index] if device.type == "cuda" else None
            self.trained = DistributedDataParallel(forward, device_ids=ids)

    def accumulating(self, last: bool) -> contextlib.AbstractContextManager:
        if self.world.size > 1 and not last:
            return self.trained.no_sync()
        return contextlib.nullcontext()

    def state(self, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
        return self.model.state_dict(), optimizer.state_dict()

    def load(self, optimizer: torch.optim.Optimizer, model_state: dict, optimizer_state: dict) -> None:
        self.model.load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_state)

    def weight_norm(self) -> float:
        return math.sqrt(sum(p.detach().double().pow(2).sum().item() for p in self.model.parameters()))


class Sharded(Layout):
    """FSDP2: each block, then the whole model, sharded over the workers (parameters, gradients
    and optimizer state), as torch's FSDP2 tutorial lays out a transformer."""

    eval_on_every_rank = True

    def __init__(self, model: nn.Module, forward: nn.Module, world: World, device: torch.device) -> None:
        from torch.distributed.fsdp import fully_shard

        for block in getattr(model, "blocks", ()):
            fully_shard(block)
        fully_shard(model)
        self.model, self.forward, self.world, self.trained = model, forward, world, forward

    def accumulating(self, last: bool) -> contextlib.AbstractContextManager:
        self.model.set_requires_gradient_sync(last)
        return contextlib.nullcontext()

    def _options(self):
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(full_state_dict=True, cpu_offload=True)

    def state(self, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
        """Gathered on every rank (a collective); whole on rank 0."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        options = self._options()
        return (
            get_model_state_dict(self.model, options=options),
            get_optimizer_state_dict(self.model, optimizer, options=options),
        )

    def load(self, optimizer: torch.optim.Optimizer, model_state: dict, optimizer_state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True)
        set_model_state_dict(self.model, model_state, options=options)
        set_optimizer_state_dict(self.model, optimizer, optimizer_state, options=options)

    def weight_norm(self) -> float:
        """A sharded parameter adds its rank's shard; one left gathered after a forward (the
        root module's, by FSDP2's default) is whole on every rank, so rank 0 alone adds it."""
        from torch.distributed.tensor import DTensor

        local = 0.0
        for p in self.model.parameters():
            if isinstance(p, DTensor):
                local += p.detach().to_local().double().pow(2).sum().item()
            elif self.world.is_main:
                local += p.detach().double().pow(2).sum().item()
        return math.sqrt(self.world.sum(local))


def layout(model: nn.Module, forward: nn.Module, world: World, device: torch.device, shard: bool) -> Layout:
    """The model over this run's workers; `shard` applies only to a run of several."""
    if shard and world.size > 1:
        return Sharded(model, forward, world, device)
    return Layout(model, forward, world, device)
