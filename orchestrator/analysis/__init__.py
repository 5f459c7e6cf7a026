"""The study's analysis: pure functions on arrays and tables, no I/O, no Ray or MLflow.

Each returns a frozen result that carries its uncertainty, says None (with a reason) when
nothing was found, and has a JSON-safe `to_dict()`.

- `emergence_threshold`, `critical_sizes`: where a metric leaves chance over N or D
  (sigmoid in log scale, bootstrap interval, sharpness).
- `mirage_check`, `mirage_checks`: the same runs under a discontinuous and a continuous metric.
- `grokking_events`, `grokking_phase`, `grokking_phases`, `curve_events`: memorization and
  generalization steps, delay, ratio, and the learning phase of each run.
- `fit_scaling_law`, `fit_power_law`: L(N, D), L(N), L(D) as in Hoffmann et al. (2022).
- `cell_regularization`, `param_importances`, `trial_table`: the best trial per cell and the
  importance of each searched parameter (Optuna, imported lazily).

The runs tables these take have one row per training run, with columns named as in the
report (`cell`, `n_params`, `n_train`, `d_value`, `seed`, `trial_number`, `status`,
`param.<dotted path>`, final metrics such as `max_val_acc`); every column name is an argument.
"""

from orchestrator.analysis.emergence import CriticalSizes, EmergenceFit, critical_sizes, emergence_threshold
from orchestrator.analysis.estimate import Estimate
from orchestrator.analysis.grokking import (PHASES, GrokkingEvents, curve_events, grokking_events, grokking_phase,
                                            grokking_phases)
from orchestrator.analysis.mirage import MirageCheck, mirage_check, mirage_checks
from orchestrator.analysis.regularization import (CellRegularization, cell_regularization, param_importances,
                                                  trial_table)
from orchestrator.analysis.scaling import N_COLUMNS, ScalingLawFit, fit_power_law, fit_scaling_law

__all__ = [
    "CellRegularization", "CriticalSizes", "EmergenceFit", "Estimate", "GrokkingEvents", "MirageCheck", "N_COLUMNS",
    "PHASES", "ScalingLawFit", "cell_regularization", "critical_sizes", "curve_events", "emergence_threshold",
    "fit_power_law", "fit_scaling_law", "grokking_events", "grokking_phase", "grokking_phases", "mirage_check",
    "mirage_checks", "param_importances", "trial_table",
]
