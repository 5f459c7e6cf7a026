"""YAML in, a frozen typed `Study` out, or every problem at once with its path.

`load_study(path, overrides)` is the one place a study is read. It has no side effects: it
creates no file, run or storage, seeds nothing and probes no device, so a broken config leaves
nothing behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from orchestrator.study.checks import check_study
from orchestrator.study.errors import StudyError, format_errors
from orchestrator.study.schema import Study
from trainers.overrides import OverrideError, apply_overrides

MAPPING_HINT = "a study is a YAML mapping (name:, task:, grid:, ...)"


def duplicate_keys(node: yaml.Node, path: str = "") -> list[str]:
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
            problems += duplicate_keys(value, where)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            problems += duplicate_keys(item, f"{path}[{i}]")
    return problems


def read_yaml(path: Path) -> dict[str, Any]:
    """The study file as plain data; StudyError if it cannot be read, is not YAML, repeats a key
    or is not a mapping."""
    try:
        text = path.read_text()
    except OSError as err:
        raise StudyError([f"{path}: cannot read the study file ({err.strerror})"]) from None
    try:
        # safe_load builds plain data only: a `!!python/...` tag is an error, never a call.
        duplicates = duplicate_keys(yaml.compose(text, Loader=yaml.SafeLoader))
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise StudyError([f"{path}: not valid YAML{where}: {getattr(err, 'problem', err)}"]) from None
    if duplicates:
        raise StudyError(duplicates)
    if data is None:
        raise StudyError([f"{path}: the file is empty; {MAPPING_HINT}"])
    if not isinstance(data, dict):
        raise StudyError([f"{path}: {MAPPING_HINT}, got a {type(data).__name__}"])
    return data


def load_study(path: str | Path, overrides: list[str] = ()) -> Study:
    """Read, override (`--set a.b=value`) and validate a study; raise StudyError listing every
    problem."""
    data = read_yaml(Path(path))
    try:
        data = apply_overrides(data, overrides)
    except OverrideError as err:
        raise StudyError([f"--set: {err}"]) from None
    try:
        study = Study.model_validate(data)
    except ValidationError as err:
        raise StudyError(format_errors(err, model=Study)) from None
    problems = check_study(study)
    if problems:
        raise StudyError(problems)
    return study
