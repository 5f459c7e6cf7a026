"""The study's schema: frozen pydantic models with unknown keys forbidden.

Validators raise `PydanticCustomError` with the message a person needs (what is wrong, what is
allowed); orchestrator/study/errors.py adds the path from pydantic's location and the value.
The task, model and train sections stay plain data here: each cell turns them into a trainer
`TrainSpec`, which validates them (orchestrator/study/checks.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PositiveFloat,
    PositiveInt,
    Tag,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from orchestrator.study.length import STUDY_ONLY_KEYS, Length, study_length
from orchestrator.study.rules import Rule, is_rule, plain
from orchestrator.study.tasks import task_kinds
from trainers.overrides import apply_overrides

# Objective metrics computed from a run beyond its final evaluation record.
DERIVED_METRICS = (
    "max_val_acc",
    "min_val_loss",
    "generalization_step",
    "memorization_step",
    "grokking_delay",
    "steps",
)
FINAL_METRICS = ("val_acc", "val_loss", "train_acc", "train_loss", "weight_norm")
SEQUENCE_METRICS = ("val_token_acc", "val_answer_logprob", "train_token_acc", "train_answer_logprob")
SAMPLERS = ("tpe", "random", "grid", "cmaes", "nsgaii", "qmc")
PRUNE_MODES = ("off", "objective", "phase")
NAME = re.compile(r"[A-Za-z0-9_.-]+")


class Strict(BaseModel):
    # NaN and +-inf are refused in every float field (a bound, a budget, a range): each would pass a
    # `gt=0` check and fail later as an OverflowError or a run that never ends.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _check_range(low: float, high: float, log: bool) -> None:
    if low >= high:
        raise PydanticCustomError(
            "range_inverted",
            "low ({low}) must be < high ({high})",
            {"field": "low", "low": low, "high": high},
        )
    if log and low <= 0:
        raise PydanticCustomError(
            "log_range", "a log-scale range must be > 0, got low = {low}", {"field": "low", "low": low}
        )


class FloatParam(Strict):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _range(self) -> FloatParam:
        _check_range(self.low, self.high, self.log)
        return self


class IntParam(Strict):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: PositiveInt = 1

    @model_validator(mode="after")
    def _range(self) -> IntParam:
        _check_range(self.low, self.high, self.log)
        return self


def _sampler_name(v: str) -> str:
    if v in SAMPLERS or ":" in v:
        return v
    raise PydanticCustomError(
        "sampler_name",
        "one of {known}, or your own sampler as 'package.module:factory' "
        "(any callable returning an optuna.samplers.BaseSampler), got {v}",
        {"known": ", ".join(map(repr, SAMPLERS)), "v": repr(v)},
    )


def _prune_mode(v: str) -> str:
    if v in PRUNE_MODES or ":" in v:
        return v
    raise PydanticCustomError(
        "prune_mode",
        "one of {known}, or your own stopping rule as 'package.module:Rule' "
        "(orchestrator/sweep/stopping/base.py: StoppingRule), got {v}",
        {"known": ", ".join(map(repr, PRUNE_MODES)), "v": repr(v)},
    )


class CategoricalParam(Strict):
    type: Literal["categorical"]
    choices: list[bool | int | float | str | None] = Field(min_length=1)


Param = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]


class Search(Strict):
    # A built-in sampler, or your own by import path (orchestrator/study/plugins.py).
    sampler: Annotated[str, AfterValidator(_sampler_name)] = "tpe"
    trials_per_cell: PositiveInt = 4
    seed: int = Field(default=0, ge=0)  # the sampler's seed; cell i uses seed + i
    # cell: one Optuna study per cell (the nuisance parameters tuned per scale). study: one Optuna
    # study for the whole grid, each trial one set of values run in every cell and judged by the
    # mean of the cells' objectives: a rule's constant (train.lr.value) searched once for every
    # scale (orchestrator/sweep/cell.py: SharedSearch). trials_per_cell then counts its trials.
    scope: Literal["cell", "study"] = "cell"
    # Dotted TrainSpec paths (train.weight_decay, model.dropout, ...) to their ranges.
    space: dict[str, Param] = Field(default_factory=dict)


def _train_entry(v: Any) -> str:
    return "rule" if is_rule(v) else "value"


# A `train:` entry: a number or other trainer value as given, or a rule of scale resolved per run
# (orchestrator/study/rules.py), validated here so that its errors carry their path.
TrainEntry = Annotated[
    Annotated[Rule, Tag("rule")] | Annotated[Any, Tag("value")], Discriminator(_train_entry)
]


class Objective(Strict):
    metric: str = "max_val_acc"
    direction: Literal["maximize", "minimize"] = "maximize"


def _n_kind(v: Any) -> str | None:
    """Which kind of N an entry is: a target parameter count, or a model shape (fields of the
    model section); None is neither, and pydantic reports the union's own error."""
    if isinstance(v, (int, float)) and not isinstance(v, bool) and float(v).is_integer():
        return "count"
    if isinstance(v, dict) and all(isinstance(k, str) for k in v):
        return "shape"
    return None


