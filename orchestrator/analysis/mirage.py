"""The mirage check (Schaeffer, Miranda & Koyejo 2023, "Are Emergent Abilities of Large
Language Models a Mirage?"): the same runs scored by a discontinuous metric (exact match) and
a continuous one (per-token accuracy, log-likelihood of the answer). A jump that is only in
the discontinuous metric comes from the metric, not from the model: exact match over L
tokens is roughly p^L, which turns a smooth power-law gain in per-token accuracy p into a
sudden-looking rise.

Verdict per pair, from `EmergenceFit.sharp` (an S-shaped jump that a saturating power law
cannot follow; see `emergence.py`):
  "emergent"      sharp under both metrics: the jump survives the continuous metric;
  "mirage"        sharp under the discontinuous metric only;
  "not emergent"  not sharp under the discontinuous metric (no threshold, or smooth);
  "insufficient data"  a metric with a threshold whose sharpness the data cannot decide (too
                  few scales: see emergence.MIN_SCALES_SHARPNESS), so neither verdict holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from orchestrator.analysis.emergence import EmergenceFit, emergence_threshold
from orchestrator.analysis.estimate import jsonable, usable_runs

Verdict = Literal["emergent", "mirage", "not emergent", "insufficient data"]
# The continuous counterparts a sequence task reports, with their best possible values.
DEFAULT_PAIRS = (("val_acc", "val_token_acc"), ("val_acc", "val_answer_logprob"))
BEST_VALUES = {"val_acc": 1.0, "max_val_acc": 1.0, "val_token_acc": 1.0, "val_answer_logprob": 0.0}


@dataclass(frozen=True)
class MirageCheck:
    """One metric pair over one scale axis: both fits and the verdict."""

    discontinuous_metric: str
    continuous_metric: str
    discontinuous: EmergenceFit
    continuous: EmergenceFit
    verdict: Verdict
    reason: str
    group: float | str | None = None  # the fixed value of the other axis, when checked per group

    def to_dict(self) -> dict:
        return jsonable(
            {
                "discontinuous_metric": self.discontinuous_metric,
                "continuous_metric": self.continuous_metric,
                "verdict": self.verdict,
                "reason": self.reason,
                "group": self.group,
                "discontinuous": self.discontinuous.to_dict(),
                "continuous": self.continuous.to_dict(),
            }
        )


def mirage_check(
    x: np.ndarray,
    y_discontinuous: np.ndarray,
    y_continuous: np.ndarray,
    *,
    discontinuous_metric: str = "val_acc",
    continuous_metric: str = "val_token_acc",
    chance_discontinuous: float | None = None,
    chance_continuous: float | None = None,
    best_discontinuous: float | None = 1.0,
    best_continuous: float | None = 1.0,
    group: float | str | None = None,
    **kwargs,
) -> MirageCheck:
    """Fit both metrics of the same runs over scale x and give the verdict. best_*: the best
    possible value of each metric (1 for accuracies, 0 for a log-likelihood). Other keyword
    arguments (agg, min_evidence, n_boot, seed, ...) go to `emergence_threshold` for both."""
    disc = emergence_threshold(
        x, y_discontinuous, chance=chance_discontinuous, best_value=best_discontinuous, **kwargs
    )
    cont = emergence_threshold(
        x, y_continuous, chance=chance_continuous, best_value=best_continuous, **kwargs
    )
    undecided = next(
        (
            (m, f)
            for m, f in ((discontinuous_metric, disc), (continuous_metric, cont))
            if f.sharp is None and f.threshold is not None
        ),
        None,
    )
    if disc.threshold is not None and undecided is not None:
        verdict, reason = "insufficient data", f"{undecided[0]}: {undecided[1].sharp_reason}"
    elif not disc.sharp:
        why = disc.reason or f"it rises smoothly (evidence for a jump {disc.evidence:.3g} < the minimum)"
        verdict, reason = "not emergent", f"{discontinuous_metric}: {why}"
    elif cont.sharp:
        verdict, reason = (
            "emergent",
            (
                f"{continuous_metric} jumps too: threshold {cont.threshold:.4g} against "
                f"{disc.threshold:.4g} under {discontinuous_metric}"
            ),
        )
    else:
        why = cont.reason or f"it rises smoothly (evidence for a jump {cont.evidence:.3g} < the minimum)"
        verdict, reason = (
            "mirage",
            (f"{discontinuous_metric} jumps at {disc.threshold:.4g} but {continuous_metric} does not: {why}"),
        )
    return MirageCheck(
        discontinuous_metric=discontinuous_metric,
        continuous_metric=continuous_metric,
        discontinuous=disc,
        continuous=cont,
        verdict=verdict,
        reason=reason,
        group=group,
    )


def mirage_checks(
    runs: pd.DataFrame,
    *,
    x_col: str = "n_params",
    group_col: str | None = "d_value",
    pairs: tuple[tuple[str, str], ...] = DEFAULT_PAIRS,
    status_col: str | None = "status",
    statuses: tuple[str, ...] = ("completed", "stopped"),
    best_values: dict[str, float | None] | None = None,
    **kwargs,
) -> list[MirageCheck]:
    """Every pair present in a runs table, over x_col, once per value of group_col (or once for
    the whole table when group_col is None). Pairs whose columns are missing or empty are
    skipped; best_values overrides `BEST_VALUES` for the metrics' best possible values."""
    best = {**BEST_VALUES, **(best_values or {})}
    table = usable_runs(runs, (x_col,), status_col, statuses)
    parts = [(None, table)] if group_col is None else list(table.groupby(group_col))
    out = []
    for disc_col, cont_col in pairs:
        if disc_col not in table.columns or cont_col not in table.columns:
            continue
        for value, part in parts:
            data = part[[x_col, disc_col, cont_col]].apply(pd.to_numeric, errors="coerce").dropna()
            if data.empty:
                continue
            out.append(
                mirage_check(
                    data[x_col].to_numpy(),
                    data[disc_col].to_numpy(),
                    data[cont_col].to_numpy(),
                    discontinuous_metric=disc_col,
                    continuous_metric=cont_col,
                    best_discontinuous=best.get(disc_col, 1.0),
                    best_continuous=best.get(cont_col, 1.0),
                    group=value,
                    **kwargs,
                )
            )
    return out
