#!/usr/bin/env bash
# Every GPU measurement of the project in one run, for a machine with a CUDA GPU (the `device`
# tool lends one for ~15 minutes). Writes its output under ${OUT:-benchmarks/results/gpu}/, to be
# committed. Each step has its own time limit, so one that hangs does not eat the others' time.
#   bash benchmarks/gpu_checks.sh          (from the repository root, torch with CUDA installed)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results/gpu}"
mkdir -p "$OUT"
PY="${PY:-python}"
{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
} > "$OUT/machine.txt" 2>&1
# 1. The loop's GPU tests (precision, tf32, compile, repeatability, micro-batches).
timeout 300 "$PY" -m pytest tests/gpu -q -p no:cacheprovider > "$OUT/tests_gpu.txt" 2>&1
# 2. Trainer vs a nanoGPT-style loop: tokens/s and MFU at ~20M, 125M, 350M, bf16 (target >= 0.95x).
timeout 420 "$PY" benchmarks/bench_trainer_gpu.py --json > "$OUT/trainer_gpu.json" 2> "$OUT/trainer_gpu.err"
# 3. Packing: 64 tiny grokking runs packed on the GPU against one after another (target >= 20x).
timeout 300 "$PY" benchmarks/bench_packing.py --ks 64 --steps 40 --repeats 1 > "$OUT/packing_gpu.txt" 2>&1
# 4. Two GPUs: a 2-worker DDP run against a 1-worker run of the same spec, where there are two.
if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then
  timeout 300 "$PY" -m pytest tests/unit/test_loop_scale.py -q -k gloo > "$OUT/two_workers.txt" 2>&1
else
  echo "one GPU: the 2-GPU DDP check did not run (the CPU gloo tests stand)" > "$OUT/two_workers.txt"
fi
# 5. The driver at scale on this machine's cores, where PostgreSQL is installed.
if command -v pg_ctl >/dev/null || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  timeout 400 "$PY" benchmarks/bench_driver_scale.py --out "$OUT/driver_scale.json" > "$OUT/driver_scale.txt" 2>&1
else
  echo "no PostgreSQL on this machine: bench_driver_scale.py did not run" > "$OUT/driver_scale.txt"
fi
ls -l "$OUT"
