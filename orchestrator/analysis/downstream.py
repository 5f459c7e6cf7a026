"""The two-step downstream forecast of Bhagia et al. (2024, "Establishing Task Scaling Laws via
Compute-Efficient Model Ladders"): a task's accuracy at a target (N, D), from small models only.

Step 1: the task's loss as L(N, D) = E + A/N^alpha + B/D^beta, fitted to the small runs' final
losses exactly as `scaling.fit_scaling_law` fits it, and judged by `fit_check.check_fit`.
Step 2: the metric as a sigmoid of that loss, over every evaluation (checkpoint) of the small runs,

    metric = a / (1 + exp(k (L - L0))) + b,    k > 0,

written so the metric rises from b (high loss) towards a + b (low loss) as the loss falls; with
`chance` given, b is fixed there (the floor of a multiple-choice accuracy), else it is fitted.
Least squares, by L-BFGS (`lbfgs.minimize_batched`) from a grid of L0 (quantiles of the observed
losses) and k (0.5 to 128 over the observed loss range), a and b solved for at each start.
Chained: metric(N, D) = sigmoid(L(N, D)).

Interval: a `ci` (default 90%) prediction interval that carries both steps. Runs (each distinct
(N, D): its final loss and all its evaluations) are resampled with replacement; each resample
refits both steps (warm-started from the full-data optima); at the target, each resample's law
gives a loss, times exp(a step-1 log-residual drawn from the full fit), its sigmoid maps that
to a metric, plus a step-2 residual drawn from the full fit (both residuals inflated by
sqrt(n / (n - p)) for the p fitted parameters). The central percentiles of those are the interval.

Predictable or not is decided from the small models alone, each reason on its own:
- step 1 rejected by `check_fit` (residuals, parameters at bounds, intervals spanning decades);
- step 2 rejected (`check_sigmoid`): R^2 of the metric < MIN_R2 (0.7); a <= 0 (the metric does
  not rise as the loss falls); the midpoint L0 outside the observed losses (step 2 never saw the
  sigmoid bend); a 10%-90% width 2 ln 9 / k wider than MAX_WIDTH_RATIO (2) times the observed
  loss range (no bend: a line) or narrower than the gap between the observed losses around L0 (a
  step, its shape unseen); k's interval over MAX_K_DECADES (2) decades, or L0's wider than the
  observed loss range;
- the target's loss beyond the observed losses by more than that 10%-90% width: the sigmoid is
  extrapolated past where it was seen to bend;
- noise (Bhagia et al.'s variance analysis): the metric's checkpoint-to-checkpoint noise, the
  median over runs of the standard deviation of the step-2 residuals over each run's last
  NOISE_CHECKPOINTS (5) evaluations (residuals, so the trend the loss explains is not counted as
  noise), is more than 1 / NOISE_RATIO (half) of the predicted change from the largest small run
  (largest N, then D; its level: the sigmoid at its last evaluation's loss plus its mean residual
  over its last evaluations). With fewer than 3 evaluations per run the noise is
  the step-2 residual standard deviation instead (`noise_source` says which).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.special import expit

from orchestrator.analysis.estimate import Estimate, interval, jsonable
from orchestrator.analysis.fit_check import FitCheck, check_fit
from orchestrator.analysis.lbfgs import minimize_batched
from orchestrator.analysis.scaling import ScalingLawFit, fit_scaling_law

CI = 0.9
WIDTH_10_90 = 2 * np.log(9)  # a logistic rises from 10% to 90% over 2 ln 9 / k of loss
MIN_R2 = 0.7
MAX_WIDTH_RATIO = 2.0
MAX_K_DECADES = 2.0
NOISE_CHECKPOINTS = 5
MIN_NOISE_CHECKPOINTS = 3
NOISE_RATIO = 2.0
MAX_LOG_K = 30.0  # exp(30) per unit of loss: a step at any resolution; keeps exp() finite
SIGMOID_FORM = "metric = a / (1 + exp(k (L - L0))) + b"


@dataclass(frozen=True)
class Evaluations:
    """Every evaluation of the small runs, one row each: the run's N and D (which identify the
    run), the task loss and the metric there, and optionally the step that orders a run's
    evaluations (default: the order given)."""

    n: np.ndarray
    d: np.ndarray
    loss: np.ndarray
    metric: np.ndarray
    step: np.ndarray | None = None


@dataclass(frozen=True)
class SigmoidFit:
    """metric = a / (1 + exp(k (L - L0))) + b fitted to (loss, metric) evaluations; b fixed
    (`b_fixed`, interval a point) when chance was given. `boot` (a, k, L0, b) per fitted
    resample, `boot_rows` which resamples those were; `residuals` the full fit's, per evaluation."""

    a: Estimate
    k: Estimate
    L0: Estimate
    b: Estimate
    b_fixed: bool
    r2: float | None
    residual_std: float
    loss_min: float
    loss_max: float
    n_points: int
    n_boot: int
    ci: float
    accepted: bool
    reasons: tuple[str, ...]
    residuals: np.ndarray = field(repr=False, compare=False)
    boot: np.ndarray = field(repr=False, compare=False)  # (n_boot, 4)
    boot_rows: np.ndarray = field(repr=False, compare=False)

    @property
    def width(self) -> float:
        """The loss over which the metric rises from 10% to 90% of a: 2 ln 9 / k."""
        return float(WIDTH_10_90 / self.k.value)

    @property
    def n_params(self) -> int:
        return 3 if self.b_fixed else 4

    def predict(self, loss: np.ndarray | float) -> np.ndarray:
        return sigmoid(np.asarray(loss, dtype=float), self.a.value, self.k.value, self.L0.value, self.b.value)

    def to_dict(self) -> dict:
        out: dict = {"form": SIGMOID_FORM}
        for name in ("a", "k", "L0", "b"):
            est = getattr(self, name)
            out.update({name: est.value, f"{name}_low": est.low, f"{name}_high": est.high})
        out.update(
            b_fixed=self.b_fixed,
            width=self.width,
            r2=self.r2,
            residual_std=self.residual_std,
            loss_min=self.loss_min,
            loss_max=self.loss_max,
            n_points=self.n_points,
            n_boot=self.n_boot,
            ci=self.ci,
            accepted=self.accepted,
            reasons=list(self.reasons),
        )
        return jsonable(out)


