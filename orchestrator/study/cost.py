"""What a cell will cost on GPUs, before anything runs: its workers, the precision it trains in,
the tokens per second to expect and the GPU-hours of its runs.

An estimate, stated as one: the device's peak FLOP/s (trainers/device.py's table) times an
assumed model FLOPs utilization, ESTIMATED_MFU. nanoGPT's GPT-2 (124M) reaches about 0.4 on an
A100 in bf16 with torch.compile, and well-tuned 1B-class runs 0.4-0.5; small models reach less.
Each run records the MFU it measured (the `mfu` metric), against which this can be checked.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.study.grid import Cell
from orchestrator.study.schema import Study
from trainers.device import PEAK_FLOPS

ESTIMATED_MFU = 0.4
DEFAULT_GPU = "H100"


@dataclass(frozen=True)
class CellCost:
    workers: int
    gpus: float  # per run
    precision: str
    tokens_per_s: float | None  # None: a CPU cell (no table to estimate it from)
    gpu_hours: float  # all of the cell's runs

    def describe(self) -> str:
        if not self.gpus:
            return f"{self.workers} CPU worker(s), {self.precision}"
        return (
            f"{self.workers} worker(s) on {self.gpus:g} GPU(s), {self.precision}, ~{self.tokens_per_s:,.0f} "
            f"tokens/s, {self.gpu_hours:,.2f} GPU-hours"
        )


def peak(gpu: str, precision: str) -> float | None:
    for key, peaks in PEAK_FLOPS:
        if key.lower() in gpu.lower() and precision in peaks:
            return peaks[precision]
    return None


def cell_cost(study: Study, cell: Cell, gpu: str = DEFAULT_GPU) -> CellCost:
    """The cell's cost on `gpu` (a name in trainers/device.py's table, e.g. H100, A100)."""
    placement = study.resources.for_n(cell.n(study.grid.n_convention))
    precision = study.train.get("precision", "auto")
    if precision == "auto":
        precision = "bf16" if placement.gpus else "fp32"
    runs = study.search.trials_per_cell * len(study.grid.seeds)
    device_peak = peak(gpu, precision) if placement.gpus else None
    if device_peak is None:
        return CellCost(placement.workers, placement.gpus, precision, None, 0.0)
    flops_per_s = ESTIMATED_MFU * device_peak * placement.gpus  # a fraction of a GPU gets its share
    per_token = cell.flops_per_example / max(cell.tokens_per_example, 1)
    hours = runs * cell.train_flops / flops_per_s / 3600 * placement.gpus
    return CellCost(placement.workers, placement.gpus, precision, flops_per_s / per_token, hours)
