"""What one sweep did: the driver's return value, read by the CLI and the benchmarks."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from orchestrator.store.names import RunStatus


@dataclass
class SweepStats:
    """Counts per final run status, and where the time went."""

    completed: int = 0
    diverged: int = 0
    failed: int = 0  # runs, and trials whose values the trainer refused before any run
    stopped: int = 0  # by a stopping rule (pruned)
    resumed: int = 0  # runs that went on from a checkpoint
    packed_tasks: int = 0  # Ray tasks that trained several runs as one batched model
    capacity: int = 0  # runs the cluster holds at once
    busy_s: float = 0.0  # summed time runs spent training (a pack's time shared among its runs)
    startup_s: float = 0.0  # Ray, MLflow, Optuna: before the first submission
    scheduled_s: float = 0.0  # from the first submission to the last result recorded
    wall_time_s: float = 0.0  # from the first submission to the end, MLflow drained
    first_submit_at: float = 0.0  # epoch seconds
    last_recorded_at: float = 0.0  # epoch seconds
    timeline: list[tuple[int, float, float]] = field(default_factory=list)  # (worker pid, started, ended)
    parent_run_id: str = ""  # the study's MLflow parent run
    dropped_keys: int = 0  # metrics, params and tags MLflow would refuse, dropped alone (a key once a run)
    write_failures: int = 0  # runs failed because MLflow refused one of their writes, or it failed for good

    def count(self, status: RunStatus) -> None:
        """One more run ended so (RUNNING is no end)."""
        if status == RunStatus.RUNNING:
            raise ValueError("a run that ended cannot be running")
        name = RunStatus(status).value
        setattr(self, name, getattr(self, name) + 1)

    def recount(self, was: RunStatus, now: RunStatus) -> None:
        """A run counted as `was` ended as `now` after all (its record could not be written whole)."""
        setattr(self, was.value, getattr(self, was.value) - 1)
        self.count(now)

    def add_span(self, result: dict) -> None:
        """On which worker a run trained, from when to when, and its busy time. The runs of a
        pack share its task: its span is listed once and its time shared among them."""
        if "started_at" not in result:  # a worker that died past its retries reports none
            return
        span = (result["worker_pid"], result["started_at"], result["ended_at"])
        if result.get("packed"):
            self.busy_s += (span[2] - span[1]) / result["packed"]
            if span not in self.timeline:
                self.timeline.append(span)
        else:
            self.busy_s += result.get("wall_time_s", 0.0)
            self.timeline.append(span)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