@dataclass(frozen=True)
class Prediction:
    """The forecast at one target (n, d): loss and metric with their prediction intervals, how
    far beyond the small runs it reaches, and whether the small runs say it may be trusted."""

    n: float
    d: float
    loss: Estimate
    metric: Estimate
    n_ratio: float  # n / the largest N of the small runs
    d_ratio: float  # d / the largest D
    loss_beyond_range: float  # (lowest observed loss - predicted loss) / observed loss range
    loss_beyond_width: float  # the same in units of the sigmoid's 10%-90% width
    reasons: tuple[str, ...]
    group: object = None

    @property
    def predictable(self) -> bool:
        return not self.reasons

    @property
    def reason(self) -> str | None:
        return "; ".join(self.reasons) or None

    def to_dict(self) -> dict:
        return jsonable(
            {
                "group": self.group,
                "n": self.n,
                "d": self.d,
                "loss": self.loss.value,
                "loss_low": self.loss.low,
                "loss_high": self.loss.high,
                "metric": self.metric.value,
                "metric_low": self.metric.low,
                "metric_high": self.metric.high,
                "extrapolation": {
                    "n_ratio": self.n_ratio,
                    "d_ratio": self.d_ratio,
                    "loss_beyond_range": self.loss_beyond_range,
                    "loss_beyond_width": self.loss_beyond_width,
                },
                "predictable": self.predictable,
                "reason": self.reason,
            }
        )


@dataclass(frozen=True)
class DownstreamForecast:
    """Both steps fitted to one group's small runs, and the forecast at each target."""

    law: ScalingLawFit
    law_check: FitCheck
    sigmoid: SigmoidFit
    noise: float
    noise_source: str  # "checkpoints" or "residuals"
    largest: tuple[float, float, float]  # (N, D, metric) of the largest small run
    n_runs: int
    predictions: tuple[Prediction, ...]
    group: object = None

    def to_dict(self) -> dict:
        """The group's fits; the predictions are listed apart (`predictions_dict`)."""
        return jsonable(
            {
                "group": self.group,
                "n_runs": self.n_runs,
                "loss_law": {**self.law.to_dict(), **self.law_check.to_dict()},
                "sigmoid": self.sigmoid.to_dict(),
                "noise": {"std": self.noise, "source": self.noise_source, "checkpoints": NOISE_CHECKPOINTS},
                "largest_run": dict(zip(("n", "d", "metric"), self.largest)),
            }
        )


def sigmoid(loss: np.ndarray, a, k, L0, b) -> np.ndarray:
    """a / (1 + exp(k (L - L0))) + b: rises from b to a + b as the loss L falls (k > 0)."""
    return b + a * expit(-k * (loss - L0))


