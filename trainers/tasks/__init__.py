"""Tasks: each builds its train and validation tensors from its settings and a seed.

Every task is a token-sequence problem. `target == "last"` means one label per example, read
at the last position (modular arithmetic, sparse parity); `target == "sequence"` means a label
per position with -100 where there is nothing to predict (addition, character LM).
Nothing is downloaded: data is generated from the seed, read from the standard library, or read
from a local corpus (trainers/corpus), which streams from disk instead of sitting in tensors.

A built-in task is one module of this package, `trainers/tasks/<name>.py`, defining one class
whose field `name` is `Literal["<name>"]`. The class keeps the protocol a task of the user's keeps
(trainers/own_code.py: a pydantic model of its settings, `make(self, seed) -> TaskData`,
`d_fields`, optionally `sequence_metrics`, `language_model`, `chance_level`); `builtin_tasks()`
finds it and checks it by that protocol. Everything that lists the built-in tasks reads them from
there: the spec's task union and its "allowed:" list (trainers/spec.py), and the study layer's
TaskKinds (orchestrator/study/tasks.py). README "Add a built-in task" walks through one.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from functools import cache
from typing import Literal

import torch
from pydantic import BaseModel

from trainers.corpus import CorpusData
from trainers.own_code import task_problem

IGNORE = -100  # torch.nn.functional.cross_entropy's default ignore_index
DEFAULT_TASK = "modular"  # a spec's task when its section names none; listed first


@dataclass(frozen=True)
class TaskData:
    x_train: torch.Tensor  # (N, T) long
    y_train: torch.Tensor  # (N,) long for "last", (N, T) long for "sequence"
    x_val: torch.Tensor
    y_val: torch.Tensor
    vocab_size: int  # input tokens
    n_out: int  # output classes
    target: Literal["last", "sequence"]
    # "exact": a sequence counts as right only when every labelled token is (the discontinuous
    # metric of Schaeffer et al. 2023); "token": accuracy per labelled token.
    accuracy: Literal["exact", "token"]
    n_train: int  # D as a count: examples, or tokens for the LM
    info: dict
    # A corpus on disk (task 'corpus'): the training loop reads its windows a batch at a time
    # and evaluates on its held-out split; the four tensors above are then empty, (0, T).
    stream: CorpusData | None = None

    @property
    def seq_len(self) -> int:
        return self.x_train.shape[1]

    @property
    def n_examples(self) -> int:
        """Unique training examples: rows of x_train, or a corpus's non-overlapping windows."""
        return self.stream.n_train_windows() if self.stream is not None else len(self.x_train)


# Every generator a run draws from, by stream: separate streams so that, e.g., the split does
# not shift when the batch order changes. The model's init and dropout use the global generator,
# seeded with the run's seed (trainers/core.py: build_run).
STREAM_DATA = 0  # the split, or the training sample
STREAM_VAL = 1  # a fresh validation sample
STREAM_BATCHES = 7  # the minibatch order of the training loops


def generator(seed: int, stream: int) -> torch.Generator:
    """The run's generator for one stream: the one place seeds are derived."""
    return torch.Generator().manual_seed(seed * 1_000_003 + stream)


def make_task(task, seed: int) -> TaskData:
    """The task's data from the seed: every task, built-in or the user's (trainers/own_code.py:
    OwnTask), through its own make(seed)."""
    data = task.make(seed)
    if not isinstance(data, TaskData):
        raise ValueError(
            f"task.name: {task.name}.make(seed) must return trainers.tasks.TaskData, "
            f"got {type(data).__name__}"
        )
    return data


@cache
def builtin_tasks() -> dict[str, type[BaseModel]]:
    """Every built-in task class by name: the default first, then by module name.

    The modules are imported here, when first asked, rather than at the top of this file: they
    import this package (TaskData, generator), so the package cannot import them while it loads.
    """
    found = {}
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: (m.name != DEFAULT_TASK, m.name)):
        name = module_info.name
        if name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{name}")
        classes = [
            c
            for c in vars(module).values()
            if isinstance(c, type)
            and issubclass(c, BaseModel)
            and c.__module__ == module.__name__
            and "name" in c.model_fields
        ]
        named = [c for c in classes if c.model_fields["name"].default == name]
        if len(named) != 1:
            raise TypeError(
                f"{module.__name__} must define one task class with name: Literal[{name!r}] = "
                f"{name!r}; found {[c.__name__ for c in named] or 'none'}"
            )
        problem = task_problem(named[0], builtin=True)
        if problem:
            raise TypeError(f"{module.__name__}.{named[0].__name__}: {problem}")
        found[name] = named[0]
    return found
