"""The study's analysis: pure functions on arrays and tables, no I/O, no Ray or MLflow.

Each returns a frozen result that carries its uncertainty, says None (with a reason) when
nothing was found, and has a JSON-safe `to_dict()`.

- `emergence_threshold`, `critical_sizes`: where a metric leaves chance over N or D
  (sigmoid in log scale, bootstrap interval, sharpness).
- `mirage_check`, `mirage_checks`: the same runs under a discontinuous and a continuous metric.
- `grokking_events`, `grokking_phase`, `grokking_phases`, `curve_events`: memorization and
  generalization steps, delay, ratio, and the learning phase of each run.
- `fit_scaling_law`, `fit_power_law`: L(N, D), L(N), L(D) as in Hoffmann et al. (2022).
- `loss_law_frontier` (approach 3, from a `fit_scaling_law` result), `fit_envelope` (approach 1,
  training curves), `fit_isoflop` (approach 2, IsoFLOP budgets): the compute-optimal frontier
  N_opt = G (C/k)^a, D_opt, L_opt and tokens per parameter (Hoffmann et al. 2022);
  `extrapolation_backtest`: fit on all budgets but the largest, predict its N_opt and loss.
- `cell_regularization`, `param_importances`, `trial_table`: the best trial per cell and the
  importance of each searched parameter (Optuna, imported lazily).
- `phase_regions`: the phase of the nearest runs over a plane of two hyperparameters, each in
  its search space (Liu et al. 2022's phase diagrams), or None with the reason when too sparse.
- `critical_data_sizes`, `fit_critical_data`, `critical_data_backtest`: the critical data size
  D*(N) bracketed by the grid, as a power law in N, predicted at each size from the smaller ones.
- `generalization_backtest`: each run's generalization step predicted at its memorization step
  by its decay clock (sum of lr x weight decay), leave-one-out.
- `forecast_downstream`: a task's metric at a target (N, D) in two steps, L(N, D) then a sigmoid
  of the loss (Bhagia et al. 2024), with a prediction interval and whether it may be trusted.
- `transfer_check`: a hyperparameter's optimum per N and its drift optimum ∝ N^e (muTransfer).

The runs tables these take have one row per training run, with columns named as in the
report (`cell`, `n_params`, `n_train`, `d_value`, `seed`, `trial_number`, `status`,
`param.<dotted path>`, final metrics such as `max_val_acc`); every column name is an argument.
"""

from orchestrator.analysis.backtest import Backtest, extrapolation_backtest
from orchestrator.analysis.critical_data import (
    CriticalData,
    CriticalDataBacktest,
    CriticalDataLaw,
    critical_data_backtest,
    critical_data_sizes,
    fit_critical_data,
)
from orchestrator.analysis.downstream import DownstreamForecast, Evaluations, forecast_downstream
from orchestrator.analysis.emergence import CriticalSizes, EmergenceFit, critical_sizes, emergence_threshold
from orchestrator.analysis.envelope import EnvelopeFit, fit_envelope
from orchestrator.analysis.estimate import Estimate
from orchestrator.analysis.frontier import (
    FLOPS_PER_TOKEN,
    ComputeOptimalFrontier,
    FrontierPoint,
    loss_law_frontier,
)
from orchestrator.analysis.grokking import (
    PHASES,
    GrokkingEvents,
    curve_events,
    grokking_events,
    grokking_phase,
    grokking_phases,
)
from orchestrator.analysis.grokking_time import StepBacktest, StepPrediction, generalization_backtest
from orchestrator.analysis.isoflop import IsoFlopBudget, IsoFlopFit, fit_isoflop
from orchestrator.analysis.mirage import MirageCheck, mirage_check, mirage_checks
from orchestrator.analysis.phase_regions import PhaseRegions, phase_regions
from orchestrator.analysis.regularization import (
    CellRegularization,
    cell_regularization,
    param_importances,
    trial_table,
)
from orchestrator.analysis.scaling import N_COLUMNS, ScalingLawFit, fit_power_law, fit_scaling_law
from orchestrator.analysis.transfer import TransferCheck, transfer_check

__all__ = [
    "FLOPS_PER_TOKEN",
    "Backtest",
    "ComputeOptimalFrontier",
    "EnvelopeFit",
    "FrontierPoint",
    "IsoFlopBudget",
    "IsoFlopFit",
    "extrapolation_backtest",
    "fit_envelope",
    "fit_isoflop",
    "loss_law_frontier",
    "CellRegularization",
    "CriticalSizes",
    "EmergenceFit",
    "Estimate",
    "GrokkingEvents",
    "MirageCheck",
    "N_COLUMNS",
    "PHASES",
    "ScalingLawFit",
    "cell_regularization",
    "critical_sizes",
    "curve_events",
    "emergence_threshold",
    "fit_power_law",
    "fit_scaling_law",
    "grokking_events",
    "grokking_phase",
    "grokking_phases",
    "mirage_check",
    "mirage_checks",
    "param_importances",
    "trial_table",
    "CriticalData",
    "CriticalDataBacktest",
    "CriticalDataLaw",
    "PhaseRegions",
    "StepBacktest",
    "StepPrediction",
    "critical_data_backtest",
    "critical_data_sizes",
    "fit_critical_data",
    "generalization_backtest",
    "phase_regions",
    "DownstreamForecast",
    "Evaluations",
    "TransferCheck",
    "forecast_downstream",
    "transfer_check",
]
