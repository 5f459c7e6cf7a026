"""A run of several workers: one Ray Train `TorchTrainer` (a placement group of k workers, one
process group over gloo on CPUs or NCCL on GPUs) behind the same launcher seam as a one-worker
run. The driver still sees one run: one stream of metrics (rank 0's) and one result.

  - `group_task` is the Ray task the launcher submits. It reserves nothing itself (its workers
    hold the resources), starts the TorchTrainer and waits for it, then reads the result that
    rank 0 wrote beside the run's checkpoint.
  - Every worker runs `_worker_loop`: the built-in loop (trainers/train.py reads the process
    group and trains data-parallel) or the user's own trainer, which gets `config.world`.
  - A worker that dies fails the group; Ray Train restarts the whole group (up to
    ray.max_retries times) and every rank resumes from the last checkpoint rank 0 wrote.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import ray

from orchestrator.study.schema import Placement
from orchestrator.sweep.stopping import StopRules
from orchestrator.sweep.worker import Reporter, failed_result, where

RESULT_FILE = "grokscale_group_result.json"  # rank 0's result, beside the run's checkpoint


def _write_result(checkpoint_dir: str, out: dict) -> None:
    path = Path(checkpoint_dir) / RESULT_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(out))
    os.replace(tmp, path)


def _worker_loop(config: dict) -> None:
    """One rank of the run (Ray Train calls it on every worker, process group initialized)."""
    import torch
    from ray import train as ray_train

    from trainers import TrainSpec, train
    from trainers.protocol import UserSpec, is_user_spec

    context = ray_train.get_context()
    rank, local_rank = context.get_world_rank(), context.get_local_rank()
    os.environ["LOCAL_RANK"] = str(local_rank)  # trainers/world.py reads it
    if torch.cuda.is_available() and config["use_gpu"]:
        from ray.train.torch import get_device

        torch.cuda.set_device(get_device())  # the loop trains on the current device
    spec_json, checkpoint_dir = config["spec_json"], config["checkpoint_dir"]
    try:
        if is_user_spec(spec_json):
            from orchestrator.sweep.user_trainer import run_user_trainer

            spec = UserSpec.model_validate_json(spec_json)
            report = Reporter(config["inbox"], config["run_id"], spec, config["rules"], checkpoint_dir)
            out = run_user_trainer(spec, report, checkpoint_dir, finish=report.finish)
        else:
            spec = TrainSpec.model_validate_json(spec_json)
            report = Reporter(config["inbox"], config["run_id"], spec, config["rules"], checkpoint_dir)
            out = report.finish(train(spec, report=report, checkpoint_dir=checkpoint_dir).to_dict())
    except Exception:  # noqa: BLE001 - a run's failure is data (an error, not a dead worker)
        out = failed_result()
    if rank == 0:
        _write_result(checkpoint_dir, {**out, **where(workers=config["workers"])})


@ray.remote(num_cpus=0)
def group_task(
    spec_json: str,
    checkpoint_dir: str,
    inbox,
    run_id: str,
    rules: StopRules,
    placement: Placement,
    max_failures: int,
) -> dict:
    """One run of `placement.workers` workers through Ray Train; its result (rank 0's)."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    started = time.time()
    Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
    (Path(checkpoint_dir) / RESULT_FILE).unlink(missing_ok=True)  # an earlier attempt's
    use_gpu = placement.gpus > 0
    resources = {"CPU": placement.cpus, **({"GPU": placement.gpus_per_worker} if use_gpu else {})}
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={
            "spec_json": spec_json,
            "checkpoint_dir": checkpoint_dir,
            "inbox": inbox,
            "run_id": run_id,
            "rules": rules,
            "use_gpu": use_gpu,
            "workers": placement.workers,
        },
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=placement.workers,
            use_gpu=use_gpu,
            resources_per_worker=resources,
            placement_strategy="STRICT_PACK" if placement.nodes == 1 else "SPREAD",
        ),
        run_config=RunConfig(
            name=f"grokscale-{run_id}",
            storage_path=str(Path(checkpoint_dir) / "ray_train"),
            failure_config=FailureConfig(max_failures=max_failures),
        ),
    )
    try:
        trainer.fit()
        out = json.loads((Path(checkpoint_dir) / RESULT_FILE).read_text())
    except Exception:  # noqa: BLE001 - the group failed more often than allowed: data, not a crash
        out = {**failed_result(), **where(workers=placement.workers)}
    return {**out, "started_at": started, "ended_at": time.time()}
