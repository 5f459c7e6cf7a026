"""The launcher seam: how the driver starts runs and hears from them. `RayLauncher` runs them as
Ray tasks (worker.py); anything with the same methods (submit, poll, records, post_rules,
running, close) can stand in for it, a simulated cluster for instance.

Workers post their evaluations to an `Inbox` actor; the driver takes them all at once each tick
and answers each post with the run's newest stop rules, so no one ever waits on the other.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from orchestrator.store.names import RunStatus
from orchestrator.study import Study
from orchestrator.study.grid import Cell
from orchestrator.sweep.group import group_task
from orchestrator.sweep.stopping import StopRules
from orchestrator.sweep.unit import Unit
from orchestrator.sweep.worker import UNSET, packed_task, train_task

MAX_WARM_WORKERS = 64
INBOX_TIMEOUT_S = 60


class ClusterLost(RuntimeError):
    """This driver's own Ray is gone (its raylet died: `ray stop`, an out-of-memory kill, the head
    lost). The runs in flight did not fail, so none is recorded as failed: they are left RUNNING,
    as a killed driver leaves them, and the same command resumes them from their checkpoints."""

    def __init__(self, err: Exception) -> None:
        super().__init__(
            f"this study's Ray died under it ({type(err).__name__}); the runs in flight were not "
            f"recorded as failed: run the same command again to resume them from their checkpoints"
        )


@ray.remote(num_cpus=0)
class Inbox:
    """Where workers post metric records while they train; the driver takes them all at once."""

    def __init__(self) -> None:
        self.items: list[tuple[str, dict]] = []
        self.rules: dict[str, StopRules] = {}  # run id -> its stop rules, from the driver

    def put(self, item: tuple[str, dict]) -> StopRules | str:
        """Take a record; answer with the rules the driver last posted for the run, or UNSET
        (the worker reads the answer when it has arrived, never waiting for it)."""
        self.items.append(item)
        return self.rules.get(item[0], UNSET)

    def set_rules(self, run_id: str, rules: StopRules) -> None:
        self.rules[run_id] = rules

    def take(self) -> list[tuple[str, dict]]:
        items, self.items = self.items, []
        return items


@ray.remote(num_cpus=1)
def warm_up() -> None:
    """Import torch and the trainers on a worker while the driver sets up MLflow and Optuna."""
    import trainers  # noqa: F401 - the import is the warm-up


def connect(study: Study) -> None:
    if ray.is_initialized():
        return
    if not study.ray.local():
        # `ray.address`, else RAY_ADDRESS (`ray job submit` sets it), read by ray.init. The cluster's
        # size is its own: Ray refuses num_cpus when joining, so `ray.num_cpus` is not passed.
        ray.init(address=study.ray.address, log_to_driver=False)
    else:
        # Local: no dashboard, so nothing listens.
        ray.init(
            num_cpus=study.ray.num_cpus,
            include_dashboard=False,
            log_to_driver=False,
            dashboard_host="127.0.0.1",
        )


def capacity(study: Study, cells: list[Cell]) -> int:
    """How many runs fit on the cluster at once, for the smallest request in the study."""
    total = ray.cluster_resources()
    best = 0
    for cell in cells:
        placement = study.resources.for_n(cell.n(study.grid.n_convention))
        cpus, gpus = placement.cpus * placement.workers, placement.gpus
        fit = total.get("CPU", 0) // cpus if cpus else math.inf
        if gpus:
            fit = min(fit, total.get("GPU", 0) // gpus)
        best = max(best, fit)
    return max(1, int(best)) if best != math.inf else 1


class RayLauncher:
    """Runs on a Ray cluster (local or joined), their records, and their stop rules."""

    def __init__(self, study: Study, cells: list[Cell]) -> None:
        self.study = study
        connect(study)
        self.capacity = capacity(study, cells)
        self._warm = [warm_up.remote() for _ in range(min(self.capacity, MAX_WARM_WORKERS))]
        # On the driver's own node: an actor dies with its node, and a dead inbox would stop the driver.
        self.inbox = Inbox.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(
                ray.get_runtime_context().get_node_id(), soft=False
            )
        ).remote()
        self.in_flight: dict[ray.ObjectRef, list[Unit]] = {}  # a task -> its runs (several when packed)

    def wait_warm(self) -> None:
        """Until the workers started at construction have imported the trainers."""
        ray.get(self._warm)

    def __len__(self) -> int:
        """Tasks in flight."""
        return len(self.in_flight)

    def running(self) -> Iterator[Unit]:
        """Every run in flight (or queued on Ray behind a busy slot)."""
        for units in self.in_flight.values():
            yield from units

    def submit(self, units: list[Unit]) -> None:
        """One task for these runs of one cell: a packed one when there are several, a process
        group (Ray Train) for a run given several workers."""
        placement = self.study.resources.for_n(units[0].cell.n(self.study.grid.n_convention))
        if placement.group:
            u = units[0]
            # Ray Train restarts a group whose worker died; the task itself holds no resources.
            ref = group_task.options(max_retries=self.study.ray.max_retries, retry_exceptions=False).remote(
                u.spec.model_dump_json(),
                u.checkpoint_dir,
                self.inbox,
                u.run_id,
                u.rules,
                placement,
                self.study.ray.max_retries,
            )
            self.in_flight[ref] = units
            return
        task = packed_task if len(units) > 1 else train_task
        task = task.options(
            num_cpus=placement.cpus,
            num_gpus=placement.gpus,
            max_retries=self.study.ray.max_retries,
            retry_exceptions=False,
        )
        if len(units) > 1:
            ref = task.remote(
                [u.spec.model_dump_json() for u in units],
                [u.checkpoint_dir for u in units],
                self.inbox,
                [u.run_id for u in units],
                [u.rules for u in units],
            )
        else:
            u = units[0]
            ref = task.remote(u.spec.model_dump_json(), u.checkpoint_dir, self.inbox, u.run_id, u.rules)
        self.in_flight[ref] = units

    def poll(self, timeout_s: float) -> list[tuple[Unit, dict]]:
        """Wait up to `timeout_s` for a task to finish, then take every finished one: each run
        with its result (a worker that died more often than max_retries: a failed result)."""
        if not self.in_flight:
            return []
        ready, rest = ray.wait(list(self.in_flight), num_returns=1, timeout=timeout_s)
        if ready and rest:
            ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
        done, lost = [], None
        for ref in ready:
            units = self.in_flight.pop(ref)
            try:
                results = ray.get(ref)
            except ray.exceptions.LocalRayletDiedError as err:  # not the runs' failure: the cluster's
                self.in_flight[ref], lost = units, err  # the runs that did finish are taken first
                continue
            except ray.exceptions.RayError as err:
                results = [
                    {"status": RunStatus.FAILED.value, "reason": f"{type(err).__name__}: {err}"[:4000]}
                    for _ in units
                ]
            done += zip(units, results if isinstance(results, list) else [results])
        if lost is not None and not done:
            raise ClusterLost(lost) from lost
        return done

    def records(self) -> list[tuple[str, dict]]:
        """Every (run id, record) posted since the last call. Live metrics are best effort: each
        run's whole history comes back with its result."""
        try:
            return ray.get(self.inbox.take.remote(), timeout=INBOX_TIMEOUT_S)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            return []

    def post_rules(self, run_id: str, rules: StopRules) -> None:
        self.inbox.set_rules.remote(run_id, rules)

    def close(self) -> None:
        ray.kill(self.inbox)
