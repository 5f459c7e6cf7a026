"""The study config: YAML in, a frozen typed `Study` out, or every problem at once with its path.

`load_study(path, overrides)` is the one place a study is read. It has no side effects: it
creates no file, run or storage, so a broken config leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PositiveFloat, PositiveInt,
                      ValidationError, field_validator, model_validator)

from trainers.overrides import OverrideError, apply_overrides
from trainers.spec import TrainSpec

# The field of each task that the grid's D axis sets, unless the study names another.
D_FIELDS = {"modular": ("train_fraction", "n_train"), "sparse_parity": ("n_train",),
            "addition": ("n_train",), "charlm": ("n_train_tokens",)}
# Objective metrics computed from a run beyond its final evaluation record.
DERIVED_METRICS = ("max_val_acc", "min_val_loss", "generalization_step", "memorization_step",
                   "grokking_delay", "steps")
FINAL_METRICS = ("val_acc", "val_loss", "train_acc", "train_loss", "weight_norm")
SEQUENCE_METRICS = ("val_token_acc", "val_answer_logprob", "train_token_acc", "train_answer_logprob")


# user:password@ in a URL (a database or tracking server); the password is never printed or logged.
URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*):(?P<password>[^@/\s]*)@")


def redact_url(text: str) -> str:
    """`postgresql://user:s3cret@host/db` -> `postgresql://user:<redacted>@host/db`, anywhere in text."""
    return URL_PASSWORD.sub(r"\g<head>:<redacted>@", text)


class StudyError(Exception):
    """A study that cannot run: each line names the field, what was wrong and what is allowed."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FloatParam(Strict):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _range(self) -> "FloatParam":
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be < high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scale range must be > 0, got low = {self.low}")
        return self


class IntParam(Strict):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: PositiveInt = 1

    @model_validator(mode="after")
    def _range(self) -> "IntParam":
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be < high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scale range must be > 0, got low = {self.low}")
        return self


class CategoricalParam(Strict):
    type: Literal["categorical"]
    choices: list[Union[bool, int, float, str, None]] = Field(min_length=1)


Param = Annotated[Union[FloatParam, IntParam, CategoricalParam], Field(discriminator="type")]
SAMPLERS = ("tpe", "random", "grid", "cmaes", "nsgaii", "qmc")


class Search(Strict):
    sampler: Literal[SAMPLERS] = "tpe"  # type: ignore[valid-type]
    trials_per_cell: PositiveInt = 4
    seed: int = Field(default=0, ge=0)  # the sampler's seed; cell i uses seed + i
    # Dotted TrainSpec paths (train.weight_decay, model.dropout, ...) to their ranges.
    space: dict[str, Param] = Field(default_factory=dict)


class Objective(Strict):
    metric: str = "max_val_acc"
    direction: Literal["maximize", "minimize"] = "maximize"


def _n_entry(v: Any) -> int | dict[str, Any]:
    """One N of the grid: a target parameter count, or a model shape (fields of the model section)."""
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, dict) and all(isinstance(k, str) for k in v):
        return v
    if not isinstance(v, int) or isinstance(v, bool):
        raise ValueError(f"an N is a target parameter count (e.g. 20000) or a model shape (e.g. {{d_model: 64}}), "
                         f"got {v!r}")
    if v <= 0:
        raise ValueError(f"a target parameter count must be > 0, got {v}")
    return v


def _gpus(g: float) -> float:
    if g > 1 and g != int(g):
        raise ValueError(f"more than one GPU must be a whole number (a fraction <= 1 packs trials on one GPU), got {g}")
    return g


Gpus = Annotated[float, Field(ge=0), AfterValidator(_gpus)]


class Grid(Strict):
    n: list[Annotated[Any, AfterValidator(_n_entry)]] = Field(min_length=1)
    n_convention: Literal["total", "non_embedding"] = "total"
    d: list[PositiveFloat] = Field(min_length=1)
    d_field: str | None = None  # None: the task's default (train_fraction for modular)
    seeds: list[Annotated[int, Field(ge=0)]] = Field(default=[0], min_length=1)

    @field_validator("seeds", "d")
    @classmethod
    def _unique(cls, v: list) -> list:
        if len(set(v)) != len(v):
            raise ValueError(f"values must be distinct, got {v}")
        return v


class ResourceRule(Strict):
    min_n: PositiveInt  # applies to cells whose actual N (grid.n_convention) is >= min_n
    cpus: PositiveFloat = 1
    gpus: Gpus = 0


class Resources(Strict):
    cpus: PositiveFloat = 1
    gpus: Gpus = 0  # a fraction packs several trials on one GPU
    by_n: list[ResourceRule] = Field(default_factory=list)

    def for_n(self, n_params: int) -> tuple[float, float]:
        cpus, gpus = self.cpus, self.gpus
        for rule in sorted(self.by_n, key=lambda r: r.min_n):
            if n_params >= rule.min_n:
                cpus, gpus = rule.cpus, rule.gpus
        return cpus, gpus


