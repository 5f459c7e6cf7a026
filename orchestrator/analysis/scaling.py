"""Scaling laws fitted as Hoffmann et al. (2022, "Training Compute-Optimal Large Language
Models", Approach 3): L(N, D) = E + A / N^alpha + B / D^beta, and the one-variable laws
L(N) = E + A / N^alpha and L(D) = E + B / D^beta by the same method.

The method, as in their Section 3.3 and Appendix D.2: with A = exp(a), B = exp(b), E = exp(e),
the predicted log-loss is LSE(a - alpha log N, b - beta log D, e); minimize the sum over runs
of Huber_delta(predicted log L - log L), delta = 1e-3, with L-BFGS from every point of the grid
alpha, beta in {0, 0.5, ..., 2}, e in {-1, -0.5, ..., 1}, a, b in {0, 5, ..., 25}
(4,500 starts for L(N, D)), and keep the best. Intervals: bootstrap over runs (resampled with
replacement), each resample warm-started from the full-data optimum and the other distinct
local optima the grid found.

Speed: every start runs at once in a batched L-BFGS (`lbfgs.minimize_batched`) with the
analytic gradient. Measured on the shared 2-core dev machine, 245 points (7 N x 35 D): the
full grid of 4,500 starts in 2-4 s of CPU (scipy's L-BFGS-B start by start, with the same
objective and gradient: about 3 minutes), and 200 bootstrap resamples x 5 warm starts in
under 1 s more.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from orchestrator.analysis.estimate import Estimate, interval, jsonable
from orchestrator.analysis.lbfgs import minimize_batched

HUBER_DELTA = 1e-3  # Hoffmann et al. (2022), Appendix D.2
# Their grid of initializations (Appendix D.2).
GRID_EXPONENT = np.arange(0.0, 2.01, 0.5)  # alpha, beta
GRID_E = np.arange(-1.0, 1.01, 0.5)  # e = log E
GRID_COEF = np.arange(0.0, 25.1, 5.0)  # a = log A, b = log B
# The runs-table column that holds N under each parameter-count convention.
N_COLUMNS = {"total": "n_params", "non_embedding": "n_params_non_embedding"}
CONVENTIONS = tuple(N_COLUMNS)
BOOT_COLUMNS = ("E", "A", "alpha", "B", "beta")  # the columns of ScalingLawFit.boot


@dataclass(frozen=True)
class ScalingLawFit:
    """A fitted L = E + A / N^alpha + B / D^beta (terms absent from the law are None).

    `convention` names how N was counted ("total" or "non_embedding"); `objective` is the
    summed Huber loss at the optimum; `n_inits` the starts tried on the full data; `n_boot`
    the bootstrap resamples that fitted; intervals are central `ci` percentile intervals.
    `boot` keeps those resamples' parameters, one row each, columns `BOOT_COLUMNS` (NaN for a
    term not in the law), so quantities derived from the law (the compute-optimal frontier,
    `frontier.loss_law_frontier`) get intervals from the same joint resamples.
    """

    variables: tuple[str, ...]  # ("N", "D"), ("N",) or ("D",)
    convention: str | None
    E: Estimate
    A: Estimate | None
    alpha: Estimate | None
    B: Estimate | None
    beta: Estimate | None
    objective: float
    n_points: int
    n_inits: int
    n_boot: int
    ci: float
    delta: float = HUBER_DELTA
    boot: np.ndarray | None = field(default=None, repr=False, compare=False)  # (n_boot, 5)
    # Which resamples the rows of `boot` came from (a resample whose fit failed has no row), so
    # a caller that drew the resamples itself (`counts`) can pair each row with its own fits.
    boot_rows: np.ndarray | None = field(default=None, repr=False, compare=False)  # (n_boot,)

    def predict(self, n: np.ndarray | float | None = None, d: np.ndarray | float | None = None) -> np.ndarray:
        """The fitted loss at N = n and D = d (each needed only if the law has that term)."""
        out = np.asarray(self.E.value, dtype=float)
        if self.A is not None:
            if n is None:
                raise ValueError("this law depends on N: give n")
            out = out + self.A.value / np.asarray(n, dtype=float) ** self.alpha.value
        if self.B is not None:
            if d is None:
                raise ValueError("this law depends on D: give d")
            out = out + self.B.value / np.asarray(d, dtype=float) ** self.beta.value
        return out

    def to_dict(self) -> dict:
        """Flat and JSON-safe: E, E_low, E_high, A, A_low, ... (None for a term not in the law)."""
        out: dict = {"law": self.law, "variables": list(self.variables), "convention": self.convention}
        for name in ("E", "A", "alpha", "B", "beta"):
            est = getattr(self, name)
            out[name] = None if est is None else est.value
            out[f"{name}_low"] = None if est is None else est.low
            out[f"{name}_high"] = None if est is None else est.high
        out.update(
            objective=self.objective,
            n_points=self.n_points,
            n_inits=self.n_inits,
            n_boot=self.n_boot,
            ci=self.ci,
            delta=self.delta,
        )
        return jsonable(out)

    @property
    def law(self) -> str:
        terms = ["E"] + ["A/N^alpha"] * ("N" in self.variables) + ["B/D^beta"] * ("D" in self.variables)
        return f"L({', '.join(self.variables)}) = " + " + ".join(terms)


def fit_scaling_law(
    n: np.ndarray,
    d: np.ndarray,
    loss: np.ndarray,
    *,
    convention: str = "total",
    n_boot: int = 200,
    ci: float = 0.95,
    seed: int = 0,
    delta: float = HUBER_DELTA,
    starts: np.ndarray | None = None,
    counts: np.ndarray | None = None,
) -> ScalingLawFit:
    """Fit L(N, D) = E + A/N^alpha + B/D^beta to runs with N parameters (counted by
    `convention`), D training examples/tokens and final loss `loss` (all > 0).

    `starts`: the initializations, rows (a, b, alpha, beta, e); default the grid of Hoffmann et
    al. (`init_grid(2)`). A caller that knows the neighbourhood (a test that repeats a fit on
    hundreds of planted draws) may pass a few. `counts`: the bootstrap's resampling weights,
    one row of per-run multiplicities per resample, in place of drawing `n_boot` of them: a
    caller that resamples runs jointly with another fit (`downstream.py`) passes its own."""
    _check_convention(convention)
    logs, log_loss = _validate({"N": n, "D": d}, loss)
    return _fit(("N", "D"), logs, log_loss, convention, n_boot, ci, seed, delta, starts, counts)


def fit_power_law(
    x: np.ndarray,
    loss: np.ndarray,
    *,
    variable: str = "N",
    convention: str | None = None,
    n_boot: int = 200,
    ci: float = 0.95,
    seed: int = 0,
    delta: float = HUBER_DELTA,
) -> ScalingLawFit:
    """Fit the one-variable law L(N) = E + A/N^alpha (variable "N"; give `convention`) or
    L(D) = E + B/D^beta (variable "D") by the same method."""
    if variable not in ("N", "D"):
        raise ValueError(f"variable must be 'N' or 'D', got {variable!r}")
    if variable == "N":
        _check_convention(convention or "total")
        convention = convention or "total"
    logs, log_loss = _validate({variable: x}, loss)
    return _fit((variable,), logs, log_loss, convention, n_boot, ci, seed, delta)


def init_grid(n_terms: int) -> np.ndarray:
    """The grid of starts, rows (a_1..a_T, alpha_1..alpha_T, e): 4,500 for two terms, 150 for one."""
    axes = [GRID_COEF] * n_terms + [GRID_EXPONENT] * n_terms + [GRID_E]
    return np.array(list(itertools.product(*axes)), dtype=float)


def _check_convention(convention: str | None) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")


def _validate(columns: dict[str, np.ndarray], loss: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    arrays = {name: np.asarray(v, dtype=float).ravel() for name, v in {**columns, "loss": loss}.items()}
    sizes = {a.size for a in arrays.values()}
    if len(sizes) != 1:
        raise ValueError(
            f"N, D and loss must have the same length, got { {k: a.size for k, a in arrays.items()} }"
        )
    for name, a in arrays.items():
        if not np.all(np.isfinite(a)) or np.any(a <= 0):
            raise ValueError(f"{name}: every value must be finite and > 0 (the fit is in log space)")
    min_points = 2 * len(columns) + 2  # more points than the 2T + 1 parameters
    if sizes.pop() < min_points:
        raise ValueError(
            f"need at least {min_points} points for {len(columns) * 2 + 1} parameters, "
            f"got {arrays['loss'].size}"
        )
    logs = np.stack([np.log(arrays[name]) for name in columns], axis=1)  # (n, T)
    return logs, np.log(arrays["loss"])


def _objective(
    logs: np.ndarray, log_loss: np.ndarray, weights: np.ndarray, weight_row: np.ndarray, delta: float
):
    """Summed Huber loss of the log-loss residuals and its analytic gradient, for a batch of
    parameter rows (a_1..a_T, alpha_1..alpha_T, e); row k uses data weights weights[weight_row[k]]."""
    n_terms = logs.shape[1]

    shared = weights.shape[0] == 1  # one weight row for every problem: no (k, n) gather

    def fun(theta: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        e = theta[:, -1:]  # (k, 1)
        z = [
            theta[:, t, None] - theta[:, n_terms + t, None] * logs[None, :, t] for t in range(n_terms)
        ]  # (k, n)
        top = e
        for zt in z:
            top = np.maximum(top, zt)
        ez = []
        for zt in z:  # in place: these arrays are (k, n) and the fit is bound by memory traffic
            zt -= top
            ez.append(np.exp(zt, out=zt))
        ee = np.exp(e - top)
        total = ee.copy()
        for et in ez:
            total += et
        r = np.log(total)
        r += top
        r -= log_loss  # predicted log-loss (LSE) minus observed
        absr = np.abs(r)
        small = np.minimum(absr, delta)
        huber = small * (absr - 0.5 * small)  # = r^2/2 if |r| <= delta else delta (|r| - delta/2)
        w = weights[0] if shared else weights[weight_row[rows]]
        # einsum, not @: BLAS threads on a busy small machine made this several times slower.
        f = np.einsum("kn,n->k", huber, w) if shared else np.einsum("kn,kn->k", huber, w)
        dr = np.copysign(small, r, out=r)  # dHuber/dr = clip(r, -delta, delta)
        dr /= total  # over the softmax denominator: d LSE / d z_t = exp(z_t - top) / total
        if not shared or not np.all(w == 1):
            dr *= w
        grad = np.empty_like(theta)
        for t in range(n_terms):
            p = dr * ez[t]
            grad[:, t] = p.sum(axis=1)  # d/da_t
            grad[:, n_terms + t] = -np.einsum("kn,n->k", p, logs[:, t])  # d/dalpha_t
        grad[:, -1] = (dr * ee).sum(axis=1)  # d/de
        return f, grad

    return fun


def _fit(
    variables: tuple[str, ...],
    logs: np.ndarray,
    log_loss: np.ndarray,
    convention: str | None,
    n_boot: int,
    ci: float,
    seed: int,
    delta: float,
    starts: np.ndarray | None = None,
    counts: np.ndarray | None = None,
) -> ScalingLawFit:
    n_points, n_terms = logs.shape
    starts = init_grid(n_terms) if starts is None else np.atleast_2d(np.asarray(starts, dtype=float))
    if starts.shape[1] != 2 * n_terms + 1:
        raise ValueError(f"starts must have {2 * n_terms + 1} columns, got {starts.shape[1]}")
    if counts is not None:
        counts = np.atleast_2d(np.asarray(counts, dtype=float))
        if counts.shape[1] != n_points:
            raise ValueError(f"counts must have one column per run ({n_points}), got {counts.shape[1]}")
        n_boot = counts.shape[0]
    fun = _objective(logs, log_loss, np.ones((1, n_points)), np.zeros(len(starts), dtype=int), delta)
    res = minimize_batched(fun, starts)
    order = np.argsort(np.where(np.isfinite(res.f), res.f, np.inf))
    best = res.x[order[0]]
    # Warm starts for the bootstrap: the optimum and the next distinct local optima of the grid.
    warm = [best]
    for i in order[1:]:
        if len(warm) == 5 or not np.isfinite(res.f[i]):
            break
        if all(np.max(np.abs(res.x[i] - w)) > 1e-2 for w in warm):
            warm.append(res.x[i])
    samples = np.empty((0, starts.shape[1]))
    rows_fitted = np.empty(0, dtype=int)
    if n_boot > 0:
        if counts is None:
            rng = np.random.default_rng(seed)
            counts = np.stack(
                [np.bincount(rng.integers(0, n_points, n_points), minlength=n_points) for _ in range(n_boot)]
            ).astype(float)  # (n_boot, n) resampling weights
        x0 = np.tile(np.array(warm), (n_boot, 1))
        rows = np.repeat(np.arange(n_boot), len(warm))
        boot = minimize_batched(_objective(logs, log_loss, counts, rows, delta), x0)
        f = np.where(np.isfinite(boot.f), boot.f, np.inf).reshape(n_boot, len(warm))
        pick = np.argmin(f, axis=1)
        fitted = np.isfinite(f[np.arange(n_boot), pick])
        samples = boot.x.reshape(n_boot, len(warm), -1)[np.arange(n_boot), pick][fitted]
        rows_fitted = np.flatnonzero(fitted)

    def estimate(column: int, transform) -> Estimate:
        low, high = interval(transform(samples[:, column]), ci) if len(samples) else (None, None)
        return Estimate(float(transform(best[column])), low, high)

    terms: dict[str, tuple[Estimate, Estimate]] = {}
    for t, var in enumerate(variables):
        terms[var] = (estimate(t, _exp), estimate(n_terms + t, lambda v: v))
    coef_n, exp_n = terms.get("N", (None, None))
    coef_d, exp_d = terms.get("D", (None, None))
    boot = np.full((len(samples), len(BOOT_COLUMNS)), np.nan)
    boot[:, 0] = _exp(samples[:, 2 * n_terms])
    for t, var in enumerate(variables):
        coef, expo = (1, 2) if var == "N" else (3, 4)
        boot[:, coef], boot[:, expo] = _exp(samples[:, t]), samples[:, n_terms + t]
    boot.setflags(write=False)  # the result is frozen; so are its resamples
    rows_fitted.setflags(write=False)
    return ScalingLawFit(
        variables=variables,
        convention=convention if "N" in variables else None,
        E=estimate(2 * n_terms, _exp),
        A=coef_n,
        alpha=exp_n,
        B=coef_d,
        beta=exp_d,
        objective=float(res.f[order[0]]),
        n_points=n_points,
        n_inits=len(starts),
        n_boot=len(samples),
        ci=ci,
        delta=delta,
        boot=boot,
        boot_rows=rows_fitted,
    )


def _exp(log_value: np.ndarray) -> np.ndarray:
    """A, B or E from its log. A resample where a term is flat in its variable can send log A
    past 709 (its exponent then trades off against A without bound): that A is inf, an interval
    open at the top, which is what the data say; only this overflow is expected, so only it is
    let through without numpy's RuntimeWarning."""
    with np.errstate(over="ignore"):
        return np.exp(log_value)