def forecast_downstream(
    n: np.ndarray,
    d: np.ndarray,
    loss: np.ndarray,
    evaluations: Evaluations,
    targets: Sequence[tuple[float, float]],
    *,
    chance: float | None = None,
    n_boot: int = 200,
    ci: float = CI,
    seed: int = 0,
    group: object = None,
    loss_starts: np.ndarray | None = None,
) -> DownstreamForecast:
    """Fit both steps to the small runs (n, d, final loss; one row each) and their `evaluations`,
    and forecast the metric at each target (N, D). `loss_starts`: step 1's initializations
    (default the Hoffmann et al. grid, see `fit_scaling_law`)."""
    n, d, loss = (np.asarray(v, dtype=float).ravel() for v in (n, d, loss))
    ev = _validate_evaluations(evaluations)
    targets = [(float(tn), float(td)) for tn, td in targets]
    for tn, td in targets:
        if not (np.isfinite(tn) and np.isfinite(td) and tn > 0 and td > 0):
            raise ValueError(f"a target's N and D must be finite and > 0, got N={tn:g}, D={td:g}")
    run_unit, ev_unit, n_units = _units(n, d, ev.n, ev.d)
    rng = np.random.default_rng(seed)
    unit_counts = (
        np.stack(
            [np.bincount(rng.integers(0, n_units, n_units), minlength=n_units) for _ in range(n_boot)]
        ).astype(float)
        if n_boot > 0
        else np.zeros((0, n_units))
    )
    law = fit_scaling_law(
        n,
        d,
        loss,
        n_boot=n_boot,
        ci=ci,
        seed=seed,
        starts=loss_starts,
        counts=unit_counts[:, run_unit] if n_boot > 0 else None,
    )
    law_check = check_fit(law, n, d, loss)
    sig = fit_sigmoid(
        ev.loss, ev.metric, chance=chance, ci=ci, counts=unit_counts[:, ev_unit] if n_boot > 0 else None
    )
    noise, source, largest = _noise_and_largest(ev, ev_unit, sig)
    log_resid = np.log(loss) - np.log(law.predict(n, d))
    log_resid = log_resid * np.sqrt(n.size / max(n.size - 5, 1))
    metric_resid = sig.residuals * np.sqrt(sig.n_points / max(sig.n_points - sig.n_params, 1))
    both = np.intersect1d(law.boot_rows, sig.boot_rows)
    law_boot = law.boot[np.searchsorted(law.boot_rows, both)]
    sig_boot = sig.boot[np.searchsorted(sig.boot_rows, both)]
    predictions = []
    for i, (tn, td) in enumerate(targets):
        noise_rng = np.random.default_rng([seed, i])
        predictions.append(
            _predict(
                tn,
                td,
                law,
                law_check,
                sig,
                law_boot,
                sig_boot,
                log_resid,
                metric_resid,
                noise,
                largest,
                n.max(),
                d.max(),
                ci,
                noise_rng,
                group,
            )
        )
    return DownstreamForecast(
        law=law,
        law_check=law_check,
        sigmoid=sig,
        noise=noise,
        noise_source=source,
        largest=largest,
        n_runs=n_units,
        predictions=tuple(predictions),
        group=group,
    )


