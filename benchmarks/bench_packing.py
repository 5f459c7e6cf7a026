"""Trial packing throughput: K runs packed into one batched model against K runs trained apart.

The model is a small grokking transformer (modular addition, p = 59, 30% of pairs, full batch,
1 layer, d_model 32, 4 heads, no LayerNorm); the K runs differ in seed and weight decay, as the
runs of one cell do. Throughput is trial-steps per second: K * steps / wall seconds, set-up
(data, init) included, one evaluation at the end. Each way is timed best of --repeats,
interleaved so that drift in the machine hits all of them alike. On a shared machine wall time
depends on what else runs, so the CPU seconds each way used (its processes' own, summed) are
reported too: trial-steps per CPU second is what a cluster whose cores are all busy gets.

On CPU, with W = the machine's cores:
  packed                one process, train_packed over all K, 1 thread
  packed, W threads     one process, train_packed over all K, W threads
  packed in W processes a pool of W processes, each train_packed over K / W runs, 1 thread each
  K processes           a pool of W processes running the K train() calls, 1 thread each (what
                        a Ray cluster of W CPUs does with K one-CPU tasks)
  sequential            the K train() calls one after another in this process, 1 thread
On CUDA (when torch.cuda.is_available()): packed on the GPU against the K train() calls one
after another on the same GPU.

The packed results are checked against the separate runs (max relative difference of the final
validation loss), so a figure never comes from a pack that computed something else.

Usage: python benchmarks/bench_packing.py [--ks 4 16 64] [--steps 40] [--p 59] [--d-model 32]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time

import torch

from trainers import TrainSpec, train
from trainers.packed import train_packed


def make_specs(k: int, args, device: str, threads: int = 1) -> list[TrainSpec]:
    return [
        TrainSpec.model_validate(
            {
                "task": {"name": "modular", "p": args.p, "train_fraction": 0.3},
                "model": {"n_layer": 1, "d_model": args.d_model, "n_head": 4, "layer_norm": False},
                "train": {
                    "steps": args.steps,
                    "eval_every": args.steps,
                    "warmup_steps": min(10, args.steps),
                    "threads": threads,
                    "weight_decay": 0.1 + 0.9 * i / max(1, k - 1),
                },
                "seed": i,
                "device": device,
            }
        )
        for i in range(k)
    ]


def _train_one(spec_json: str) -> tuple[list[float], float]:
    """(final val loss, CPU seconds) of one train() call."""
    cpu = time.process_time()
    loss = train(TrainSpec.model_validate_json(spec_json)).final["val_loss"]
    return [loss], time.process_time() - cpu


def _train_pack(spec_jsons: list[str]) -> tuple[list[float], float]:
    """(final val losses, CPU seconds) of one train_packed() call."""
    cpu = time.process_time()
    results = train_packed([TrainSpec.model_validate_json(s) for s in spec_jsons])
    return [r.final["val_loss"] for r in results], time.process_time() - cpu


def _in_pool(pool, fn, items) -> tuple[list[float], float]:
    parts = pool.map(fn, items)
    return [v for losses, _ in parts for v in losses], sum(cpu for _, cpu in parts)


def _one_by_one(fn, items) -> tuple[list[float], float]:
    parts = [fn(item) for item in items]
    return [v for losses, _ in parts for v in losses], sum(cpu for _, cpu in parts)


def _warm(spec_json: str) -> None:
    """A worker's first train() and train_packed() pay one-off costs (imports, kernel set-up)."""
    _train_one(spec_json)
    _train_pack([spec_json, spec_json])
    time.sleep(1)  # so that the other workers take the other warm-up tasks


