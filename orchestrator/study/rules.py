"""Hyperparameters as rules of scale: a number in `train:` given as a power law of the cell.

    train.lr: {rule: power, value: 3.0e-3, at: {n: 1.0e+6}, exponent: {n: -0.5}}

means lr = 3e-3 x (n / 1e6)^-0.5. Several variables multiply: value x prod_x (x / at_x)^e_x, so
`value` is the field's value where every variable equals its `at`. The variables, per run:
  n             the cell's N, counted as grid.n_convention says
  d             the cell's D as a count: training examples, or tokens for a language model
  flops         the run's training FLOPs (trainers/flops.py); in an IsoFLOP grid the cell's budget C
  batch_tokens  the run's tokens per optimizer step (examples per step x tokens per example)
Marin's lr proportional to sqrt(B) / d_model is {exponent: {batch_tokens: 0.5, n: ...}} once the
width is written as a power of N; DeepSeek (2024) fits lr and batch as power laws of compute
(`flops`); OLMo's warmup of N tokens is warmup_steps = N / batch_tokens ({n: 1, batch_tokens: -1}).

A rule is resolved per run in orchestrator/study/grid.py (`spec_for`), so the trainer only ever
sees numbers, and the spec MLflow records holds the resolved value. The order of resolution
follows what each variable needs: the batch first (it may use n, d, and an IsoFLOP cell's budget),
then the run's tokens per step are known; then train.steps (which may also use batch_tokens);
then the run's FLOPs are known, and every other field. An integer field (warmup_steps, steps,
batch_size, ...) is rounded to the nearest whole number; batch_tokens to whole sequences.

Which field may use which variable, and what a search may name inside a rule, is checked at load
(`rule_problems`); the rule itself (variables, anchors, finite positive numbers) by pydantic.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from orchestrator.study.errors import format_errors
from trainers.spec import TrainConfig

if TYPE_CHECKING:
    from orchestrator.study.schema import Study

VARIABLES = ("n", "d", "flops", "batch_tokens")
BATCH_KEYS = ("batch_size", "batch_tokens")  # resolved first: the run's tokens per step and FLOPs follow
LENGTH_RULE_KEYS = ("steps",)  # resolved once the batch is known: the run's FLOPs follow
STUDY_LENGTH_KEYS = ("tokens", "epochs")  # the study's own length words (length.py): numbers only


class RuleError(ValueError):
    """A rule whose constants (as a search set them) are not a rule: each line `path: message`."""


class Rule(BaseModel):
    """value x prod over the variables of (variable / at)^exponent."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    rule: Literal["power"]
    value: float = Field(gt=0)
    at: dict[str, float] = Field(default_factory=dict)  # each variable's anchor: value holds there
    exponent: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _variables(self) -> Rule:
        for part in ("at", "exponent"):
            for var in getattr(self, part):
                if var not in VARIABLES:
                    raise PydanticCustomError(
                        "rule_variable",
                        "unknown variable '{var}'; a rule depends on {allowed}",
                        {"field": f"{part}.{var}", "var": var, "allowed": ", ".join(VARIABLES)},
                    )
        for var, x in self.at.items():
            if x <= 0:
                raise PydanticCustomError(
                    "rule_anchor",
                    "an anchor must be > 0 (the rule divides by it), got {x}",
                    {"field": f"at.{var}", "x": x},
                )
            if var not in self.exponent:
                raise PydanticCustomError(
                    "rule_unused",
                    "{var} has an anchor but no exponent: give exponent.{var}, or remove at.{var}",
                    {"field": f"at.{var}", "var": var},
                )
        for var in self.exponent:
            if var not in self.at:
                raise PydanticCustomError(
                    "rule_anchor_missing",
                    "required, but missing: the value of {var} "
                    "at which the rule equals `value` (e.g. at: {{var}: 1.0e+6})",
                    {"field": f"at.{var}", "var": var},
                )
        return self

    @property
    def variables(self) -> tuple[str, ...]:
        return tuple(v for v in VARIABLES if v in self.exponent)

    def __call__(self, scale: Mapping[str, float]) -> float:
        """The value at `scale` (every variable of the rule must be in it)."""
        out = self.value
        for var in self.variables:
            out *= (scale[var] / self.at[var]) ** self.exponent[var]
        return out


def is_rule(value: Any) -> bool:
    """A `train:` entry that is a rule: a mapping with a `rule` key (or a Rule already)."""
    return isinstance(value, Rule) or (isinstance(value, dict) and "rule" in value)


def plain(train: Mapping[str, Any]) -> dict[str, Any]:
    """`train` as plain data, its rules as mappings (what --set paths and a search's keys edit)."""
    return {k: v.model_dump() if isinstance(v, Rule) else v for k, v in train.items()}


def rules_in(train: Mapping[str, Any]) -> dict[str, Rule]:
    """The rules of a `train:` section, validated (a search may have set their constants)."""
    found, problems = {}, []
    for key, value in train.items():
        if not is_rule(value):
            continue
        try:
            found[key] = value if isinstance(value, Rule) else Rule.model_validate(value)
        except ValidationError as err:
            problems += format_errors(err, f"train.{key}", model=Rule)
    if problems:
        raise RuleError("; ".join(problems))
    return found


def integer_field(key: str) -> bool:
    """A TrainConfig field that holds a whole number (steps, warmup_steps, batch_size, ...)."""
    info = TrainConfig.model_fields.get(key)
    return info is not None and _whole(info.annotation)


