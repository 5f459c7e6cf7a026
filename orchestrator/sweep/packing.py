"""The packing policy: how many runs of a cell train together as one batched model
(trainers/packed.py), and what a run costs, which also orders the cells (costliest first)."""

from __future__ import annotations

from orchestrator.study import Study
from orchestrator.study.grid import Cell

# Packing pays on a CPU only while one run's step is small: measured with benchmarks/
# bench_packing.py on 2 cores, K packed runs beat K separate ones by 1.6x at 159 examples x 14k
# parameters per step and broke even at 505 x 15k. On a GPU a small model's step is mostly
# kernel launches, which packing shares.
CPU_PACK_MAX_WORK = 3e6  # examples per step x parameters


def pack_size(study: Study, cell: Cell) -> int:
    """How many runs of this cell to train in one packed task (1: none)."""
    mode, k = study.pack.mode, study.pack.max_runs
    if mode == "off" or k < 2 or study.trainer is not None:  # packing is for the built-in trainers only
        return 1
    placement = study.resources.for_n(cell.n(study.grid.n_convention))
    if placement.group:  # a run of several workers is never packed
        return 1
    if mode == "on":
        return k
    on_gpu = placement.gpus > 0
    return k if on_gpu or step_cost(study, cell) <= CPU_PACK_MAX_WORK else 1


def step_cost(study: Study, cell: Cell) -> float:
    """The work of one training step of a run in a cell: parameters x examples per step
    (training FLOPs scale as 6 N x tokens, Kaplan et al. 2020). What packing pays against."""
    batch = cell.examples_per_step or cell.n_train
    return float(cell.n_params.total) * min(batch, cell.n_train)


def run_cost(study: Study, cell: Cell) -> float:
    """The compute of one whole run in a cell: its training FLOPs (steps differ between cells
    once lengths come from tokens, epochs or a FLOP budget), else its step cost."""
    return cell.train_flops or step_cost(study, cell)