def fit_sigmoid(
    loss: np.ndarray,
    metric: np.ndarray,
    *,
    chance: float | None = None,
    ci: float = CI,
    counts: np.ndarray | None = None,
) -> SigmoidFit:
    """Step 2 alone: metric = a / (1 + exp(k (L - L0))) + b by least squares; `counts`
    (n_boot, n_points) the bootstrap's weights per evaluation (none: no interval)."""
    loss, metric = np.asarray(loss, dtype=float).ravel(), np.asarray(metric, dtype=float).ravel()
    n_points = loss.size
    b_fixed = chance is not None
    lo, hi = float(loss.min()), float(loss.max())
    starts = _sigmoid_starts(loss, metric, chance)
    uniform = np.ones((1, n_points)) / n_points
    fun = _sigmoid_objective(loss, metric, uniform, np.zeros(len(starts), dtype=int), chance)
    # Two passes: 40 iterations from every start of the grid, then the best few to convergence.
    # The grid's near-linear starts (small k, large a) slide along a valley for 1,000 iterations
    # without approaching the optimum, which the others reach in well under 100.
    res = minimize_batched(fun, starts, max_iter=40)
    order = np.argsort(np.where(np.isfinite(res.f), res.f, np.inf))[:5]
    res = minimize_batched(fun, res.x[order])
    order = np.argsort(np.where(np.isfinite(res.f), res.f, np.inf))
    best = res.x[order[0]]
    warm = [best]
    for i in order[1:]:
        if len(warm) == 3 or not np.isfinite(res.f[i]):
            break
        if all(np.max(np.abs(res.x[i] - w)) > 1e-2 for w in warm):
            warm.append(res.x[i])
    boot = np.empty((0, 4))
    rows = np.empty(0, dtype=int)
    if counts is not None and len(counts):
        counts = np.asarray(counts, dtype=float)
        n_boot = counts.shape[0]
        total = counts.sum(axis=1, keepdims=True)
        weights = counts / np.where(total > 0, total, 1.0)
        x0 = np.tile(np.array(warm), (n_boot, 1))
        row_of = np.repeat(np.arange(n_boot), len(warm))
        fit = minimize_batched(_sigmoid_objective(loss, metric, weights, row_of, chance), x0)
        f = np.where(np.isfinite(fit.f), fit.f, np.inf).reshape(n_boot, len(warm))
        pick = np.argmin(f, axis=1)
        ok = np.isfinite(f[np.arange(n_boot), pick]) & (total[:, 0] > 0)
        boot = _natural(fit.x.reshape(n_boot, len(warm), -1)[np.arange(n_boot), pick][ok], chance)
        rows = np.flatnonzero(ok)
    point = _natural(best[None, :], chance)[0]

    def estimate(j: int) -> Estimate:
        low, high = interval(boot[:, j], ci) if len(boot) else (None, None)
        return Estimate(float(point[j]), low, high)

    a, k, L0, b = (estimate(j) for j in range(4))
    if b_fixed:
        b = Estimate(float(chance), float(chance), float(chance))
    residuals = metric - sigmoid(loss, *point)  # observed minus fitted
    spread = float(np.sum((metric - metric.mean()) ** 2))
    r2 = 1.0 - float(np.sum(residuals**2)) / spread if spread > 0 else None
    for arr in (boot, rows, residuals):
        arr.setflags(write=False)
    dof = max(n_points - (3 if b_fixed else 4), 1)
    fit = SigmoidFit(
        a=a,
        k=k,
        L0=L0,
        b=b,
        b_fixed=b_fixed,
        r2=r2,
        residual_std=float(np.sqrt(np.sum(residuals**2) / dof)),
        loss_min=lo,
        loss_max=hi,
        n_points=n_points,
        n_boot=len(boot),
        ci=ci,
        accepted=True,
        reasons=(),
        residuals=residuals,
        boot=boot,
        boot_rows=rows,
    )
    reasons = check_sigmoid(fit, loss)
    return dataclasses.replace(fit, accepted=not reasons, reasons=reasons)


def check_sigmoid(fit: SigmoidFit, loss: np.ndarray) -> tuple[str, ...]:
    """Why a step-2 fit does not describe its data (empty when it does); see the module's doc."""
    reasons: list[str] = []
    lo, hi = fit.loss_min, fit.loss_max
    span = hi - lo
    if fit.r2 is None or fit.r2 < MIN_R2:
        r2 = "no" if fit.r2 is None else f"{max(fit.r2, 0.0):.0%} of the"
        reasons.append(f"residuals: the sigmoid explains {r2} metric variance (needs >= {MIN_R2:.0%})")
    if fit.a.value <= 0:
        reasons.append(f"a = {fit.a.value:.3g} <= 0: the metric does not rise as the loss falls")
    if not lo <= fit.L0.value <= hi:
        reasons.append(
            f"the midpoint L0 = {fit.L0.value:.4g} lies outside the observed losses "
            f"[{lo:.4g}, {hi:.4g}]: step 2 never saw the sigmoid bend"
        )
    width = fit.width
    if width > MAX_WIDTH_RATIO * span:
        reasons.append(
            f"k = {fit.k.value:.3g} is at its lower bound: the 10-90% width {width:.3g} is over "
            f"{MAX_WIDTH_RATIO:g}x the observed loss range {span:.3g} (a line, no bend)"
        )
    elif lo <= fit.L0.value <= hi:
        seen = np.unique(loss)
        below, above = seen[seen <= fit.L0.value].max(), seen[seen >= fit.L0.value].min()
        if width < above - below:
            reasons.append(
                f"k = {fit.k.value:.3g} is at its upper bound: the rise (width {width:.3g}) "
                f"lies between two observed losses {below:.4g} and {above:.4g} "
                "(a step, its shape unseen)"
            )
    k, L0 = fit.k, fit.L0
    if k.low is None or k.high is None or k.low <= 0 or not np.isfinite(k.high):
        reasons.append("k's interval is open: the data do not bound it")
    elif np.log10(k.high / k.low) > MAX_K_DECADES:
        reasons.append(
            f"k's interval [{k.low:.3g}, {k.high:.3g}] spans {np.log10(k.high / k.low):.1f} "
            f"decades (> {MAX_K_DECADES:g})"
        )
    if L0.low is None or L0.high is None:
        reasons.append("L0's interval is open: the data do not bound it")
    elif L0.high - L0.low > span:
        reasons.append(
            f"L0's interval [{L0.low:.4g}, {L0.high:.4g}] is wider than the observed loss range {span:.3g}"
        )
    return tuple(reasons)