class Tracking(Strict):
    uri: str = "sqlite:///mlflow.db"  # MLflow's own default, so a plain `mlflow ui` finds it
    experiment: str | None = None  # None: the study name


class RayConfig(Strict):
    address: str | None = None  # None: start a local Ray; "auto" or ray://host:port: join one
    num_cpus: PositiveInt | None = None  # local Ray only; None: every core
    max_retries: int = Field(default=3, ge=0)  # a trial whose worker dies is retried this often


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
    mode: Annotated[Literal["off", "objective", "phase"], BeforeValidator(_yaml_switch)] = "off"
    safety: float = Field(default=2.0, ge=1.0)  # phase: how far short of the needed decay a run must fall
    memorized_for: float = Field(default=10.0, ge=1.0)  # phase: steps since memorization, as a multiple


class Study(Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    task: dict[str, Any]
    model: dict[str, Any] = Field(default_factory=lambda: {"family": "transformer"})
    train: dict[str, Any] = Field(default_factory=dict)
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
        return self.grid.d_field or D_FIELDS[self.task["name"]][0]

    def digest(self) -> str:
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def allowed_metrics(self) -> tuple[str, ...]:
        sequence = self.task.get("name") in ("addition", "charlm")
        return FINAL_METRICS + DERIVED_METRICS + (SEQUENCE_METRICS if sequence else ())

    def trial_data(self, n_entry: dict[str, Any], d_value: float, params: dict[str, Any], seed: int) -> dict:
        """The TrainSpec data of one run, before validation: fixed sections, the cell, the
        searched values and the seed, in that order of precedence."""
        task = {**self.task, self.d_field: int(d_value) if self.d_field != "train_fraction" else d_value}
        if self.d_field == "n_train" and task.get("name") == "modular":
            task["train_fraction"] = None
        data = {"task": task, "model": {**self.model, **n_entry}, "train": dict(self.train), "seed": seed}
        return apply_overrides(data, [f"{k}={json.dumps(v)}" for k, v in params.items()])


# Discriminator tags pydantic puts in error locations; a person's config has no such key.
UNION_TAGS = {"float", "int", "categorical", "transformer", "mlp", "modular", "sparse_parity",
              "addition", "charlm", "dict[str,any]"}


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part) in UNION_TAGS or str(part).startswith(("function-", "tagged-union", "union[", "constrained-")):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out or "(study)"


def _field_of(msg: str, data: dict) -> str:
    """The field a section-level check names: `p must be >= 3` is about `p`, `task 'addition' needs
    model.family ...` about `model.family`; "" when the message names no field of `data`."""
    for dotted in re.findall(r"\b[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+\b", msg):
        node: Any = data
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            return dotted
    first = re.match(r"([A-Za-z_]\w*)(\[\d+\])?", msg)
    return first.group(0) if first and first.group(1) in data else ""


