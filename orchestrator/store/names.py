"""Every name grokscale writes into MLflow and Optuna, in one place.

The driver writes these, the results reader, `status`, `reproduce` and the report read them
back; a name spelled in two files drifts (MLflow keeps its own system tags the same way, in
`mlflow/utils/mlflow_tags.py`). Statuses and stop kinds are enums, so a comparison against a
misspelt status fails at import, not silently at run time.
"""

from __future__ import annotations

from enum import Enum


class RunStatus(str, Enum):
    """How one training run ended (the `grokscale.status` tag; `running` while it trains)."""

    RUNNING = "running"
    COMPLETED = "completed"  # its budget, or success-stop
    DIVERGED = "diverged"  # a loss or an evaluation was not finite
    STOPPED = "stopped"  # a stopping rule ended it: its answer was known
    FAILED = "failed"  # an error, a refused value, or a worker that died past its retries

    def __str__(self) -> str:  # tags and f-strings get the bare word
        return self.value


# Runs whose metrics mean what they say (a diverged or failed run's do not).
USABLE_STATUSES = (RunStatus.COMPLETED.value, RunStatus.STOPPED.value)


class StopKind(str, Enum):
    """Which stopping rule stopped a run: the driver tells rules apart by kind, never by text."""

    OBJECTIVE = "objective"  # cannot beat its cell's best step
    DECAY_CLOCK = "decay_clock"  # phase: its whole decay budget is below what others failed with
    STALLED = "stalled"  # phase: flat at equilibrium after enough e-folds of decay

    def __str__(self) -> str:
        return self.value


# MLflow: system tags we set.
PARENT_RUN = "mlflow.parentRunId"

# MLflow tags on the study's parent run.
TAG_ROLE = "grokscale.role"  # "study" on the parent run
ROLE_STUDY = "study"
TAG_STUDY = "grokscale.study"
TAG_CONFIG_HASH = "grokscale.config_hash"
TAG_GIT_COMMIT = "grokscale.git_commit"
TAG_VERSION_PREFIX = "grokscale.version."  # + package name
TAG_REPORT = "grokscale.report"  # the plots the report logged
TAG_REFINE_SUMMARY = "grokscale.refine"  # what grid.refine added, in one line (the whole: ARTIFACT_REFINE)
# Runs whose record is incomplete because the store refused one of their writes or it failed for good
# (their own grokscale.reason says which): how many, on the parent run.
TAG_WRITE_FAILURES = "grokscale.write_failures"

# MLflow tags on each child run (one training: a trial under one seed).
TAG_RUN_KEY = "grokscale.run_key"  # cell/trial=N/seed=S: how a resumed driver finds the run again
TAG_CELL = "grokscale.cell"
TAG_TRIAL_NUMBER = "grokscale.trial_number"
TAG_SEED = "grokscale.seed"
TAG_STATUS = "grokscale.status"  # a RunStatus
TAG_REASON = "grokscale.reason"
TAG_STOP_KIND = "grokscale.stop_kind"  # a StopKind, on a stopped run
TAG_ATTEMPTS = "grokscale.attempts"
TAG_RESUMED_FROM_STEP = "grokscale.resumed_from_step"
TAG_NODE_ID = "grokscale.node_id"
TAG_CHECKPOINT_NOTE = "grokscale.checkpoint_note"  # why a run's checkpoint was not used (it started over)
# + device, precision, compiled, world_size, peak_flops, peak_source, determinism, machine: how the
# run executed (trainers/device.py: Runtime); what `grokscale reproduce` compares before promising bits.
TAG_RUNTIME_PREFIX = "grokscale.runtime."
TAG_FLOPS_PREFIX = "grokscale.flops."  # + per_example, per_token, n_matmul, ...: the run's FLOP accounting
TAG_REFINED = (
    "grokscale.refined"  # "round k": a run of a cell grid.refine added (orchestrator/sweep/refine.py)
)
# Metrics, params and tags MLflow would refuse (a name it does not take, a value that is no number),
# dropped alone before they were sent (store/keys.py): on a run, JSON {"metric <key>": why, ...}; on
# the parent run, JSON {"metric <key>": how many runs dropped it, ...}.
TAG_DROPPED_KEYS = "grokscale.dropped_keys"