def numeric_field(key: str) -> bool:
    info = TrainConfig.model_fields.get(key)
    return info is not None and (_whole(info.annotation) or _kinds(info.annotation) & {float} != set())


def _kinds(annotation: Any) -> set:
    """The plain types a field annotation admits (unions and Annotated unwrapped)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _kinds(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_kinds(a) for a in typing.get_args(annotation)))
    return {annotation}


def _whole(annotation: Any) -> bool:
    kinds = _kinds(annotation) - {type(None)}
    return kinds == {int}


def resolve(
    train: Mapping[str, Any],
    scale: Mapping[str, float],
    keys: Iterable[str] | None = None,
    multiple: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """`train` with its rules among `keys` (None: every rule) replaced by their values at `scale`;
    an integer field rounded to the nearest whole number, or to a whole `multiple` of its own."""
    rules = rules_in(train)
    out = dict(train)
    for key, rule in rules.items():
        if keys is not None and key not in keys:
            continue
        missing = [v for v in rule.variables if v not in scale]
        if missing:  # rule_problems refuses such a study at load; this guards the order of resolution
            raise RuleError(f"train.{key}: {', '.join(missing)} is not known when {key} is resolved")
        out[key] = _rounded(key, rule(scale), (multiple or {}).get(key))
    return out


def _rounded(key: str, value: float, multiple: int | None) -> float | int:
    if not math.isfinite(value):
        raise RuleError(f"train.{key}: the rule's value is not a finite number ({value})")
    if multiple:
        return max(1, round(value / multiple)) * multiple
    return round(value) if integer_field(key) else value


def at_anchor(train: Mapping[str, Any]) -> dict[str, Any]:
    """`train` with every rule at its `value` (rounded as the field is): a probe spec's section,
    before a cell is known (its checks of types and its model and batch, not its lengths)."""
    rules = rules_in(train)
    return {**train, **{k: _rounded(k, r.value, None) for k, r in rules.items()}}


def anchored(data: dict[str, Any]) -> dict[str, Any]:
    """TrainSpec data (task, model, train, seed) with its rules at their anchors."""
    return {**data, "train": at_anchor(data["train"])}


def allowed_variables(key: str, isoflop: bool) -> tuple[str, ...]:
    """What a rule for `key` may depend on: the batch is resolved before the run's tokens per step
    and FLOPs exist, the length before its FLOPs; an IsoFLOP cell's budget is known from the start."""
    known = ("n", "d", "flops") if isoflop else ("n", "d")
    if key in BATCH_KEYS:
        return known
    if key in LENGTH_RULE_KEYS:
        return (*known, "batch_tokens")
    return VARIABLES


def rule_problems(study: Study) -> list[str]:
    """Why the study's rules cannot be resolved per run, each as `path: message` ([] if they can):
    a rule on a field that is no number, a variable not known yet when its field is resolved, a
    searched key inside a rule that is not one of its constants."""
    rules = {k: v for k, v in study.train.items() if isinstance(v, Rule)}
    problems = []
    if study.trainer is not None:
        problems += [
            f"train.{key}: a rule of scale is resolved from the built-in models' N and FLOPs before "
            f"a run starts; your own trainer reports its N only once it has run: give a number"
            for key in rules
        ]
        rules = {}
    for key, rule in rules.items():
        if key in STUDY_LENGTH_KEYS:
            problems.append(
                f"train.{key}: the study's length in {key} is a number; a length that grows with "
                f"scale may be given as a rule for train.steps"
            )
        elif not numeric_field(key):
            problems.append(f"train.{key}: a rule gives a number; {key} is not a numeric training field")
        else:
            allowed = allowed_variables(key, study.isoflop)
            for var in rule.variables:
                if var not in allowed:
                    problems.append(
                        f"train.{key}.exponent.{var}: {_why_not(key, var)}; {key} may depend on "
                        f"{', '.join(allowed)}"
                    )
    return problems + _searched_problems(study, rules)


def _why_not(key: str, var: str) -> str:
    if var == "batch_tokens":
        return f"the run's tokens per step follow from {key}, so {key} cannot depend on them"
    return (
        f"the run's FLOPs follow from its {'batch' if key in BATCH_KEYS else 'length'}, so {key} cannot "
        f"depend on them (in an IsoFLOP grid, grid.flops, it may: there flops is the cell's budget)"
    )


def _searched_problems(study: Study, rules: Mapping[str, Rule]) -> list[str]:
    """A searched key inside a train field (train.lr.value) names a constant of a rule."""
    problems = []
    for key in study.search.space:
        section, _, rest = key.partition(".")
        field, _, inner = rest.partition(".")
        if section != "train" or not inner:
            continue
        rule = rules.get(field)
        if rule is None:
            problems.append(
                f"search.space.{key}: train.{field} is not a rule of scale, so it has no "
                f"{inner!r} to search; search train.{field} itself, or give it as a rule "
                f"({{rule: power, value: ..., at: ..., exponent: ...}})"
            )
        elif inner != "value" and not (inner.startswith("exponent.") and inner[9:] in rule.exponent):
            problems.append(
                f"search.space.{key}: a search may set a rule's value or one of its exponents "
                f"({', '.join(['value', *(f'exponent.{v}' for v in rule.variables)])})"
            )
    return problems