def timed(fn) -> tuple[float, float, list[float]]:
    """(wall seconds, CPU seconds, final val losses) of one way of training the K runs."""
    t = time.perf_counter()
    losses, cpu = fn()
    return time.perf_counter() - t, cpu, losses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ks", type=int, nargs="+", default=[4, 16, 64])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--p", type=int, default=59)
    ap.add_argument("--d-model", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    workers = os.cpu_count() or 1
    load = os.getloadavg()[0]
    out: dict = {
        "device": torch.cuda.get_device_name() if cuda else f"cpu x{workers}",
        "task": f"modular p={args.p}, 30% of pairs, full batch",
        "d_model": args.d_model,
        "steps": args.steps,
        "repeats": args.repeats,
        "load_average_at_start": load,
        "k": {},
    }
    pool = None if cuda else mp.get_context("spawn").Pool(workers)
    warm = make_specs(1, argparse.Namespace(**{**vars(args), "steps": 2}), "cuda" if cuda else "cpu")[0]
    if pool is not None:
        pool.map(_warm, [warm.model_dump_json()] * workers, chunksize=1)
    _warm(warm.model_dump_json())

    for k in args.ks:
        jsons = [s.model_dump_json() for s in make_specs(k, args, "cuda" if cuda else "cpu")]
        # Each lambda binds this k's lists as defaults: they are all called within this iteration,
        # but binding says so (and keeps them right if they were ever called later).
        if cuda:
            ways = {
                "packed": lambda jsons=jsons: _train_pack(jsons),
                "sequential": lambda jsons=jsons: _one_by_one(_train_one, jsons),
            }
        else:
            wide = [s.model_dump_json() for s in make_specs(k, args, "cpu", threads=workers)]
            packs = [jsons[i::workers] for i in range(workers) if jsons[i::workers]]
            ways = {
                "packed": lambda jsons=jsons: _train_pack(jsons),
                f"packed, {workers} threads": lambda wide=wide: _train_pack(wide),
                f"packed in {workers} processes": lambda packs=packs: _in_pool(pool, _train_pack, packs),
                f"{k} processes": lambda jsons=jsons: _in_pool(pool, _train_one, jsons),
                "sequential": lambda jsons=jsons: _one_by_one(_train_one, jsons),
            }
        best = {name: float("inf") for name in ways}
        best_cpu = {name: float("inf") for name in ways}
        losses: dict[str, list[float]] = {}
        for _ in range(args.repeats):
            for name, fn in ways.items():
                secs, cpu, losses[name] = timed(fn)
                best[name], best_cpu[name] = min(best[name], secs), min(best_cpu[name], cpu)
        if not cuda:  # the pool's packs hold runs i, i + W, ...: back into spec order
            name = f"packed in {workers} processes"
            flat, order = losses[name], [i for w in range(workers) for i in range(w, k, workers)]
            losses[name] = [flat[order.index(i)] for i in range(k)]
        ref = losses["sequential"]
        row = {
            name: {
                "trial_steps_per_s": k * args.steps / secs,
                "seconds": secs,
                "trial_steps_per_cpu_s": k * args.steps / best_cpu[name],
                "cpu_seconds": best_cpu[name],
            }
            for name, secs in best.items()
        }
        row["speedup_packed_vs_sequential"] = best["sequential"] / best["packed"]
        row["cpu_efficiency_packed_vs_sequential"] = best_cpu["sequential"] / best_cpu["packed"]
        if not cuda:
            row["speedup_packed_vs_k_processes"] = best[f"{k} processes"] / best["packed"]
            row[f"speedup_packed_in_{workers}_processes_vs_k_processes"] = (
                best[f"{k} processes"] / best[f"packed in {workers} processes"]
            )
            row["cpu_efficiency_packed_vs_k_processes"] = best_cpu[f"{k} processes"] / best_cpu["packed"]
        row["max_rel_diff_final_val_loss"] = max(
            abs(a - b) / abs(b) for name in losses for a, b in zip(losses[name], ref)
        )
        out["k"][k] = row
        print(
            f"K={k}: " + ", ".join(f"{n} {best[n]:.2f}s ({best_cpu[n]:.2f} CPU s)" for n in best), flush=True
        )
    out["load_average_at_end"] = os.getloadavg()[0]
    if pool is not None:
        pool.close()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
