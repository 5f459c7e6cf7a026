"""Hostile or absurd studies are refused at load, quickly, with the field and why: YAML aliases
(a "billion laughs"), more runs than --max-runs, NaN and infinity in any float field, names and
cell keys that would lead a path out of the study's folders. (tests/unit/broken_configs holds one
study file for each, run through `grokscale run`.)"""

from __future__ import annotations

import math
import shutil
import time
import typing
from pathlib import Path
from typing import Annotated

import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError

from orchestrator.cli import main
from orchestrator.study import Study, StudyError, load_study
from orchestrator.study.grid import Cell
from orchestrator.study.length import _Keys
from orchestrator.sweep.unit import checkpoint_dir, path_part
from trainers.models import ParamCounts
from trainers.spec import TrainSpec

VALID = Path(__file__).parent / "broken_configs" / "_valid.yaml"


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# -- YAML aliases ----------------------------------------------------------------------------------
def billion_laughs(levels: int) -> str:
    """9**levels strings from a file of about 60 bytes a level."""
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + f"\ndescription: *l{levels}\n"


def test_a_billion_laughs_is_refused_at_once_naming_the_line(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(VALID.read_text() + billion_laughs(9))  # 9**9 = 387 million strings in 700 bytes
    t0 = time.monotonic()
    with pytest.raises(StudyError) as info:
        load_study(path)
    assert time.monotonic() - t0 < 2.0  # 7 levels took 17 s before (the walk over the expansion)
    (line,) = info.value.problems
    first = 1 + VALID.read_text().count("\n")  # the line of `l0: &l0 [...]`
    # 10 anchors and 82 aliases (9 a level, and the description's)
    assert line.startswith(f"{path}: YAML anchor '&l0' at line {first}, column 5 (and 91 more)"), line
    assert "not allowed" in line and "write each value out" in line


def test_a_single_alias_is_refused_too_and_in_a_set_value():
    with pytest.raises(StudyError, match=r"--set description=\[&a \[x\], \*a\]: YAML anchor '&a'"):
        load_study(VALID, ["description=[&a [x], *a]"])
    assert load_study(VALID, ["description=5 * 3 & more"]).description == "5 * 3 & more"  # no anchor: text


# -- the number of runs ----------------------------------------------------------------------------
def test_more_runs_than_max_runs_is_refused_unless_the_flag_allows_them(tmp_path, monkeypatch, capsys):
    shutil.copy(VALID, tmp_path / "study.yaml")
    monkeypatch.chdir(tmp_path)
    # 2 cells x 60,000 trials x 1 seed = 120,000 runs, above the default of 100,000
    args = ["validate", "study.yaml", "--set", "grid.d=[0.3, 0.5]", "--set", "search.trials_per_cell=60000"]
    with pytest.raises(SystemExit) as exit_:
        main(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert "error: (study): 120,000 training runs (2 cells x 60,000 trials per cell" in err
    assert "more than the limit of 100,000" in err and "--max-runs 120000" in err
    assert main([*args, "--max-runs", "120000"]) == 0
    assert "= 120000 training runs" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([*args[:4], "--max-runs", "1"])  # two cells of one trial: 2 runs
    assert listing(tmp_path) == ["study.yaml"]


def test_the_cap_is_checked_before_the_grid_is_built(tmp_path):
    """A grid of a million cells is refused on its count, not after building a spec per cell."""
    d = [round(0.1 + i * 0.0008, 4) for i in range(1000)]
    t0 = time.monotonic()
    with pytest.raises(StudyError, match=r"1,000,000 training runs \(1,000,000 cells"):
        load_study(
            VALID,
            [f"grid.n=[{', '.join(str(1000 + i) for i in range(1000))}]", f"grid.d={d}"],
            max_runs=100_000,
        )
    assert time.monotonic() - t0 < 5.0


# -- NaN and infinity ------------------------------------------------------------------------------
def models_under(root: type[BaseModel]) -> set[type[BaseModel]]:
    """`root` and every pydantic model its fields hold, at any depth (unions, lists, Annotated)."""
    found, todo = set(), [root]
    while todo:
        model = todo.pop()
        if model in found:
            continue
        found.add(model)
        for field in model.model_fields.values():
            stack = [field.annotation]
            while stack:
                t = stack.pop()
                if isinstance(t, type) and issubclass(t, BaseModel):
                    todo.append(t)
                stack += typing.get_args(t)
    return found


def float_fields(model: type[BaseModel]):
    """(name, annotation with its constraints, a value holding x) for each field that takes a float."""
    for name, field in model.model_fields.items():
        text = repr(field.annotation)
        if "float" not in text or "dict" in text or typing.get_origin(field.annotation) is typing.Literal:
            continue
        annotated = Annotated[field.annotation, field]
        if "list" in text:
            yield name, annotated, lambda x: [x]
        elif "tuple" in text:
            yield name, annotated, lambda x: (x, x)
        else:
            yield name, annotated, lambda x: x


def test_every_float_field_of_the_study_and_the_spec_refuses_nan_and_infinity():
    models = models_under(Study) | models_under(TrainSpec) | {_Keys}
    checked = []
    for model in models:
        for name, annotated, holding in float_fields(model):
            adapter = TypeAdapter(annotated, config=model.model_config)
            # A float field reads the text "inf" as a number too; a categorical choice keeps it as text.
            texts = ("inf", "nan") if "str" not in repr(annotated) else ()
            for x in (math.inf, -math.inf, math.nan, *texts):
                with pytest.raises(ValidationError):
                    adapter.validate_python(holding(x))
                    pytest.fail(f"{model.__name__}.{name} took {x!r}")
            checked.append(f"{model.__name__}.{name}")
    # The ones the issue names, and the nested sections and search bounds it asks about.
    named = {
        "TrainConfig.lr",
        "TrainConfig.betas",
        "TrainConfig.weight_decay",
        "_Keys.epochs",
        "FloatParam.low",
        "FloatParam.high",
        "CategoricalParam.choices",
        "Grid.d",
        "Grid.flops",
        "Refine.width_decades",
        "TokensPerParam.max",
        "Pruning.safety",
        "Resources.cpus",
        "ModularTask.train_fraction",
    }
    assert named <= set(checked)


@pytest.mark.parametrize(
    "override, path",
    [
        ("train.weight_decay=.inf", "train.weight_decay"),
        ("train.betas=[0.9, .nan]", "train.betas[1]"),
        ("grid.flops=[1.0e+15, .inf]", "grid.flops[1]"),
        ("prune.safety=.inf", "prune.safety"),
        ("resources.gpus=-.inf", "resources.gpus"),
        ("model.dropout=.nan", "model.dropout"),
    ],
)
def test_a_non_finite_value_is_named_by_its_field(override, path):
    with pytest.raises(StudyError) as info:
        load_study(VALID, [override])
    assert any(line.startswith(f"{path}: ") and "finite" in line for line in info.value.problems), info.value


# -- names that become paths -----------------------------------------------------------------------
@pytest.mark.parametrize("name", [".", "..", "..."])
def test_a_study_name_of_dots_is_refused(name):
    with pytest.raises(StudyError, match=r"^name: '\.' and '\.\.' name a folder itself or its parent"):
        load_study(VALID, [f"name='{name}'"])


def test_path_part_keeps_the_grids_keys_and_makes_anything_else_one_safe_folder():
    for key in ("N[d_model=16]_D=0.5", "N[d_mlp=64,d_model=16,n_layer=2]_C=1e+15", "N[n=20000]_D=0.3"):
        assert path_part(key) == key  # existing studies' checkpoints stay where they are
    assert path_part("N[width=../../x]_D=0.5") == "N[width=..%2F..%2Fx]_D=0.5"
    assert path_part("a%2Fb") != path_part("a/b")  # quoting keeps distinct keys distinct
    for special in ("", ".", "..", "x" * 300):
        part = path_part(special)
        assert part.startswith("sha256-") and len(part) == 39 and "/" not in part


def test_a_shape_value_cannot_lead_a_checkpoint_out_of_the_checkpoints_folder(tmp_path):
    study = Study.model_validate(
        {
            "name": "s",
            "trainer": "pkg:run",
            "task": {},
            "grid": {"n": [{}], "d": [0.5]},
            "workdir": str(tmp_path / "work"),
        }
    )
    for hostile in ("../../../../x", "/etc", ".."):
        cell = Cell(0, 0, {"width": hostile}, 0.5, ParamCounts(0, 0), 0, None)
        folder = checkpoint_dir(study, cell, 3, 1).resolve()
        assert folder.is_relative_to(study.checkpoint_path.resolve()), folder
        assert folder.relative_to(study.checkpoint_path.resolve()).parts[1:] == ("trial=3", "seed=1")
