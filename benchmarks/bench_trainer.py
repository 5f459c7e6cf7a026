"""Trainer throughput on the canonical grokking model, against baselines measured in the same run.

Model and data of Nanda et al. (2023): modular addition, p = 113, 30% of pairs for training,
a 1-layer transformer with d_model 128, 4 heads, d_mlp 512, no LayerNorm, full batch, AdamW.

Baselines, measured here and now:
  (a) a plain, minimal PyTorch loop on the same model and data (written below), twice: reading
      logits at every position then taking the last (what a plain loop does), and with the
      model's last-position path (exactly the trainer's arithmetic);
  (b) this machine's float32 matmul peak (2048^3 matmuls) at the same thread count.
Target: the trainer at >= 1.0x the plain loop (0.98x on a loaded machine).

Usage: python benchmarks/bench_trainer.py [--steps 150] [--threads 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from trainers import TrainSpec, train
from trainers.models import build_model, init_weights
from trainers.tasks import make_task

CANONICAL = {
    "task": {"name": "modular", "p": 113, "train_fraction": 0.3},
    "model": {"n_layer": 1, "d_model": 128, "n_head": 4, "d_mlp": 512, "layer_norm": False},
    "train": {"lr": 1e-3, "weight_decay": 1.0, "betas": [0.9, 0.98], "warmup_steps": 10},
}


def matmul_peak(threads: int, n: int = 2048, repeats: int = 5) -> float:
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def plain_loop(spec: TrainSpec, steps: int, last_only: bool) -> float:
    """The minimal loop a person would write: seconds for `steps` steps."""
    torch.set_num_threads(spec.train.threads)
    data = make_task(spec.task, spec.seed)
    torch.manual_seed(spec.seed)
    model = build_model(spec.model, data.vocab_size, data.n_out, data.seq_len)
    init_weights(model, 1.0)
    opt = torch.optim.AdamW(
        model.parameters(), lr=spec.train.lr, betas=spec.train.betas, weight_decay=spec.train.weight_decay
    )
    x, y = data.x_train, data.y_train
    t = time.perf_counter()
    for _ in range(steps):
        logits = model(x, last_only=True) if last_only else model(x)[:, -1]
        loss = F.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - t


def trainer_time(spec: TrainSpec) -> float:
    """Seconds of the whole run, set-up included, less its one closing evaluation."""
    result = train(spec)
    return result.wall_time_s - result.eval_time_s


def flops_per_step(spec: TrainSpec) -> int:
    data = make_task(spec.task, spec.seed)
    model = build_model(spec.model, data.vocab_size, data.n_out, data.seq_len)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(data.x_train, last_only=True), data.y_train).backward()
    return counter.get_total_flops()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="best of this many runs of each loop")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    # One evaluation, at the end: the plain loop evaluates nothing, so the trainer's eval cadence
    # is kept out of the comparison (it is cost a study chooses, not loop overhead).
    spec = TrainSpec.model_validate(
        {
            **CANONICAL,
            "train": {
                **CANONICAL["train"],
                "steps": args.steps,
                "eval_every": args.steps,
                "threads": args.threads,
            },
        }
    )
    n_train = make_task(spec.task, spec.seed).n_train
    flops = flops_per_step(spec)
    plain_full = plain_last = ours = float("inf")
    for _ in range(args.repeats):  # interleaved, so drift in the machine hits all three alike
        plain_full = min(plain_full, plain_loop(spec, args.steps, last_only=False))
        plain_last = min(plain_last, plain_loop(spec, args.steps, last_only=True))
        ours = min(ours, trainer_time(spec))
    peak = matmul_peak(args.threads)
    rows = {
        "trainer": ours,
        "plain loop (same arithmetic)": plain_last,
        "plain loop (all positions)": plain_full,
    }
    out = {
        "threads": args.threads,
        "steps": args.steps,
        "n_train": n_train,
        "flops_per_step": flops,
        "matmul_peak_gflops": peak / 1e9,
    }
    for name, secs in rows.items():
        out[name] = {
            "examples_per_s": n_train * args.steps / secs,
            "gflops": flops * args.steps / secs / 1e9,
            "ms_per_step": secs / args.steps * 1e3,
        }
    out["speedup_vs_plain_same_arithmetic"] = plain_last / ours
    out["speedup_vs_plain_all_positions"] = plain_full / ours
    out["fraction_of_peak"] = flops * args.steps / ours / peak
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(
        f"canonical grokking model, p=113, {n_train} examples full batch, {args.threads} thread(s), "
        f"{args.steps} steps, best of {args.repeats}"
    )
    print(f"{'loop':32} {'ms/step':>9} {'examples/s':>12} {'GFLOP/s':>9}")
    for name in rows:
        r = out[name]
        print(f"{name:32} {r['ms_per_step']:9.2f} {r['examples_per_s']:12,.0f} {r['gflops']:9.2f}")
    print(f"matmul peak (float32, 2048^3): {out['matmul_peak_gflops']:.1f} GFLOP/s")
    print(
        f"trainer / plain loop, same arithmetic: {out['speedup_vs_plain_same_arithmetic']:.2f}x "
        "(target >= 1.0x)"
    )
    print(f"trainer / plain loop, all positions:   {out['speedup_vs_plain_all_positions']:.2f}x")
    print(f"trainer fraction of matmul peak:       {out['fraction_of_peak']:.1%}")


if __name__ == "__main__":
    main()