def _positive_count(v: int) -> int:
    if v <= 0:
        raise PydanticCustomError("n_target", "a target parameter count must be > 0")
    return v


NEntry = Annotated[
    Annotated[int, AfterValidator(_positive_count), Tag("count")] | Annotated[dict[str, Any], Tag("shape")],
    Discriminator(
        _n_kind,
        custom_error_type="n_entry",
        custom_error_message="an N is a target parameter count (e.g. 20000) or a model shape "
        "(e.g. {d_model: 64})",
    ),
]


def _gpus(g: float) -> float:
    if g > 1 and g != int(g):
        raise PydanticCustomError(
            "gpus_whole", "more than one GPU must be a whole number (a fraction <= 1 packs trials on one GPU)"
        )
    return g


Gpus = Annotated[float, Field(ge=0), AfterValidator(_gpus)]


class Refine(Strict):
    """Scales added inside a bracketed emergence threshold (orchestrator/sweep/refine.py)."""

    axis: Literal["n", "d"]  # n: model sizes at each D; d: data sizes at each N
    max_cells: PositiveInt = 6  # cells added in all, over every round and line
    # Stop once the threshold's interval is narrower than this, in decades of the axis: 0.1 is a
    # factor of 1.26, finer than the factor of about 3 of a typical hand-placed grid.
    width_decades: PositiveFloat = 0.1


class TokensPerParam(Strict):
    """The cells an IsoFLOP grid keeps: those whose tokens trained per parameter (grid.n_convention)
    lie in [min, max]. Hoffmann et al. (2022, approach 2) give each budget its own range of sizes
    around its optimum; a window on tokens per parameter does that from one list of sizes, and
    drops the cells far from any optimum (a large model trained a few dozen steps) or beyond the
    data (a small model at a large budget)."""

    min: PositiveFloat | None = None
    max: PositiveFloat | None = None

    @model_validator(mode="after")
    def _ordered(self) -> TokensPerParam:
        if self.min is None and self.max is None:
            raise PydanticCustomError("window_empty", "give min, max or both (tokens per parameter)", {})
        if self.min is not None and self.max is not None and self.min >= self.max:
            raise PydanticCustomError(
                "window_order", "min ({lo}) must be < max ({hi})", {"lo": self.min, "hi": self.max}
            )
        return self

    def holds(self, value: float) -> bool:
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)


