"""The study layer's errors, task kinds and loading, below the CLI (tests/test_broken_configs.py
covers the whole path, one broken study at a time)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Annotated, ClassVar, Literal

import pytest
from pydantic import BaseModel, Discriminator, PositiveInt, Tag, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from orchestrator.study import Problem, Study, StudyError, format_errors, load_study
from orchestrator.study.errors import field_path, problems_of
from orchestrator.study.tasks import kinds_of, task_kinds
from trainers.spec import TrainSpec

VALID = Path(__file__).parent / "broken_configs" / "_valid.yaml"
REPO = Path(__file__).resolve().parents[2]


def errors_of(model: type[BaseModel], data: dict) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    return info.value


def refused(overrides: list[str]) -> list[str]:
    with pytest.raises(StudyError) as info:
        load_study(VALID, overrides)
    return info.value.problems


class Span(BaseModel):
    low: int
    high: int

    @model_validator(mode="after")
    def _order(self) -> Span:
        if self.low >= self.high:  # a section-level check that names its field in the context
            raise PydanticCustomError(
                "inverted",
                "low ({low}) must be < high ({high})",
                {"field": "low", "low": self.low, "high": self.high},
            )
        return self


class Root(BaseModel):
    # A union tagged by a callable: pydantic puts the chosen tag ("span", "count") in the loc.
    items: list[
        Annotated[
            Annotated[Span, Tag("span")] | Annotated[PositiveInt, Tag("count")],
            Discriminator(lambda v: "span" if isinstance(v, dict) else "count"),
        ]
    ]
    table: dict[str, Span] = {}


def test_union_tags_are_not_part_of_the_path():
    err = errors_of(Root, {"items": [3, {"low": "x", "high": 1}, -1], "table": {"a.b": {"low": 1}}})
    locs = [e["loc"] for e in err.errors()]
    assert ("items", 1, "span", "low") in locs and ("items", 2, "count") in locs  # what pydantic says
    assert [p.path for p in problems_of(err, Root)] == ["items[1].low", "items[2]", "table.a.b.high"]
    # Without the schema the location is shown as pydantic gives it, tag and all.
    assert format_errors(err)[0].startswith("items[1].span.low: ")


def test_a_section_check_names_its_field_through_its_context():
    err = errors_of(Root, {"items": [{"low": 3, "high": 1}]})
    assert err.errors()[0]["loc"] == ("items", 0, "span")
    assert problems_of(err, Root) == [Problem("items[0].low", "low (3) must be < high (1)")]


def test_trainer_errors_drop_the_task_and_model_tags():
    err = errors_of(
        TrainSpec, {"task": {"name": "modular", "p": 0}, "model": {"family": "mlp", "d_hidden": "w"}}
    )
    assert {e["loc"] for e in err.errors()} == {("task", "modular", "p"), ("model", "mlp", "d_hidden")}
    assert format_errors(err, model=TrainSpec) == [
        "task.p: Input should be greater than 0, got 0",
        "model.d_hidden: Input should be a valid integer, unable to parse string as an integer, got 'w'",
    ]
    assert field_path(TrainSpec, ("task", "sparse_parity", "k"))[0] == "task.k"


def test_union_tag_errors_name_the_tag_field_and_what_is_allowed():
    unknown = refused(["search.space.train.weight_decay={type: real, low: 0.1, high: 1}"])
    missing = refused(["search.space.train.weight_decay={low: 0.1, high: 1}"])
    assert unknown == [
        "search.space.train.weight_decay.type: unknown 'real'; allowed: 'float', 'int', 'categorical'"
    ]
    assert missing == [
        "search.space.train.weight_decay.type: required, but missing; allowed: 'float', 'int', 'categorical'"
    ]
    family = errors_of(TrainSpec, {"model": {"family": "cnn"}})
    assert format_errors(family, model=TrainSpec) == [
        "model.family: unknown 'cnn'; allowed: 'transformer', 'mlp', 'gpt', or your own class as "
        "'package.module:Class'"
    ]


def test_an_n_is_a_count_or_a_shape_and_nothing_else():
    what = "an N is a target parameter count (e.g. 20000) or a model shape (e.g. {d_model: 64})"
    assert refused(["grid.n=[true, 2.5, {d_model: 16}]"]) == [
        f"grid.n[0]: {what}, got True",
        f"grid.n[1]: {what}, got 2.5",
    ]
    assert refused(["grid.n=[-3]"]) == ["grid.n[0]: a target parameter count must be > 0, got -3"]
    assert load_study(VALID, ["grid.n=[20000.0, {d_model: 8}]"]).grid.n == [20000, {"d_model": 8}]


def test_every_problem_of_the_schema_is_reported_at_once():
    problems = refused(
        [
            "name=a b",
            "grid.seeds=[1, 1]",
            "resources.gpus=1.5",
            "search.space={model.n_layer: {type: int, low: 3, high: 1}}",
        ]
    )
    assert problems == [
        "name: use letters, digits, '_', '.' and '-' only (it names the MLflow experiment and run folder), "
        "got 'a b'",
        "grid.seeds: values must be distinct, got [1, 1]",
        "search.space.model.n_layer.low: low (3) must be < high (1)",
        "resources.gpus: more than one GPU must be a whole number (a fraction <= 1 packs trials on one GPU), "
        "got 1.5",
    ]


class EchoTask(BaseModel):
    """A task from outside the built-in list: it brings its own D fields and metrics."""

    name: Literal["echo"] = "echo"
    n_examples: PositiveInt | None = None
    example_fraction: float | None = None
    d_fields: ClassVar[tuple[str, ...]] = ("n_examples", "example_fraction")
    sequence_metrics: ClassVar[bool] = True


def test_task_kinds_come_from_the_task_schemas():
    # The built-in tasks (trainers/tasks/, the default first); an import path resolves on lookup.
    assert list(task_kinds()) == ["modular", "addition", "charlm", "copy", "corpus", "sparse_parity"]
    modular = task_kinds()["modular"]
    assert modular.d_field == "train_fraction" and modular.counts == {
        "n_train"
    }  # n_train: int, the other a float
    echo = kinds_of([EchoTask])["echo"]
    assert (echo.d_field, echo.counts, echo.sequence_metrics) == ("n_examples", {"n_examples"}, True)


def test_the_metrics_and_d_field_follow_the_task():
    addition = load_study(VALID, ["task={name: addition, n_digits: 2}", "grid.d=[100]"])
    assert addition.d_field == "n_train" and "val_token_acc" in addition.allowed_metrics()
    assert "val_token_acc" not in load_study(VALID).allowed_metrics()
    assert refused(["grid.d=[0.5, 40.5]"]) == ["grid.d[1]: a train_fraction must be in (0, 1), got 40.5"]


def test_the_task_section_may_not_set_a_second_data_size():
    assert refused(["task.n_train=100"]) == [
        "task.n_train: the grid sets the data size as train_fraction (grid.d); give one data size: remove "
        "task.n_train, or set grid.d_field: n_train"
    ]
    study = load_study(VALID, ["task.train_fraction=0.9", "grid.d_field=train_fraction"])
    assert study.trial_data({}, 0.5, {}, 0)["task"]["train_fraction"] == 0.5  # the grid's value wins


def test_loading_has_no_side_effects(tmp_path):
    """A fresh interpreter loads a valid study: no file appears, no RNG moves, and neither Ray,
    Optuna nor MLflow is imported."""
    (tmp_path / "study.yaml").write_text(VALID.read_text())
    code = """if True:
        import json, random, sys
        import numpy, torch
        before = (random.getstate(), numpy.random.get_state()[1].tolist(),
                  torch.random.get_rng_state().tolist())
        from orchestrator.study import load_study
        study = load_study("study.yaml")
        after = (random.getstate(), numpy.random.get_state()[1].tolist(),
                 torch.random.get_rng_state().tolist())
        print(json.dumps({"same_rng": before == after, "digest": study.digest(),
                          "modules": sorted(m for m in ("ray", "optuna", "mlflow") if m in sys.modules)}))"""
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result == {"same_rng": True, "digest": load_study(VALID).digest(), "modules": []}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.yaml"]


def test_a_study_is_frozen():
    study = load_study(VALID)
    with pytest.raises(ValidationError):
        study.name = "other"  # type: ignore[misc]
    assert isinstance(study, Study)