# MLflow params on each child run.
PARAM_CELL = "cell"
PARAM_N_PARAMS = "n_params"
PARAM_N_PARAMS_NON_EMBEDDING = "n_params_non_embedding"
PARAM_N_PARAMS_EMBEDDING = "n_params_embedding"
PARAM_N_TRAIN = "n_train"
PARAM_D_VALUE = "d_value"
PARAM_SEED = "seed"
PARAM_TRIAL_NUMBER = "optuna_trial_number"
PARAM_SPEC_JSON = "spec_json"  # the run's whole TrainSpec; a longer one is cut, and is the ARTIFACT_SPEC too
PARAM_MAX_CHARS = 6000  # MLflow's limit on a param value
PARAM_SEARCHED_PREFIX = "param."  # + the searched field's dotted path

# MLflow metrics: curves by their record key at every evaluation; final values with this prefix.
FINAL_PREFIX = "final."
N_PARAMS_METRIC_PREFIX = "n_params_"  # + group, among the final metrics

# Optuna: study user attributes (one Optuna study per cell).
STUDY_N_PARAMS = "n_params"
STUDY_N_TRAIN = "n_train"
STUDY_SHAPE = "shape"

# Optuna: trial user attributes.
TRIAL_STATUS = "status"
TRIAL_REASON = "reason"
TRIAL_STOP_KIND = "stop_kind"
TRIAL_PRUNED = "pruned"  # the TRIAL_STATUS of a trial a stopping rule ended


def trial_run_id(seed: int) -> str:
    """The trial attribute that holds the MLflow run id of its run under `seed`."""
    return f"{RUN_ID_PREFIX}{seed}"


RUN_ID_PREFIX = "run_id.seed="


def trial_generalization_step(seed: int) -> str:
    return f"generalization_step.seed={seed}"


def trial_decay_unresolved(seed: int) -> str:
    """What the run under `seed` taught the phase rule (orchestrator/sweep/stopping), for resume."""
    return f"decay_unresolved.seed={seed}"


def refined_round(k: int) -> str:
    """The TAG_REFINED value of a cell added in refinement round k (1, 2, ...)."""
    return f"round {k}"


def run_key(cell_key: str, trial_number: int, seed: int) -> str:
    return f"{cell_key}/trial={trial_number}/seed={seed}"


def optuna_study_name(study_name: str, cell_key: str) -> str:
    """The Optuna study of one cell: one storage holds every cell of every study."""
    return f"{study_name}/{cell_key}"


# MLflow artifacts: the resolved study on the parent run, the spec on a child run whose spec is
# too long for its param, and the report's folder on the parent run.
ARTIFACT_STUDY = "study.yaml"
ARTIFACT_SPEC = "spec.json"
ARTIFACT_REPORT = "report"
ARTIFACT_REFINE = "refine.json"  # on the parent run: the cells grid.refine added and why each line stopped
# MLflow metrics on the parent run: every number the report fitted, under this prefix.
REPORT_METRIC_PREFIX = "report/"


def search_literal(value: str) -> str:
    """`value` as a string in an MLflow search filter. MLflow keeps the text between the quotes as
    it is, with no escapes (mlflow/utils/search_utils.py, `_strip_quotes`): doubling a `'` would
    search for two. So a value holding a `'` goes in double quotes; one holding both kinds of quote
    cannot be written at all and is refused, rather than searched for as something else."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValueError(f"{value!r} holds both ' and \", which an MLflow search filter cannot express")


def tag_equals(tag: str, value: str) -> str:
    """An MLflow search filter: runs whose `tag` is `value`."""
    return f"tags.`{tag}` = {search_literal(value)}"
