"""The built-in loop on a GPU, against a nanoGPT-style loop written here, in the same run.

Model: the `gpt` family at three sizes (about 20M, 125M and 350M parameters counting the
embeddings, GPT-2's vocabulary of 50,257), bf16 autocast, torch.compile, fused AdamW, windows
of 1,024 tokens read from a memory-mapped uint16 token file (random ids, written here: nothing
is downloaded).

  - "trainer": trainers.train() on a `corpus` task over that file, as a study runs it, with one
    evaluation at the end (excluded from its time, as the reference evaluates nothing);
  - "reference": the loop a person writes after nanoGPT's train.py: the same module, compiled,
    fused AdamW, bf16 autocast, random windows from np.memmap, pinned and copied non-blocking.

Both train the same number of steps after the same warm-up steps (compilation excluded from
both). Reported per size: tokens/s of each, their ratio (target >= 0.95x) and the trainer's MFU
against the device's peak (trainers/device.py). Needs a CUDA GPU.

Usage: python benchmarks/bench_trainer_gpu.py [--steps 50] [--warmup 10] [--json] [--sizes small,...]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from trainers import TrainSpec, train
from trainers.device import peak_flops
from trainers.flops import flops_for_task
from trainers.models import build_model, count_params, init_weights
from trainers.tasks import make_task

VOCAB = 50257
SEQ_LEN = 1024
SIZES = {  # name: (n_layer, d_model, micro-batch of windows)
    "20M": (6, 384, 32),  # ~10.6M non-embedding + 38.6M embedding
    "125M": (12, 768, 16),  # GPT-2 small's shape
    "350M": (24, 1024, 8),  # GPT-2 medium's shape
    "tiny": (2, 64, 2),  # a smoke test of this script on CPU (--device cpu --sizes tiny)
}


def token_file(folder: Path, n_tokens: int) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", n_tokens), ("val", 1 << 20)):
        rng.integers(0, VOCAB, n, dtype=np.uint16).tofile(folder / f"{split}.bin")
    return folder


def spec_for(folder: Path, size: str, steps: int, device: str) -> TrainSpec:
    n_layer, d_model, micro = SIZES[size]
    return TrainSpec.model_validate(
        {
            "task": {
                "name": "corpus",
                "source": str(folder),
                "format": "tokens",
                "vocab_size": VOCAB,
                "seq_len": SEQ_LEN,
                "n_val_tokens": 8 * SEQ_LEN + 1,
            },
            "model": {"family": "gpt", "n_layer": n_layer, "d_model": d_model, "head_dim": 64},
            "train": {
                "steps": steps,
                "eval_every": steps,
                "batch_size": micro,
                "lr": 6e-4,
                "weight_decay": 0.1,
                "betas": [0.9, 0.95],
                "warmup_steps": 0,
                "precision": "bf16",
                "compile": "on",
                "grad_clip": 1.0,
                "eval_batch_size": micro,
            },
            "device": device,
        }
    )


def reference_loop(spec: TrainSpec, folder: Path, steps: int, warmup: int) -> float:
    """nanoGPT's loop, minimal: seconds for `steps` steps after `warmup` steps."""
    data = make_task(spec.task, spec.seed)
    torch.manual_seed(spec.seed)
    model = build_model(spec.model, data.vocab_size, data.n_out, data.seq_len)
    init_weights(model, 1.0)
    device = torch.device(spec.device)
    cuda = device.type == "cuda"
    model = model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=cuda)
    compiled = torch.compile(model)
    tokens = np.memmap(folder / "train.bin", dtype=np.uint16, mode="r")
    micro = spec.train.batch_size

    def batch():
        ix = torch.randint(len(tokens) - SEQ_LEN - 1, (micro,))
        w = torch.stack([torch.from_numpy(tokens[i : i + SEQ_LEN + 1].astype(np.int64)) for i in ix])
        if not cuda:
            return w[:, :-1], w[:, 1:]
        return w[:, :-1].pin_memory().to(device, non_blocking=True), w[:, 1:].pin_memory().to(
            device, non_blocking=True
        )

    def step() -> None:
        x, y = batch()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = compiled(x)
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()  # the trainer reads its loss every step too

    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t


def trainer_rate(spec: TrainSpec) -> tuple[float, float]:
    """tokens/s and MFU over the steps after warm-up, from the trainer's own throughput log:
    its last evaluation times the steps since the one before (compilation excluded)."""
    result = train(spec)
    return result.throughput["tokens_per_s"][-1], result.throughput["mfu"][-1]


def measure(folder: Path, size: str, steps: int, warmup: int, device: str) -> dict:
    # The trainer evaluates after `warmup` steps, then again after `steps` more: the last lap is
    # the measured one, as the reference's timer starts after its warm-up.
    spec = spec_for(folder, size, warmup + steps, device)
    spec = spec.model_copy(update={"train": spec.train.model_copy(update={"eval_every": warmup})})
    data = make_task(spec.task, spec.seed)
    n = count_params(build_model(spec.model, data.vocab_size, data.n_out, data.seq_len)).as_dict()
    per_token = flops_for_task(spec.model, data).per_token
    ref_s = reference_loop(spec, folder, steps, warmup)
    ref_tps = steps * spec.train.batch_size * SEQ_LEN / ref_s
    ours_tps, ours_mfu = trainer_rate(spec)
    peak, source = peak_flops(torch.device(device), "bf16", 1)
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    return {
        "size": size,
        "n_params": n,
        "flops_per_token": per_token,
        "micro_batch": spec.train.batch_size,
        "reference_tokens_per_s": ref_tps,
        "trainer_tokens_per_s": ours_tps,
        "ratio": ours_tps / ref_tps,
        "trainer_mfu": ours_mfu,
        "reference_mfu": ref_tps * per_token / peak,
        "peak_flops": peak,
        "peak_source": source,
        "device": name,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--sizes", default=",".join(SIZES))
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--device", default="cuda", help="cpu: a smoke test of the script itself")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_trainer_gpu.py needs a CUDA GPU; on CPU run bench_trainer.py")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = token_file(Path(tmp), 64 << 20 if args.device == "cuda" else 1 << 20)
        for size in args.sizes.split(","):
            rows.append(measure(folder, size, args.steps, args.warmup, args.device))
            if not args.json:
                r = rows[-1]
                print(
                    f"{size:>5}: N {r['n_params']['total']:,}  trainer {r['trainer_tokens_per_s']:,.0f} "
                    f"tok/s (MFU {r['trainer_mfu']:.1%})  reference {r['reference_tokens_per_s']:,.0f} "
                    f"tok/s  ratio {r['ratio']:.3f} (target >= 0.95)",
                    flush=True,
                )
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