class Grid(Strict):
    n: list[NEntry] = Field(min_length=1)
    n_convention: Literal["total", "non_embedding"] = "total"
    # The second axis, one of: d, the unique data (the task's D field), or flops, compute budgets
    # in training FLOPs (an IsoFLOP study: each cell's D and length follow from N and C).
    d: list[PositiveFloat] | None = Field(default=None, min_length=1)
    flops: list[PositiveFloat] | None = Field(default=None, min_length=1)
    tokens_per_param: TokensPerParam | None = None  # an IsoFLOP grid's window; None: every N x C cell
    d_field: str | None = None  # None: the task's default (train_fraction for modular)
    seeds: list[Annotated[int, Field(ge=0)]] = Field(default=[0], min_length=1)
    refine: Refine | None = None  # None: the grid as given

    @field_validator("seeds", "d", "flops")
    @classmethod
    def _unique(cls, v: list | None) -> list | None:
        if v is not None and len(set(v)) != len(v):
            raise PydanticCustomError("not_distinct", "values must be distinct, got {values}", {"values": v})
        return v

    @model_validator(mode="after")
    def _one_axis(self) -> Grid:
        if self.d is None and self.flops is None:
            raise PydanticCustomError(
                "grid_axis",
                "required, but missing: give the data sizes as grid.d, or the "
                "compute budgets of an IsoFLOP study as grid.flops",
                {"field": "d"},
            )
        if self.d is not None and self.flops is not None:
            raise PydanticCustomError(
                "grid_axis",
                "give grid.d (data sizes) or grid.flops (compute budgets, an IsoFLOP study), not both",
                {"field": "flops"},
            )
        if self.tokens_per_param is not None and self.flops is None:
            raise PydanticCustomError(
                "window_isoflop",
                "a window on tokens per parameter picks the cells of an "
                "IsoFLOP grid (grid.flops); with grid.d every cell is given",
                {"field": "tokens_per_param"},
            )
        if self.refine is not None:
            self._check_refine(self.refine)
        return self

    def _check_refine(self, refine: Refine) -> None:
        """A threshold is fitted over at least 3 scales of the refined axis (analysis/emergence.py),
        and an IsoFLOP grid has no D axis of its own to refine."""
        if self.flops is not None:
            raise PydanticCustomError(
                "refine_isoflop",
                "refining needs grid.d: an IsoFLOP study's D follows from N "
                "and C, so it has no emergence threshold over D or at a D "
                "to refine",
                {"field": "refine"},
            )
        given = len(self.n) if refine.axis == "n" else len(self.d or ())
        if given < 3:
            raise PydanticCustomError(
                "refine_scales",
                "refining {axis} needs at least 3 entries in grid.{axis} (an "
                "emergence threshold is fitted over 3 or more scales), got "
                "{given}",
                {"field": "refine.axis", "axis": refine.axis, "given": given},
            )


@dataclass(frozen=True)
class Placement:
    """What one run of a cell is given. A run of one worker is one Ray task; a run of several is
    a Ray Train process group (orchestrator/sweep/group.py), one worker per GPU."""

    cpus: float  # per worker
    gpus: float  # per run, all its workers together
    workers: int = 1
    nodes: int = 1

    @property
    def group(self) -> bool:
        return self.workers > 1

    @property
    def gpus_per_worker(self) -> float:
        return self.gpus / self.workers


class _Request(Strict):
    cpus: PositiveFloat = 1  # per worker
    gpus: Gpus = 0  # a fraction packs several trials on one GPU; more than one spans a group
    # Processes of one run (data-parallel). None: one per GPU when gpus > 1, else one. On CPU,
    # workers > 1 trains one run data-parallel over gloo (the same code as on GPUs).
    workers: PositiveInt | None = None
    nodes: PositiveInt = 1  # the nodes a group's workers are spread over

    @model_validator(mode="after")
    def _check_group(self):
        workers = self.placement().workers
        if self.gpus > 1 and workers != self.gpus:
            raise PydanticCustomError(
                "workers_gpus",
                "a run of {gpus:g} GPUs has one worker per GPU: leave workers out or set it to {gpus:g}",
                {"field": "workers", "gpus": self.gpus},
            )
        if workers > 1 and 0 < self.gpus < 1:
            raise PydanticCustomError(
                "workers_fraction",
                "a run of several workers takes whole GPUs, one each; "
                "a fraction of a GPU packs small runs instead",
                {"field": "gpus"},
            )
        if workers % self.nodes:
            raise PydanticCustomError(
                "workers_nodes",
                "{workers} workers cannot be spread evenly over {nodes} nodes",
                {"field": "nodes", "workers": workers, "nodes": self.nodes},
            )
        return self

    def placement(self) -> Placement:
        workers = self.workers or (int(self.gpus) if self.gpus > 1 else 1)
        return Placement(self.cpus, self.gpus, workers, self.nodes)


class ResourceRule(_Request):
    min_n: PositiveInt  # applies to cells whose actual N (grid.n_convention) is >= min_n


class Resources(_Request):
    by_n: list[ResourceRule] = Field(default_factory=list)

    def for_n(self, n_params: int) -> Placement:
        placement = self.placement()
        for rule in sorted(self.by_n, key=lambda r: r.min_n):
            if n_params >= rule.min_n:
                placement = rule.placement()
        return placement


class ForecastTarget(Strict):
    n: PositiveFloat  # parameters, counted as grid.n_convention
    d: PositiveFloat  # the task's D: examples or tokens


class ReportSettings(Strict):
    # Where the report forecasts the task's accuracy through the loss (report/forecast_section.py),
    # besides the next size up the grid.
    forecast: list[ForecastTarget] = Field(default_factory=list)