def format_errors(err: ValidationError, prefix: str = "") -> list[str]:
    """One line per problem: `path: what is wrong, what is allowed, got <value>`."""
    problems = []
    for e in err.errors():
        path = _loc(e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        got = e.get("input")
        ctx = e.get("ctx") or {}
        if e["type"] == "value_error" and isinstance(got, dict) and (field := _field_of(msg, got)):
            path = field if path == "(study)" else f"{path}.{field}"
        shown = ("" if isinstance(got, (dict, list)) or e["type"] == "missing" or "got " in msg
                 else f", got {got!r}")
        if e["type"] == "extra_forbidden":
            msg, shown = "unknown key (check the spelling against the README's study config)", ""
        elif e["type"] == "missing":
            msg = "required, but missing"
        elif e["type"] == "too_short":
            msg = f"must not be empty: give at least {ctx.get('min_length', 1)} value(s)"
        elif e["type"] == "union_tag_invalid":
            path = f"{path}.{str(ctx.get('discriminator', '')).strip(chr(39))}"
            msg, shown = f"unknown {ctx.get('tag')!r}; allowed: {ctx.get('expected_tags')}", ""
        elif e["type"] == "string_pattern_mismatch" and path == "name":
            msg = "use letters, digits, '_', '.' and '-' only (it names the MLflow experiment and run folder)"
        path = f"{prefix}.{path}" if prefix and path != "(study)" else (prefix or path)
        problems.append(f"{path}: {msg}{shown}")
    return problems


def _check_semantics(study: Study) -> list[str]:
    """What pydantic cannot see alone: each cell and searched value must make a valid TrainSpec."""
    problems: list[str] = []
    task_name = study.task.get("name")
    if task_name is None:
        return [f"task.name: required, but missing; name the task: {', '.join(D_FIELDS)}"]
    if task_name not in D_FIELDS:
        return [f"task.name: unknown task {task_name!r}; allowed: {', '.join(D_FIELDS)}"]
    if study.d_field not in D_FIELDS[task_name]:
        problems.append(f"grid.d_field: {study.d_field!r} is not a data size of task {task_name!r}; "
                        f"allowed: {', '.join(D_FIELDS[task_name])}")
        return problems
    if study.d_field == "train_fraction":
        for i, d in enumerate(study.grid.d):
            if not 0 < d < 1:
                problems.append(f"grid.d[{i}]: a train_fraction must be in (0, 1), got {d}")
    else:
        for i, d in enumerate(study.grid.d):
            if d != int(d):
                problems.append(f"grid.d[{i}]: {study.d_field} is a count, got {d}")
    for key in study.search.space:
        if key.split(".")[0] not in ("task", "model", "train"):
            problems.append(f"search.space.{key}: must be a dotted trainer field under task., model. or "
                            f"train. (e.g. train.weight_decay)")
    for i, obj in enumerate(study.objectives):
        if obj.metric not in study.allowed_metrics():
            problems.append(f"objectives[{i}].metric: unknown metric {obj.metric!r}; allowed: "
                            f"{', '.join(study.allowed_metrics())}")
    if len({o.metric for o in study.objectives}) != len(study.objectives):
        problems.append("objectives: each metric may appear once")
    if len(study.objectives) > 1 and study.search.sampler == "cmaes":
        problems.append(f"search.sampler: {study.search.sampler!r} optimizes one objective; use tpe, nsgaii, "
                        f"random or qmc with {len(study.objectives)} objectives")
    if study.prune.mode == "objective":
        step_metrics = ("generalization_step", "memorization_step")
        if len(study.objectives) != 1 or study.objectives[0].metric not in step_metrics \
                or study.objectives[0].direction != "minimize":
            problems.append(f"prune.mode: 'objective' stops a run once it cannot beat its cell's best step, so it "
                            f"needs one objective, {' or '.join(step_metrics)} minimized; got "
                            f"{[(o.metric, o.direction) for o in study.objectives]}; use 'phase' or 'off'")
    if problems:
        return problems
    # Build the first cell's spec, then every cell, then the first cell under each searched
    # value at its ends: a fixed field, a shape or a searched range the trainer refuses fails
    # here, reported once at the place in the study that set it.
    def errors(n_entry: Any, d: float, params: dict) -> list[str]:
        entry = n_entry if isinstance(n_entry, dict) else {}
        try:
            TrainSpec.model_validate(study.trial_data(entry, d, params, study.grid.seeds[0]))
        except ValidationError as err:
            return [line.replace(f"task.{study.d_field}:", "grid.d:") for line in format_errors(err)]
        except OverrideError as err:
            return [str(err)]
        return []

    # A problem of the fixed sections is reported once, plainly; one that only a grid entry's
    # shape causes is reported per cell below.
    first = errors(study.grid.n[0], study.grid.d[0], {})
    if first:
        fixed = errors({}, study.grid.d[0], {}) if isinstance(study.grid.n[0], dict) else first
        if fixed:
            return fixed
    for i, n_entry in enumerate(study.grid.n):
        for j, d in enumerate(study.grid.d):
            problems += [f"grid.n[{i}] x grid.d[{j}]: {line}" for line in errors(n_entry, d, {})]
    for key, p in study.search.space.items():
        values = [p.low, p.high] if p.type != "categorical" else p.choices
        for v in values:
            problems += [f"search.space.{key}: value {v!r} is not allowed: {line}"
                         for line in errors(study.grid.n[0], study.grid.d[0], {key: v}) if line not in first]
    return list(dict.fromkeys(problems))


def _duplicate_keys(node: yaml.Node, path: str = "") -> list[str]:
    """Keys given twice in one mapping: PyYAML would keep the last one without a word."""
    problems = []
    if isinstance(node, yaml.MappingNode):
        seen: set = set()
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else str(key.value)
            where = f"{path}.{name}" if path else name
            if name in seen:
                problems.append(f"{where}: duplicate key (line {key.start_mark.line + 1}); give each key once")
            seen.add(name)
            problems += _duplicate_keys(value, where)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            problems += _duplicate_keys(item, f"{path}[{i}]")
    return problems


def load_study(path: str | Path, overrides: list[str] = ()) -> Study:
    """Read, override and validate a study; raise StudyError listing every problem."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise StudyError([f"{path}: cannot read the study file ({err.strerror})"]) from None
    try:
        # safe_load builds plain data only: a `!!python/...` tag is an error, never a call.
        duplicates = _duplicate_keys(yaml.compose(text, Loader=yaml.SafeLoader))
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise StudyError([f"{path}: not valid YAML{where}: {getattr(err, 'problem', err)}"]) from None
    if duplicates:
        raise StudyError(duplicates)
    if data is None:
        raise StudyError([f"{path}: the file is empty; a study is a YAML mapping (name:, task:, grid:, ...)"])
    if not isinstance(data, dict):
        raise StudyError([f"{path}: a study is a YAML mapping (name:, task:, grid:, ...), got a {type(data).__name__}"])
    try:
        data = apply_overrides(data, overrides)
    except OverrideError as err:
        raise StudyError([f"--set: {err}"]) from None
    try:
        study = Study.model_validate(data)
    except ValidationError as err:
        raise StudyError(format_errors(err)) from None
    problems = _check_semantics(study)
    if problems:
        raise StudyError(problems)
    return study
