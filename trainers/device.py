"""What a run's device decides: the precision it trains in, whether the model is compiled, the
peak FLOP/s that MFU is measured against, and the settings that govern determinism.

Every choice here is recorded with the run (`Runtime.as_dict()`, TrainResult.runtime), so a
reader of the record knows what ran without the machine in front of them.

CPU runs keep fp32, eager and the default AdamW: they stay bitwise repeatable. On a GPU the
defaults follow nanoGPT's loop: bf16 autocast where the card has it, TF32 matmuls, fused AdamW,
torch.compile when the run is long enough to pay back its compile time.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from dataclasses import asdict, dataclass

import torch

from trainers import mup
from trainers.machine import cpu_model
from trainers.spec import TrainConfig

PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# Dense (no sparsity) peak FLOP/s by device and precision, from the vendors' data sheets. fp32
# is the TF32 tensor-core figure: the loop turns TF32 matmuls on. The first name that is a
# substring of torch.cuda.get_device_name() wins, so the specific names come first.
PEAK_FLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H100 PCIe", {"bf16": 756e12, "fp16": 756e12, "fp32": 378e12}),
    ("H100 NVL", {"bf16": 835e12, "fp16": 835e12, "fp32": 418e12}),
    ("H100", {"bf16": 989.4e12, "fp16": 989.4e12, "fp32": 494.7e12}),  # SXM
    ("H200", {"bf16": 989.4e12, "fp16": 989.4e12, "fp32": 494.7e12}),
    ("GH200", {"bf16": 989.4e12, "fp16": 989.4e12, "fp32": 494.7e12}),
    ("B200", {"bf16": 2250e12, "fp16": 2250e12, "fp32": 1100e12}),
    ("A100", {"bf16": 312e12, "fp16": 312e12, "fp32": 156e12}),
    ("L40S", {"bf16": 362e12, "fp16": 362e12, "fp32": 183e12}),
    ("L4", {"bf16": 121e12, "fp16": 121e12, "fp32": 60e12}),
    ("A10", {"bf16": 125e12, "fp16": 125e12, "fp32": 62.5e12}),
    ("RTX 4090", {"bf16": 165.2e12, "fp16": 165.2e12, "fp32": 82.6e12}),
    ("V100", {"fp16": 125e12, "fp32": 15.7e12}),
    ("MI300X", {"bf16": 1307e12, "fp16": 1307e12, "fp32": 653.7e12}),
)

# compile "auto": compile a GPU run when its eager training time, estimated at AUTO_MFU of the
# device's peak, exceeds AUTO_COMPILE_RUN_S. Compiling a small GPT costs tens of seconds and
# saves some 20-40% of a step (nanoGPT reports 250 -> 135 ms); below a few minutes of training
# it does not pay back. Not yet measured on a GPU here: README says so.
AUTO_MFU = 0.3
AUTO_COMPILE_RUN_S = 300.0


@dataclass(frozen=True)
class Runtime:
    """How a run executes on its device: recorded with every run."""

    device: str  # "cpu", "cuda:0"
    device_name: str  # the card's name, or the CPU model
    precision: str  # fp32 | bf16 | fp16, resolved from train.precision
    compiled: bool
    world_size: int
    peak_flops: float  # of one device, at this precision
    peak_source: str  # "table: H100 bf16" or "probe: ..."
    determinism: dict
    machine: dict  # trainers/machine.py: what bitwise equality across machines depends on

    def as_dict(self) -> dict:
        return asdict(self)


def resolve_precision(cfg: TrainConfig, device: torch.device) -> str:
    """train.precision with "auto" decided: bf16 on a GPU that supports it, else fp32."""
    if cfg.precision != "auto":
        return cfg.precision
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed precision through autocast; fp32 runs as it always has (no context at all)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=PRECISION_DTYPES[precision])


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """fp16's gradients underflow without loss scaling; bf16 and fp32 have fp32's range."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def configure(device: torch.device) -> None:
    """Process-wide settings for a GPU run: TF32 matmuls and convolutions (fp32 inputs, 10-bit
    mantissa products, fp32 accumulation). CPU settings are left alone so CPU runs stay bitwise."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def should_compile(cfg: TrainConfig, device: torch.device, flops_per_step: float, peak_flops: float) -> bool:
    if cfg.compile != "auto":
        return cfg.compile == "on"
    if device.type != "cuda":
        return False
    eager_s = cfg.steps * flops_per_step / (AUTO_MFU * peak_flops)
    return eager_s > AUTO_COMPILE_RUN_S


def optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over the model's parameters; fused on a GPU (one kernel for all parameters). CPU keeps
    torch's default implementation so CPU runs stay what they were, bit for bit. A mup model's
    parameters come in groups with their own learning rate and weight decay, each group holding
    its `lr_scale` for the loop's schedule (trainers/mup.py); sp's are one group, as always."""
    kwargs = {"fused": True} if device.type == "cuda" else {}
    groups = mup.param_groups(model, cfg.lr, cfg.weight_decay)
    return torch.optim.AdamW(
        model.parameters() if groups is None else groups,
        lr=cfg.lr,
        betas=cfg.betas,
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        **kwargs,
    )


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def peak_flops(device: torch.device, precision: str, threads: int) -> tuple[float, str]:
    """The device's peak FLOP/s at this precision and where the figure comes from: the table of
    known devices, else a matmul probe measured once per process."""
    name = device_name(device)
    for key, peaks in PEAK_FLOPS:
        if key in name and precision in peaks:
            return peaks[precision], f"table: {key} {precision}"
    return _probe(device.type, str(device), precision, threads)


@functools.cache
def _probe(kind: str, device: str, precision: str, threads: int) -> tuple[float, str]:
    """The best of a few square matmuls: an upper bound a real step can approach."""
    n = 2048 if kind == "cuda" else 512
    dtype = PRECISION_DTYPES[precision]
    # Its own generator: the run's global one (init, dropout) must not move.
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, generator=gen).to(dtype)
    b = torch.randn(n, n, device=device, generator=gen).to(dtype)
    best = float("inf")
    for _ in range(5):
        if kind == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if kind == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best, f"probe: {n}x{n} {precision} matmul on {threads} thread(s), best of 5"


def determinism(device: torch.device, threads: int) -> dict:
    """The settings that decide whether a rerun gives the same bits."""
    facts = {
        "torch": torch.__version__,
        "threads": threads,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "CUBLAS_WORKSPACE_CONFIG": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }
    if device.type == "cuda":
        facts.update(
            {
                "cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version(),
                "cudnn_deterministic": torch.backends.cudnn.deterministic,
                "cudnn_benchmark": torch.backends.cudnn.benchmark,
                "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            }
        )
    return facts