def _predict(
    tn,
    td,
    law,
    law_check,
    sig,
    law_boot,
    sig_boot,
    log_resid,
    metric_resid,
    noise,
    largest,
    n_max,
    d_max,
    ci,
    rng,
    group,
) -> Prediction:
    loss = float(law.predict(tn, td))
    metric = float(sig.predict(loss))
    with np.errstate(over="ignore", invalid="ignore"):
        e, a, alpha, b, beta = law_boot.T  # scaling.BOOT_COLUMNS
        boot_loss = e + a / tn**alpha + b / td**beta
        boot_loss = boot_loss * np.exp(rng.choice(log_resid, boot_loss.size))
        boot_metric = sigmoid(boot_loss, *sig_boot.T) + rng.choice(metric_resid, boot_loss.size)
    loss_est = Estimate(loss, *interval(boot_loss, ci))
    metric_est = Estimate(metric, *interval(boot_metric, ci))
    span = sig.loss_max - sig.loss_min
    beyond = sig.loss_min - loss
    reasons: list[str] = []
    if not law_check.accepted:
        reasons.append(f"step 1 (the loss law) rejected: {law_check.reason}")
    if not sig.accepted:
        reasons.append(f"step 2 (the sigmoid) rejected: {'; '.join(sig.reasons)}")
    width = sig.width
    if loss < sig.loss_min - width or loss > sig.loss_max + width:
        below = loss < sig.loss_min
        side, edge = ("below the lowest", sig.loss_min) if below else ("above the highest", sig.loss_max)
        reasons.append(
            f"the target's loss {loss:.4g} lies {abs(loss - edge):.3g} {side} observed loss "
            f"{edge:.4g}, more than the sigmoid's 10-90% width {width:.3g}: "
            "past where step 2 saw it bend"
        )
    change = abs(metric - largest[2])
    if change < NOISE_RATIO * noise:
        reasons.append(
            f"noise: the predicted change {change:.3g} from the largest small run "
            f"(N={largest[0]:.3g}, D={largest[1]:.3g}) is below {NOISE_RATIO:g}x the metric's "
            f"checkpoint noise {noise:.3g}"
        )
    return Prediction(
        n=tn,
        d=td,
        loss=loss_est,
        metric=metric_est,
        n_ratio=tn / n_max,
        d_ratio=td / d_max,
        loss_beyond_range=beyond / span if span > 0 else float("inf"),
        loss_beyond_width=beyond / width,
        reasons=tuple(reasons),
        group=group,
    )


def _noise_and_largest(ev: Evaluations, ev_unit: np.ndarray, sig: SigmoidFit):
    """The checkpoint noise (median over runs of the std of the step-2 residuals over the last
    NOISE_CHECKPOINTS evaluations), its source, and (N, D, metric level) of the largest run."""
    stds = []
    last_of = {}
    for u in np.unique(ev_unit):
        idx = np.flatnonzero(ev_unit == u)
        if ev.step is not None:
            idx = idx[np.argsort(ev.step[idx], kind="stable")]
        last = idx[-NOISE_CHECKPOINTS:]
        last_of[u] = last
        if last.size >= MIN_NOISE_CHECKPOINTS:
            stds.append(float(np.std(sig.residuals[last], ddof=1)))
    per_run_ok = len(stds) == len(last_of)
    noise, source = (float(np.median(stds)), "checkpoints") if per_run_ok else (sig.residual_std, "residuals")
    big = max(last_of, key=lambda u: (ev.n[last_of[u][0]], ev.d[last_of[u][0]]))
    last = last_of[big]
    # Its level at its last evaluation: the curve there plus its mean offset from the curve over
    # its last evaluations; a plain mean of those would lag behind a metric still rising.
    level = float(sig.predict(ev.loss[last[-1]]) + sig.residuals[last].mean())
    return noise, source, (float(ev.n[last[0]]), float(ev.d[last[0]]), level)