class Tracking(Strict):
    uri: str = "sqlite:///mlflow.db"  # MLflow's own default, so a plain `mlflow ui` finds it
    experiment: str | None = None  # None: the study name
    # The tracking server's own backend database (postgresql://... or sqlite:///...), when the
    # driver may reach it: runs' rows (create, metrics, params, tags, end) then go there as plain
    # SQL (store/sql_writes.py), and the server does the rest (experiments, artifacts, the UI).
    # A server in front of PostgreSQL takes ~1,300 points/s on 2 cores; the database itself many
    # times that (README, bench_driver_scale.py).
    database: str | None = None

    @model_validator(mode="after")
    def _database_behind_server(self) -> Tracking:
        if self.database is None:
            return self
        if not self.uri.startswith(("http://", "https://")):
            raise PydanticCustomError(
                "database_without_server",
                "the backend database of a tracking server: only with tracking.uri "
                "http(s)://...; a database store on its own goes in tracking.uri",
                {"field": "database"},
            )
        scheme = self.database.partition("://")[0]
        if scheme not in ("postgresql", "postgresql+psycopg2", "postgres", "sqlite"):
            raise PydanticCustomError(
                "database_scheme",
                "must be a postgresql:// or sqlite:/// URL (the tracking server's "
                "--backend-store-uri), got scheme '{scheme}'",
                {"field": "database", "scheme": scheme},
            )
        return self


class RayConfig(Strict):
    address: str | None = None  # None: start a local Ray; "auto" or ray://host:port: join one
    num_cpus: PositiveInt | None = None  # local Ray only; None: every core
    max_retries: int = Field(default=3, ge=0)  # a trial whose worker dies is retried this often

    def local(self) -> bool:
        """The study starts a Ray of its own on this machine: no `address`, and no RAY_ADDRESS
        (which `ray job submit` sets) naming a cluster to join ("local" names none, as for Ray)."""
        return (self.address or os.environ.get("RAY_ADDRESS") or "local") == "local"


def _yaml_switch(v: Any) -> Any:
    """YAML 1.1 reads a bare `off`/`on` as false/true: take them back as the words meant."""
    return {False: "off", True: "on"}.get(v, v) if isinstance(v, bool) else v


class Packing(Strict):
    """Several runs of one cell trained in one process as one batched model (trainers/packed.py):
    one Ray task, one slot, K runs, each with its own seed and regularization."""

    # auto: when it pays (see orchestrator.sweep.driver.pack_size)
    mode: Annotated[Literal["auto", "on", "off"], BeforeValidator(_yaml_switch)] = "auto"
    max_runs: PositiveInt = 8  # runs per packed task


class Pruning(Strict):
    """Per-cell pruning (orchestrator/sweep/pruning.py): stop runs whose answer is already known."""

    # off; objective: stop a run once it cannot beat its cell's best step objective (exact);
    # phase: stop a memorizing run whose budget of weight decay cannot make it grok in time.
    # Or your own rule by import path (orchestrator/study/plugins.py).
    mode: Annotated[str, BeforeValidator(_yaml_switch), AfterValidator(_prune_mode)] = "off"
    safety: float = Field(default=2.0, ge=1.0)  # phase: how far short of the needed decay a run must fall
    memorized_for: float = Field(default=10.0, ge=1.0)  # phase: steps since memorization, as a multiple


def _name(v: str) -> str:
    if not NAME.fullmatch(v):
        raise PydanticCustomError(
            "study_name",
            "use letters, digits, '_', '.' and '-' only (it names the MLflow experiment and run folder)",
        )
    if set(v) == {"."}:  # runs/.. is the parent of runs/, not a folder of the study's own
        raise PydanticCustomError(
            "study_name",
            "'.' and '..' name a folder itself or its parent; give the "
            "study a name with a letter or digit (it names the run folder "
            "runs/<name>)",
        )
    return v


def _trainer_ref(v: str | None) -> str | None:
    if v is not None and not v.strip():
        raise PydanticCustomError("trainer_ref", "empty; name your function as 'package.module:function'")
    return v


