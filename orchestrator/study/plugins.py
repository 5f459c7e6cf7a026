"""A study's own sampler and stopping rule, named by import path as trainers, tasks and models
are: `search.sampler: package.module:factory`, `prune.mode: package.module:Rule`.

- A sampler is any callable returning an `optuna.samplers.BaseSampler` (a sampler class itself,
  or a factory; OptunaHub's samplers installed as packages are such classes). It is called with
  `seed=` when it takes one, so a resumed cell draws new values as the built-in samplers do.
- A stopping rule is a class (or factory) taking the Study and returning an
  `orchestrator.sweep.stopping.base.StoppingRule`: the same interface as the built-in rules.

Both are imported and checked when the study is validated: a failed import, a callable that
returns something else, or a factory that raises is a problem naming the field, exit 2.
"""

from __future__ import annotations

import inspect
from typing import Any

from trainers.import_path import ImportPathError, import_object, is_import_path

# What the driver calls on a stopping rule (orchestrator/sweep/stopping/base.py: StoppingRule).
RULE_METHODS = ("see", "run_done", "trial_done", "scope", "rules", "lesson", "restore")


def takes_seed(factory: Any) -> bool:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return "seed" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


def make_own_sampler(ref: str, seed: int):
    factory = import_object(ref, what="sampler")
    return factory(seed=seed) if takes_seed(factory) else factory()


def make_own_stopping(ref: str, study):
    return import_object(ref, what="Rule")(study)


def plugin_problems(study) -> list[str]:
    """Why the study's own sampler or stopping rule cannot be used ([] when both can, or when it
    names none)."""
    problems = []
    if is_import_path(study.search.sampler):
        try:
            sampler = make_own_sampler(study.search.sampler, study.search.seed)
        except ImportPathError as err:
            problems.append(f"search.sampler: {err}")
        except Exception as err:  # noqa: BLE001 - the user's factory failing is the study's problem
            problems.append(f"search.sampler: {study.search.sampler} raised {type(err).__name__}: {err}")
        else:
            import optuna  # only here: loading a study that names no sampler of its own imports no Optuna

            if not isinstance(sampler, optuna.samplers.BaseSampler):
                problems.append(
                    f"search.sampler: {study.search.sampler} must return an optuna.samplers.BaseSampler, "
                    f"got a {type(sampler).__name__}"
                )
    if is_import_path(study.prune.mode):
        try:
            rule = make_own_stopping(study.prune.mode, study)
        except ImportPathError as err:
            problems.append(f"prune.mode: {err}")
        except Exception as err:  # noqa: BLE001
            problems.append(f"prune.mode: {study.prune.mode} raised {type(err).__name__}: {err}")
        else:
            missing = [m for m in RULE_METHODS if not callable(getattr(rule, m, None))]
            if missing:
                problems.append(
                    f"prune.mode: {study.prune.mode} must build a stopping rule from the study "
                    f"(a subclass of orchestrator.sweep.stopping.base.StoppingRule); what it built, "
                    f"a {type(rule).__name__}, lacks {', '.join(missing)}"
                )
    return problems
