"""grokscale trainers: tasks, models and one training loop. Imports no Ray, Optuna or MLflow."""

from trainers.models import ParamCounts, build_model, count_params, resolve_shape, shape_counts
from trainers.schedules import lr_at
from trainers.spec import TrainSpec
from trainers.tasks import TaskData, make_task
from trainers.train import Events, TrainResult, train

__all__ = [
    "Events",
    "ParamCounts",
    "TaskData",
    "TrainResult",
    "TrainSpec",
    "build_model",
    "count_params",
    "lr_at",
    "make_task",
    "resolve_shape",
    "shape_counts",
    "train",
]