class Study(Strict):
    name: Annotated[str, AfterValidator(_name)]
    description: str = ""
    # The researcher's own training function (trainers/protocol.py): 'package.module:function' or
    # a short name in the entry-point group grokscale.trainers. None: the built-in trainers.
    # With it, task/model/train are the function's own (grokscale reads only the budget keys).
    trainer: Annotated[str | None, AfterValidator(_trainer_ref)] = None
    task: dict[str, Any]
    model: dict[str, Any] = Field(default_factory=lambda: {"family": "transformer"})
    train: dict[str, TrainEntry] = Field(default_factory=dict)
    grid: Grid
    search: Search = Field(default_factory=Search)
    objectives: list[Objective] = Field(default_factory=lambda: [Objective()], min_length=1)
    resources: Resources = Field(default_factory=Resources)
    tracking: Tracking = Field(default_factory=Tracking)
    workdir: str | None = None  # None: runs/<name>; holds the Optuna journal and checkpoints
    storage: str | None = None  # None: a journal file in workdir; or postgresql://...
    checkpoints: str | None = None  # None: <workdir>/checkpoints
    ray: RayConfig = Field(default_factory=RayConfig)
    pack: Packing = Field(default_factory=Packing)
    prune: Pruning = Field(default_factory=Pruning)
    report: ReportSettings = Field(default_factory=lambda: ReportSettings())

    @model_validator(mode="before")
    @classmethod
    def _no_packing_for_own_trainer(cls, data: Any) -> Any:
        """Packing batches runs of the built-in models into one (trainers/packed.py); a user's
        function trains one run per call, so its study packs nothing (an explicit `pack.mode`
        other than off is refused in checks.py)."""
        if isinstance(data, dict) and data.get("trainer") is not None and data.get("pack") is None:
            return {**data, "pack": {"mode": "off"}}
        return data

    @model_validator(mode="before")
    @classmethod
    def _own_trainer_sections(cls, data: Any) -> Any:
        """With the user's own trainer, `task:` and `model:` are the function's own and optional:
        a missing one is empty, not the built-in defaults."""
        if isinstance(data, dict) and data.get("trainer") is not None:
            return {"task": {}, "model": {}, **data}
        return data

    @property
    def workdir_path(self) -> Path:
        return Path(self.workdir or f"runs/{self.name}")

    @property
    def storage_url(self) -> str:
        return self.storage or str(self.workdir_path / "optuna.journal")

    @property
    def checkpoint_path(self) -> Path:
        return Path(self.checkpoints) if self.checkpoints else self.workdir_path / "checkpoints"

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or self.name

    @property
    def d_field(self) -> str:
        if self.trainer is not None:  # the user's function reads D from its RunConfig
            return self.grid.d_field or "d"
        return self.grid.d_field or task_kinds()[self.task["name"]].d_field

    @property
    def isoflop(self) -> bool:
        """An IsoFLOP study: a grid of model sizes x compute budgets (grid.flops)."""
        return self.grid.flops is not None

    @property
    def length(self) -> Length:
        """How long each run trains (orchestrator/study/length.py); resolved per cell by spec_for."""
        kind = None if self.trainer is not None else task_kinds().get(self.task.get("name"))
        return study_length(self.train, self.isoflop, bool(kind and kind.language_model))

    def digest(self) -> str:
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def allowed_metrics(self) -> tuple[str, ...]:
        kind = task_kinds().get(self.task.get("name"))
        return FINAL_METRICS + DERIVED_METRICS + (SEQUENCE_METRICS if kind and kind.sequence_metrics else ())

    def trial_data(
        self, n_entry: dict[str, Any], d_value: float | None, params: dict[str, Any], seed: int
    ) -> dict:
        """The TrainSpec data of one run, before validation: fixed sections, the cell, the
        searched values and the seed, in that order of precedence. d_value None keeps the task's
        own data size (an IsoFLOP cell's D is known only once its model is). Train steps are the
        study's when it gives them; spec_for resolves any other length into steps, and the rules
        of scale (left as mappings here: rules.anchored gives a probe's numbers)."""
        kind = task_kinds()[self.task["name"]]
        task = dict(self.task)
        if d_value is not None:
            task[self.d_field] = int(d_value) if self.d_field in kind.counts else d_value
            # A task's D fields are alternatives (modular: train_fraction or n_train): the grid sets
            # one and clears the others (checks.py refuses a task section that sets another).
            task.update({f: None for f in kind.d_fields if f != self.d_field})
        # Rules stay plain mappings (a searched train.lr.value edits one); grid.py resolves them per run.
        train = plain({k: v for k, v in self.train.items() if k not in STUDY_ONLY_KEYS})
        data = {"task": task, "model": {**self.model, **n_entry}, "train": train, "seed": seed}
        return apply_overrides(data, [f"{k}={json.dumps(v)}" for k, v in params.items()])