def _units(n, d, ev_n, ev_d) -> tuple[np.ndarray, np.ndarray, int]:
    """Each run's and each evaluation's resampling unit: one per distinct (N, D)."""
    keys = np.unique(np.concatenate([np.stack([n, d], 1), np.stack([ev_n, ev_d], 1)]), axis=0)
    lookup = {tuple(k): i for i, k in enumerate(keys)}
    return (
        np.array([lookup[(a, b)] for a, b in zip(n, d)], dtype=int),
        np.array([lookup[(a, b)] for a, b in zip(ev_n, ev_d)], dtype=int),
        len(keys),
    )


def _validate_evaluations(ev: Evaluations) -> Evaluations:
    arrays = {
        name: np.asarray(getattr(ev, name), dtype=float).ravel() for name in ("n", "d", "loss", "metric")
    }
    step = None if ev.step is None else np.asarray(ev.step, dtype=float).ravel()
    sizes = {a.size for a in arrays.values()} | ({step.size} if step is not None else set())
    if len(sizes) != 1:
        raise ValueError("the evaluations' N, D, loss, metric (and step) must have the same length")
    for name, a in arrays.items():
        if not np.all(np.isfinite(a)):
            raise ValueError(f"evaluations: every {name} must be finite")
    distinct = np.unique(arrays["loss"]).size
    if distinct < 5:
        raise ValueError(f"step 2 needs at least 5 distinct evaluation losses, got {distinct}")
    return Evaluations(**arrays, step=step)


def _natural(theta: np.ndarray, chance: float | None) -> np.ndarray:
    """Rows (a, log k, L0[, b]) to (a, k, L0, b)."""
    out = np.empty((theta.shape[0], 4))
    out[:, 0], out[:, 1], out[:, 2] = theta[:, 0], np.exp(np.minimum(theta[:, 1], MAX_LOG_K)), theta[:, 2]
    out[:, 3] = chance if chance is not None else theta[:, 3]
    return out


def _sigmoid_starts(loss: np.ndarray, metric: np.ndarray, chance: float | None) -> np.ndarray:
    """A grid of (L0, k), with a (and b) solved by least squares at each: rows (a, log k, L0[, b])."""
    span = max(float(np.ptp(loss)), 1e-12)
    rows = []
    for L0 in np.quantile(loss, np.linspace(0.05, 0.95, 7)):
        for c in (0.5, 2.0, 8.0, 32.0, 128.0):
            k = c / span
            s = expit(-k * (loss - L0))
            if chance is not None:
                a = float(s @ (metric - chance) / max(s @ s, 1e-12))
                rows.append([a, np.log(k), L0])
            else:
                (a, b), *_ = np.linalg.lstsq(np.stack([s, np.ones_like(s)], 1), metric, rcond=None)
                rows.append([a, np.log(k), L0, b])
    return np.array(rows)


def _sigmoid_objective(
    loss: np.ndarray, metric: np.ndarray, weights: np.ndarray, weight_row: np.ndarray, chance: float | None
):
    """Half the weighted mean squared residual and its gradient, for rows (a, log k, L0[, b]);
    problem j uses weights[weight_row[j]] (each row summing to 1)."""
    shared = weights.shape[0] == 1

    def fun(theta: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a = theta[:, 0:1]
        k = np.exp(np.minimum(theta[:, 1:2], MAX_LOG_K))
        L0 = theta[:, 2:3]
        b = chance if chance is not None else theta[:, 3:4]
        u = k * (loss[None, :] - L0)  # (rows, n)
        s = expit(-u)
        r = b + a * s - metric[None, :]
        w = weights[0][None, :] if shared else weights[weight_row[rows]]
        wr = w * r
        f = 0.5 * np.einsum("kn,kn->k", wr, r)
        ds = -s * (1 - s)  # ds/du
        grad = np.empty_like(theta)
        grad[:, 0] = np.einsum("kn,kn->k", wr, s)
        wads = wr * a * ds
        grad[:, 1] = np.einsum("kn,kn->k", wads, u) * (theta[:, 1] < MAX_LOG_K)
        grad[:, 2] = -(wads * k).sum(axis=1)
        if chance is None:
            grad[:, 3] = wr.sum(axis=1)
        return f, grad

    return fun
