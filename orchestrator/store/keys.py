"""What MLflow accepts as a run's metric, param or tag, checked before a write is queued.

Every path that writes runs (MlflowClient, MLflow's REST API as JSON, plain SQL) gets only what
MLflow's own checks pass (`mlflow.utils.validation`: a name's characters, that it is no path that
resolves to another name, its length; a metric's value a number). So no store refuses a batch
for one bad entry and loses the rest with it: a bad entry is dropped alone, and `Checked.dropped`
says which and why (the tracker puts that in the run's `grokscale.dropped_keys` tag and counts it
for the study). A value longer than MLflow keeps is cut to its limit, as MLflow itself does
(MLFLOW_TRUNCATE_LONG_VALUES); a key is never cut, since two cut keys could become one.
`batches` splits a run's entries into requests within MLflow's limits per log_batch.

MLflow's checks are private functions whose calls (key, value) have not changed from MLflow 2.16
through 3.17; the installed MLflow's own are used, so what passes here passes its client.
"""

from __future__ import annotations

import functools
import numbers
from dataclasses import dataclass, field
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.utils import validation

MAX_PARAM_CHARS = validation.MAX_PARAM_VAL_LENGTH  # 6000
MAX_TAG_CHARS = validation.MAX_TAG_VAL_LENGTH  # 8000
MAX_METRICS_PER_BATCH = validation.MAX_METRICS_PER_BATCH  # 1000
MAX_PARAMS_TAGS_PER_BATCH = validation.MAX_PARAMS_TAGS_PER_BATCH  # 100 params, and 100 tags
MAX_ENTITIES_PER_BATCH = validation.MAX_ENTITIES_PER_BATCH  # 1000 metrics, params and tags together
WHY_CHARS = 200  # of MLflow's message, in a dropped key's reason


@functools.lru_cache(maxsize=1 << 16)
def key_problem(kind: str, key: Any) -> str | None:
    """Why MLflow refuses `key` as a `kind` ("metric", "param", "tag") name; None when it takes
    it. Cached: a run logs the same few keys thousands of times."""
    if not isinstance(key, str):
        return f"a {kind} name must be text, not {type(key).__name__}"
    try:
        if kind == "metric":
            validation._validate_metric(key, 0.0, 0, 0)  # the name, and its length
        elif kind == "param":
            validation._validate_param(key, "")
        else:
            validation._validate_tag(key, "")
    except MlflowException as err:
        return " ".join(err.message.split())[:WHY_CHARS]
    return None


def metric_value(value: Any) -> float | str:
    """A metric's value as MLflow stores it (a float; NaN and infinities too), or why it is not
    one. A bool or an int counts as a number, as it always has for grokscale's trainers."""
    if isinstance(value, numbers.Real):
        try:
            return float(value)
        except (OverflowError, ValueError, TypeError) as err:
            return f"value {str(value)[:40]!r} is no 64-bit float ({err})"
    return f"value {str(value)[:40]!r} ({type(value).__name__}) is not a number"


@dataclass
class Checked:
    """Entries MLflow takes, and what was dropped (key -> why) on the way."""

    metrics: list[tuple[str, float, int, int]] = field(default_factory=list)
    params: list[Any] = field(default_factory=list)
    tags: list[Any] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)

    def add_metric(self, key: Any, value: Any, timestamp: int, step: int) -> None:
        why = key_problem("metric", key)
        v = metric_value(value) if why is None else why
        if isinstance(v, float):
            self.metrics.append((key, v, timestamp, step))
        else:
            self.dropped.setdefault(f"metric {key}", v)

    def add_param(self, key: Any, value: str) -> None:
        from mlflow.entities import Param

        why = key_problem("param", key)
        if why is None:
            self.params.append(Param(key, value[:MAX_PARAM_CHARS]))
        else:
            self.dropped.setdefault(f"param {key}", why)

    def add_tag(self, key: Any, value: str) -> None:
        from mlflow.entities import RunTag

        why = key_problem("tag", key)
        if why is None:
            self.tags.append(RunTag(key, value[:MAX_TAG_CHARS]))
        else:
            self.dropped.setdefault(f"tag {key}", why)


def check_batch(metrics=(), params=(), tags=()) -> None:
    """MlflowException (INVALID_PARAMETER_VALUE), as MLflow raises it, for the first name in a
    log_batch that MLflow refuses: for a writer that bypasses its client (sql_writes.py). Each
    distinct name is checked once a call, and once a process (`key_problem`)."""
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    for kind, keys in (
        ("metric", {m[0] for m in metrics}),
        ("param", {p.key for p in params}),
        ("tag", {t.key for t in tags}),
    ):
        for key in keys:
            why = key_problem(kind, key)
            if why is not None:
                raise MlflowException(why, INVALID_PARAMETER_VALUE)


def batches(metrics: list, params: list = (), tags: list = ()) -> list[tuple[list, list, list]]:
    """(metrics, params, tags) as log_batch requests within MLflow's limits, in order: the points
    first, the params and tags with the last points (a run's end tags arrive with its final
    metrics when they fit in one request), any more params and tags after them."""
    metrics, params, tags = list(metrics), list(params), list(tags)
    extras = [
        (params[i : i + MAX_PARAMS_TAGS_PER_BATCH], tags[i : i + MAX_PARAMS_TAGS_PER_BATCH])
        for i in range(0, max(len(params), len(tags)), MAX_PARAMS_TAGS_PER_BATCH)
    ]
    first_extra = len(extras[0][0]) + len(extras[0][1]) if extras else 0
    last = min(len(metrics), MAX_METRICS_PER_BATCH, MAX_ENTITIES_PER_BATCH - first_extra)
    head, tail = metrics[: len(metrics) - last], metrics[len(metrics) - last :]
    out = [(head[i : i + MAX_METRICS_PER_BATCH], [], []) for i in range(0, len(head), MAX_METRICS_PER_BATCH)]
    if tail or extras:
        p, t = extras[0] if extras else ([], [])
        out.append((tail, p, t))
    out += [([], p, t) for p, t in extras[1:]]
    return out
