"""Regularization per (N, D) cell: the best trial of the search, and how much each searched
parameter mattered, with Optuna's importance evaluators (fANOVA by default: Hutter, Hoos &
Leyton-Brown 2014, as implemented in `optuna.importance.FanovaImportanceEvaluator`).

A trial's value is the mean of the objective over its seeds, as in the driver. Importances are
computed on an in-memory Optuna study rebuilt from the table (`optuna.trial.create_trial`),
so they work on any runs table, not only on a live storage. Optuna is imported only here,
and only when importances are asked for.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from orchestrator.analysis.estimate import jsonable, usable_runs

MIN_TRIALS = 4  # fewer trials than this cannot say which of the parameters mattered


@dataclass(frozen=True)
class CellRegularization:
    """One cell's search: its best trial and the importance of each searched parameter
    (normalized to sum to 1; None, with `reason`, when it cannot be estimated)."""

    cell: str
    objective: str
    direction: str
    n_trials: int
    best_trial: int | None
    best_value: float | None
    best_params: dict[str, Any] = field(default_factory=dict)
    importances: dict[str, float] | None = None
    reason: str | None = None
    evaluator: str = "fanova"

    def to_dict(self) -> dict:
        return jsonable(self)


def trial_table(
    runs: pd.DataFrame,
    *,
    objective: str = "max_val_acc",
    cell_col: str = "cell",
    trial_col: str = "trial_number",
    param_prefix: str = "param.",
    status_col: str | None = "status",
    statuses: tuple[str, ...] = ("completed", "stopped"),
) -> pd.DataFrame:
    """One row per (cell, trial): the objective's mean over seeds (`value`), the seeds counted
    (`n_seeds`), and the searched values (columns `param_prefix...`, prefix kept; numbers when
    every value parses as one, since MLflow hands params back as text)."""
    table = usable_runs(runs, (objective, cell_col, trial_col), status_col, statuses)
    table = table.assign(_value=pd.to_numeric(table[objective], errors="coerce")).dropna(subset=["_value"])
    params = [c for c in table.columns if c.startswith(param_prefix)]
    grouped = table.groupby([cell_col, trial_col], sort=True)
    out = grouped["_value"].agg(value="mean", n_seeds="size").reset_index()
    if params:
        out = out.merge(grouped[params].first().reset_index(), on=[cell_col, trial_col])
        for p in params:
            out[p] = _coerce(out[p])
    return out


def cell_regularization(
    runs: pd.DataFrame,
    *,
    objective: str = "max_val_acc",
    direction: Literal["maximize", "minimize"] = "maximize",
    cell_col: str = "cell",
    trial_col: str = "trial_number",
    param_prefix: str = "param.",
    status_col: str | None = "status",
    statuses: tuple[str, ...] = ("completed", "stopped"),
    evaluator: Literal["fanova", "pedanova"] = "fanova",
    distributions: dict | None = None,
    min_trials: int = MIN_TRIALS,
    seed: int = 0,
) -> list[CellRegularization]:
    """Per cell of a runs table (one row per training run): the best trial by `objective` in
    `direction` (ties: the lowest trial number) and the importances of the searched parameters.
    distributions: Optuna distributions by parameter name without the prefix (e.g. from the
    study's search space); inferred from the values when not given."""
    if direction not in ("maximize", "minimize"):
        raise ValueError(f"direction must be 'maximize' or 'minimize', got {direction!r}")
    trials = trial_table(
        runs,
        objective=objective,
        cell_col=cell_col,
        trial_col=trial_col,
        param_prefix=param_prefix,
        status_col=status_col,
        statuses=statuses,
    )
    params = [c for c in trials.columns if c.startswith(param_prefix)]
    out = []
    for cell, part in trials.groupby(cell_col, sort=True):
        ranked = part.sort_values(["value", trial_col], ascending=[direction == "minimize", True])
        best = ranked.iloc[0]
        best_params = {c[len(param_prefix) :]: _plain(best[c]) for c in params if not pd.isna(best[c])}
        importances, reason = param_importances(
            part.rename(columns={c: c[len(param_prefix) :] for c in params}),
            [c[len(param_prefix) :] for c in params],
            direction=direction,
            evaluator=evaluator,
            distributions=distributions,
            min_trials=min_trials,
            seed=seed,
        )
        out.append(
            CellRegularization(
                cell=str(cell),
                objective=objective,
                direction=direction,
                n_trials=len(part),
                best_trial=int(best[trial_col]),
                best_value=float(best["value"]),
                best_params=best_params,
                importances=importances,
                reason=reason,
                evaluator=evaluator,
            )
        )
    return out


def param_importances(
    trials: pd.DataFrame,
    params: list[str],
    *,
    value_col: str = "value",
    direction: str = "maximize",
    evaluator: str = "fanova",
    distributions: dict | None = None,
    min_trials: int = MIN_TRIALS,
    seed: int = 0,
) -> tuple[dict[str, float] | None, str | None]:
    """Importances of `params` for `value_col` over a table of trials (one row each), and None
    with the reason when there are fewer than `min_trials` trials or no parameter took two or
    more distinct values. Parameters that never varied are left out of the result."""
    trials = trials[np.isfinite(pd.to_numeric(trials[value_col], errors="coerce"))]
    if len(trials) < min_trials:
        return None, f"{len(trials)} trial(s) with a value; importances need at least {min_trials}"
    columns = {p: _coerce(trials[p]) for p in params if p in trials.columns}
    varied = [p for p, col in columns.items() if col.dropna().nunique() >= 2]
    if not varied:
        return None, "no searched parameter took two or more distinct values"
    scores = pd.to_numeric(trials[value_col])
    if scores.nunique() < 2:  # fANOVA would raise "zero total variance"; there is nothing to apportion
        return (
            None,
            f"every trial scored the same ({scores.iloc[0]:.4g}): no parameter mattered within this cell",
        )
    import optuna  # lazily: the rest of the analysis needs no Optuna

    dists = {p: (distributions or {}).get(p) or _distribution(columns[p]) for p in varied}
    built = []
    for i in range(len(trials)):
        values = {p: _plain(columns[p].iloc[i]) for p in varied if not pd.isna(columns[p].iloc[i])}
        built.append(
            optuna.trial.create_trial(
                params=values,
                distributions={p: dists[p] for p in values},
                value=float(trials[value_col].iloc[i]),
            )
        )
    if evaluator == "fanova":
        chosen = optuna.importance.FanovaImportanceEvaluator(seed=seed)
    elif evaluator == "pedanova":
        chosen = optuna.importance.PedAnovaImportanceEvaluator()
    else:
        chosen = None
    if chosen is None:
        raise ValueError(f"evaluator must be 'fanova' or 'pedanova', got {evaluator!r}")
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created in memory" line
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ExperimentalWarning for PED-ANOVA
            study = optuna.create_study(direction=direction)
            study.add_trials(built)
            result = optuna.importance.get_param_importances(study, evaluator=chosen, params=varied)
    except RuntimeError as err:  # fANOVA's forest found no split (e.g. scores that differ by rounding only)
        return None, f"the importance evaluator found nothing to apportion: {err}"
    finally:
        optuna.logging.set_verbosity(verbosity)
    return {k: float(v) for k, v in result.items()}, None


def _coerce(column: pd.Series) -> pd.Series:
    """Values as logged (MLflow stores params as strings): numbers when every value parses."""
    numeric = pd.to_numeric(column, errors="coerce")
    if numeric.notna().sum() == column.notna().sum() and column.dtype != bool:
        return numeric
    return column.map(lambda v: v if pd.isna(v) else str(v))


def _distribution(column: pd.Series):
    import optuna

    values = column.dropna()
    if not pd.api.types.is_numeric_dtype(values):
        return optuna.distributions.CategoricalDistribution(sorted(set(values)))
    low, high = float(values.min()), float(values.max())
    log = low > 0 and high / low >= 10  # a search over a decade or more was almost surely in log scale
    if np.all(values == np.round(values)) and pd.api.types.is_integer_dtype(values):
        return optuna.distributions.IntDistribution(int(low), int(high), log=log)
    return optuna.distributions.FloatDistribution(low, high, log=log)


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
