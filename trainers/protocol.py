"""The trainer protocol: what a researcher's own training function gets and gives back.

A study names it, `trainer: mypkg.train:run` (or a short name offered in the entry-point group
`grokscale.trainers`), and every run of the study calls

    run(config: RunConfig, report: Callable[[dict], bool], checkpoint_dir: str) -> dict

`config` is the run's resolved config; `report(metrics)` takes one evaluation (a dict with at
least `step`; `val_acc`, `train_acc`, `val_loss`, ... as the function has them) and returns True
when the run should stop (success-stop or the study's stopping rule); `checkpoint_dir` is where
the function saves what it needs to resume after its worker died (it is the same directory when
Ray retries the run): report an evaluation before saving the checkpoint that follows it, so a
retry never resumes past an evaluation it did not report. It returns its final metrics,
optionally with `n_params` by group (`count_params_by_group(module)`). The orchestrator turns
that into the result the built-in trainers return (orchestrator/sweep/user_trainer.py).

Imports no Ray, Optuna or MLflow: a trainer can be written and tested without them.
"""

from __future__ import annotations

import inspect
import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from pydantic import Field
from torch import nn

from trainers.fields import Frozen
from trainers.import_path import ImportPathError, import_object
from trainers.models import EMBEDDING_MODULES, ParamCounts
from trainers.spec import TrainConfig

ENTRY_POINT_GROUP = "grokscale.trainers"
PARAM_NAMES = ("config", "report", "checkpoint_dir")
# The keys of a study's `train:` section grokscale itself reads for a user trainer: the budget
# and the event thresholds (success-stop, the report's grokking events). The rest is the user's.
BUDGET_KEYS = ("steps", "eval_every", "train_threshold", "val_threshold", "success_stop_evals")

Trainer = Callable[..., dict]


class TrainerError(ValueError):
    """The study's `trainer:` cannot be used; the message says why (an ImportPathError's, when it
    cannot be imported)."""


@dataclass(frozen=True)
class RunConfig:
    """One run's resolved config, as the user's function receives it."""

    n: int | dict[str, Any]  # the grid's N entry as given: a target count or a shape
    d: float  # the grid's D value
    seed: int
    steps: int  # the budget: train.steps
    eval_every: int  # report every this many steps
    params: dict[str, Any] = field(default_factory=dict)  # searched values, by dotted key (train.lr)
    # The study's own sections, searched values applied (params["train.lr"] is train["lr"] too).
    task: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"  # "cuda" when the study gives the run GPUs (resources)
    # This process's place in the run's process group: rank, size, local_rank. A run given
    # several workers (resources) finds torch.distributed initialized; every rank calls
    # report() at the same evaluations, and rank 0's reports are the run's (others' are ignored;
    # each rank gets rank 0's answer).
    world: dict[str, int] = field(default_factory=lambda: {"rank": 0, "size": 1, "local_rank": 0})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class UserSpec(Frozen):
    """What travels to the worker for one run of a user trainer (the built-in trainers get a
    TrainSpec). `train` is grokscale's reading of the budget and thresholds, which the report
    hook and the stopping rules use exactly as they use a TrainSpec's."""

    trainer: str  # module:attribute, or an entry point's short name
    sys_path: list[str] = Field(default_factory=list)  # where the driver found its package
    config: dict[str, Any]  # RunConfig's fields
    train: TrainConfig

    def run_config(self) -> RunConfig:
        return RunConfig(**self.config)


def is_user_spec(spec_json: str) -> bool:
    """Whether a recorded spec (JSON) is a UserSpec rather than the built-in trainers' TrainSpec."""
    try:
        data = json.loads(spec_json)
    except ValueError:
        return False
    return isinstance(data, dict) and "trainer" in data


def grokscale_train(train: dict[str, Any]) -> TrainConfig:
    """grokscale's reading of a user trainer's `train:` section: the budget keys only (no
    warmup: the built-in schedule is not the user's)."""
    return TrainConfig.model_validate({"warmup_steps": 0, **{k: train[k] for k in BUDGET_KEYS if k in train}})


def _entry_point(name: str) -> Any:
    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not found:
        known = sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
        raise TrainerError(
            f"{name!r} is neither 'package.module:function' nor a trainer registered in the "
            f"entry-point group {ENTRY_POINT_GROUP!r} (registered: {', '.join(known) or 'none'})"
        )
    return import_object(found[0].value)


def signature_problem(fn: Any) -> str | None:
    """Why `fn` cannot be called as a trainer (None if it can): it must take the three arguments
    positionally, or by the names config, report, checkpoint_dir."""
    if not callable(fn):
        return f"must be a function, got a {type(fn).__name__}"
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None  # no signature to read (some builtins): the call will tell
    for args, kwargs in (((None,) * 3, {}), ((), dict.fromkeys(PARAM_NAMES))):
        try:
            sig.bind(*args, **kwargs)
            return None
        except TypeError:
            continue
    return (
        f"must accept (config, report, checkpoint_dir), positionally or by those names; "
        f"{getattr(fn, '__name__', fn)!s} has the signature {sig}"
    )


def load_trainer(ref: str) -> Trainer:
    """The trainer a study names, checked; TrainerError says why it cannot be used."""
    ref = ref.strip()
    if not ref:
        raise TrainerError("empty; write it as 'package.module:function'")
    try:
        fn = import_object(ref) if ":" in ref else _entry_point(ref)
    except ImportPathError as err:
        raise TrainerError(str(err)) from None
    problem = signature_problem(fn)
    if problem:
        raise TrainerError(problem)
    return fn


def call_trainer(fn: Trainer, config: RunConfig, report: Callable[[dict], bool], checkpoint_dir: str) -> Any:
    """Positionally when the function takes three arguments so, else by name."""
    try:
        inspect.signature(fn).bind(config, report, checkpoint_dir)
    except TypeError:
        return fn(config=config, report=report, checkpoint_dir=checkpoint_dir)
    except ValueError:  # no signature to read
        pass
    return fn(config, report, checkpoint_dir)


def package_root(ref: str) -> str | None:
    """The sys.path entry the driver imported the trainer's package from, for workers whose
    path lacks it (a Ray worker on another node of a shared file system, say)."""
    module_name = ref.partition(":")[0] if ":" in ref else None
    module = sys.modules.get(module_name) if module_name else None
    path = getattr(module, "__file__", None)
    if not path:
        return None
    root = Path(path).resolve().parent
    depth = module_name.count(".") + (Path(path).name == "__init__.py")
    for _ in range(depth):
        root = root.parent
    return str(root)


def count_params_by_group(module: nn.Module, embedding: Iterable[str] = EMBEDDING_MODULES) -> dict[str, int]:
    """A torch module's parameters by group, with trainers.models' convention: "embedding" holds
    the vocabulary-sized matrices (every nn.Embedding, and the submodules named in `embedding`,
    by default tok_emb, pos_emb and unembed: name your readout `unembed`), "non_embedding" the
    rest (Kaplan et al. 2020); "total" is both (Hoffmann et al. 2022). A shared parameter counts
    once."""
    groups = set(embedding) | {
        name for name, m in module.named_modules() if name and isinstance(m, nn.Embedding)
    }
    emb = non = 0
    for name, p in module.named_parameters():
        if any(name == g or name.startswith(f"{g}.") for g in groups):
            emb += p.numel()
        else:
            non += p.numel()
    return ParamCounts(emb, non).as_dict()
