"""YAML in, a frozen typed `Study` out, or every problem at once with its path.

`load_study(path, overrides)` is the one place a study is read. It has no side effects: it
creates no file, run or storage, seeds nothing and probes no device, so a broken config leaves
nothing behind.

Paths of a corpus task (`task.source`, `task.cache_dir`) are made absolute here, so every Ray
worker, whatever its working directory, reads the same files: a path written in the study file
is relative to the file's folder (the study and its data travel together); one given with
`--set` is relative to the current directory, as a path typed at the shell is. The corpus is
tokenized into `task.cache_dir`, by default `<workdir>/corpus`, shared by the study's runs.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from orchestrator.study.checks import check_study, run_cap_problems
from orchestrator.study.errors import StudyError, format_errors
from orchestrator.study.schema import Study
from orchestrator.study.tasks import import_problems
from trainers.overrides import OverrideError, apply_overrides
from trainers.own_code import is_import_path

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
                problems.append(
                    f"{where}: duplicate key (line {key.start_mark.line + 1}); give each key once"
                )
            seen.add(name)
            problems += duplicate_keys(value, where)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            problems += duplicate_keys(item, f"{path}[{i}]")
    return problems


def anchor_problems(text: str, where: str) -> list[str]:
    """YAML anchors and aliases (`&a`, `*a`, `<<: *a`) are refused, not expanded: a few hundred
    bytes of nested aliases ("billion laughs") stand for billions of values, which every later step
    (duplicate keys, validation, the logged config) would walk. A study writes each value out.
    Read as events, so the check is linear in the text; a YAMLError is the caller's to report."""
    found = [
        e
        for e in yaml.parse(text, Loader=yaml.SafeLoader)
        if isinstance(e, yaml.AliasEvent) or getattr(e, "anchor", None)
    ]
    if not found:
        return []
    first = found[0]
    sign = "*" if isinstance(first, yaml.AliasEvent) else "&"
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    mark = first.start_mark
    return [
        f"{where}: YAML {'alias' if sign == '*' else 'anchor'} '{sign}{first.anchor}' at line "
        f"{mark.line + 1}, column {mark.column + 1}{more}: anchors and aliases are not allowed in a study "
        f"(a few nested aliases can expand into billions of values); write each value out"
    ]


def override_anchor_problems(overrides: list[str]) -> list[str]:
    """A `--set` value is read as YAML too (trainers/overrides.py): no aliases there either."""
    problems = []
    for item in overrides:
        with contextlib.suppress(yaml.YAMLError):  # not YAML: parse_value keeps it as a string
            problems += anchor_problems(item.partition("=")[2], f"--set {item}")
    return problems


def read_yaml(path: Path) -> dict[str, Any]:
    """The study file as plain data; StudyError if it cannot be read, is not YAML, repeats a key
    or is not a mapping."""
    try:
        text = path.read_text()
    except OSError as err:
        raise StudyError([f"{path}: cannot read the study file ({err.strerror})"]) from None
    try:
        if aliases := anchor_problems(text, str(path)):
            raise StudyError(aliases)
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


CORPUS_PATHS = ("source", "cache_dir")  # the corpus task's paths, made absolute (module docstring)
CORPUS_CACHE = "corpus"  # the default cache_dir: <workdir>/corpus


def absolute_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """data with a corpus task's relative paths joined to `base` (a leading ~ is the home folder)."""
    task = data.get("task")
    if not (isinstance(task, dict) and task.get("name") == "corpus"):
        return data
    fixed = {
        k: os.path.normpath(base / Path(v).expanduser())
        for k in CORPUS_PATHS
        if isinstance(v := task.get(k), str) and v.strip()
    }
    return {**data, "task": {**task, **fixed}} if fixed else data


def own_code_problems(study: Study) -> list[str]:
    """A task or model named by import path imports and keeps its protocol; a model of the user's
    is sized by shapes only (a target count is resolved for the built-in families)."""
    problems = import_problems(study.task, study.model)
    if is_import_path(study.model.get("family")) and not problems:
        problems += [
            f"grid.n[{i}]: a target parameter count is resolved for the built-in model families only; "
            f"give {study.model['family']}'s N as a shape of its Config's fields (e.g. {{width: 64}})"
            for i, n in enumerate(study.grid.n)
            if not isinstance(n, dict)
        ]
    return problems


def packing_problems(study: Study) -> list[str]:
    """`pack.mode: on` where packing cannot apply (trainers/packed.py: can_pack); `auto` just runs
    such a study one run per task."""
    if study.pack.mode != "on":
        return []
    if study.task.get("name") == "corpus":
        why = "task 'corpus' reads its windows from disk, run by run"
    elif is_import_path(study.model.get("family")):
        why = f"model.family {study.model['family']!r} is your own module, which vmap may not batch"
    else:
        return []
    return [
        f"pack.mode: 'on' trains several runs as one batched model (trainers/packed.py), but {why}; "
        f"set pack.mode: off (or auto, which then runs one run per task)"
    ]


def with_corpus_cache(study: Study) -> Study:
    """A corpus study's cache_dir, <workdir>/corpus unless the study gives one."""
    if study.task.get("name") != "corpus" or study.task.get("cache_dir"):
        return study
    cache = str((study.workdir_path / CORPUS_CACHE).expanduser().absolute())
    return study.model_copy(update={"task": {**study.task, "cache_dir": cache}})


def load_study(path: str | Path, overrides: list[str] = (), max_runs: int | None = None) -> Study:
    """Read, override (`--set a.b=value`) and validate a study; raise StudyError listing every
    problem. With `max_runs`, a grid of more runs is refused before anything else is checked
    (checking builds a spec per cell)."""
    path = Path(path)
    data = absolute_paths(read_yaml(path), path.expanduser().absolute().parent)
    if aliases := override_anchor_problems(overrides):
        raise StudyError(aliases)
    try:
        data = absolute_paths(apply_overrides(data, overrides), Path.cwd())
    except OverrideError as err:
        raise StudyError([f"--set: {err}"]) from None
    try:
        study = Study.model_validate(data)
    except ValidationError as err:
        raise StudyError(format_errors(err, model=Study)) from None
    if max_runs is not None and (problems := run_cap_problems(study, max_runs)):
        raise StudyError(problems)
    if study.trainer is None:
        problems = own_code_problems(study)
        if problems:  # nothing else can be checked against a class that is not there
            raise StudyError(problems)
        study = with_corpus_cache(study)
    problems = check_study(study) + (packing_problems(study) if study.trainer is None else [])
    if problems:
        raise StudyError(problems)
    return study
