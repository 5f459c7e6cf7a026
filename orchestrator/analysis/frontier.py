"""The compute-optimal frontier: for a compute budget C, the model size N_opt and data size D_opt
that minimize the loss (Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models").

Compute is C = k N D, with k the FLOPs per token per parameter: k = 6 by default (Kaplan et al.
2020, Section 2.1: about 2N forward and 4N backward per token, attention ignored), so every
result records the k it used and N must be counted under that same convention. All three
approaches summarise the frontier the same way, as power laws in C:

    N_opt = G (C/k)^a,    D_opt = (C/k) / N_opt = (C/k)^b / G,    b = 1 - a,

with the tokens per parameter D_opt / N_opt at each budget. This module holds that shared
result (`ComputeOptimalFrontier`, one `FrontierPoint` per budget), approach 3 in closed form
from a fitted L(N, D) (`loss_law_frontier`), and the power-law fit in C that approaches 1
(`envelope.py`) and 2 (`isoflop.py`) share (`compute_power_law`).

Approach 3. Minimizing L(N, D) = E + A/N^alpha + B/D^beta subject to C = k N D gives
alpha A N^-alpha = beta B D^-beta, so N_opt = G (C/k)^a with a = beta/(alpha+beta),
b = alpha/(alpha+beta) and G = (alpha A / (beta B))^(1/(alpha+beta)) (Hoffmann et al., eq. 4).
Its intervals come from the fit's own bootstrap resamples (`ScalingLawFit.boot`): each resample's
law gives its a, G, N_opt, D_opt and L_opt, so the intervals carry the parameters' correlation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from orchestrator.analysis.estimate import Estimate, interval, jsonable
from orchestrator.analysis.scaling import BOOT_COLUMNS, ScalingLawFit

FLOPS_PER_TOKEN = 6.0  # per parameter, forward + backward (Kaplan et al. 2020)
APPROACHES = ("envelope", "isoflop", "loss_law")  # Hoffmann et al.'s approaches 1, 2 and 3


@dataclass(frozen=True)
class FrontierPoint:
    """The optimum at one budget `flops`; `reason` says why it is not trusted (None when it is),
    e.g. an IsoFLOP minimum outside the sampled sizes. tokens_per_param = D_opt / N_opt."""

    flops: float
    N_opt: Estimate | None
    D_opt: Estimate | None
    L_opt: Estimate | None
    tokens_per_param: Estimate | None
    reason: str | None = None

    @property
    def trusted(self) -> bool:
        return self.reason is None and self.N_opt is not None

    def to_dict(self) -> dict:
        """Flat: flops, N_opt, N_opt_low, N_opt_high, D_opt, ..., trusted, reason."""
        out: dict = {"flops": self.flops}
        for name in ("N_opt", "D_opt", "L_opt", "tokens_per_param"):
            out.update(_flat(name, getattr(self, name)))
        out.update(trusted=self.trusted, reason=self.reason)
        return jsonable(out)


@dataclass(frozen=True)
class ComputeOptimalFrontier:
    """N_opt = G (C/k)^a and D_opt = (C/k)^b / G from one approach ("envelope", "isoflop" or
    "loss_law"), with `points` at chosen budgets. a, b and G are None when the data cannot decide
    them (`reason`). `n_fit` counts what the power law was fitted to (IsoFLOP budgets, envelope
    grid points, runs of the L(N, D) fit); `residual_rms` is the RMS residual of ln N_opt about
    the power law (approaches 1 and 2: how well a power law describes the optima)."""

    approach: str
    a: Estimate | None
    b: Estimate | None
    G: Estimate | None
    points: tuple[FrontierPoint, ...]
    flops_per_token: float
    n_fit: int
    n_boot: int
    ci: float
    residual_rms: float | None = None
    reason: str | None = None

    def n_opt(self, flops: np.ndarray | float) -> np.ndarray:
        """N_opt on the fitted power law at budgets `flops` (ValueError when there is no law)."""
        if self.a is None:
            raise ValueError(f"no frontier power law ({self.reason})")
        return self.G.value * (np.asarray(flops, dtype=float) / self.flops_per_token) ** self.a.value

    def to_dict(self) -> dict:
        """Flat and JSON-safe: a, a_low, a_high, b, ..., G_high, and `frontier`, one object per point."""
        out: dict = {"approach": self.approach}
        for name in ("a", "b", "G"):
            out.update(_flat(name, getattr(self, name)))
        out.update(
            flops_per_token=self.flops_per_token,
            n_fit=self.n_fit,
            n_boot=self.n_boot,
            ci=self.ci,
            residual_rms=self.residual_rms,
            reason=self.reason,
            frontier=[p.to_dict() for p in self.points],
        )
        return jsonable(out)


def loss_law_frontier(
    fit: ScalingLawFit, flops: Sequence[float], *, flops_per_token: float = FLOPS_PER_TOKEN
) -> ComputeOptimalFrontier:
    """Approach 3: the frontier of a fitted L(N, D) at budgets `flops` (C = k N D, k =
    `flops_per_token`), with intervals from the fit's bootstrap resamples."""
    flops = _budgets(flops)
    if flops_per_token <= 0:
        raise ValueError(f"flops_per_token must be > 0, got {flops_per_token}")
    if fit.variables != ("N", "D"):
        return no_frontier(
            "loss_law",
            flops_per_token,
            fit.n_points,
            fit.ci,
            f"insufficient data: the law {fit.law} has no trade-off between N and D",
        )
    best = _closed_form(np.array([[getattr(fit, c).value for c in BOOT_COLUMNS]]), flops, flops_per_token)
    boot = fit.boot if fit.boot is not None else np.empty((0, len(BOOT_COLUMNS)))
    samples = _closed_form(boot, flops, flops_per_token)
    if best["G"].size and not np.isfinite(best["G"][0]):
        return no_frontier(
            "loss_law",
            flops_per_token,
            fit.n_points,
            fit.ci,
            "the fitted law has alpha or beta at 0: no finite optimum",
        )

    def est(key: str, j: int | None = None) -> Estimate:
        value, reps = (best[key][0], samples[key]) if j is None else (best[key][0, j], samples[key][:, j])
        low, high = interval(reps, fit.ci) if len(reps) else (None, None)
        return Estimate(float(value), low, high)

    points = tuple(
        FrontierPoint(float(c), est("N", j), est("D", j), est("L", j), est("tpp", j))
        for j, c in enumerate(flops)
    )
    return ComputeOptimalFrontier(
        "loss_law",
        est("a"),
        est("b"),
        est("G"),
        points,
        flops_per_token,
        n_fit=fit.n_points,
        n_boot=len(boot),
        ci=fit.ci,
    )


def _closed_form(params: np.ndarray, flops: np.ndarray, k: float) -> dict[str, np.ndarray]:
    """a, b, G (rows of `params`: E, A, alpha, B, beta) and N, D, L, tokens/param (rows x budgets)."""
    E, A, alpha, B, beta = params.T
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        s = alpha + beta
        a, b = beta / s, alpha / s
        G = np.exp((np.log(alpha * A) - np.log(beta * B)) / s)
        N = G[:, None] * (flops[None, :] / k) ** a[:, None]
        D = flops[None, :] / (k * N)
        L = E[:, None] + A[:, None] / N ** alpha[:, None] + B[:, None] / D ** beta[:, None]
    return {"a": a, "b": b, "G": G, "N": N, "D": D, "L": L, "tpp": D / N}


@dataclass(frozen=True)
class PowerLawInCompute:
    """ln N_opt = ln G + a ln(C/k) by least squares, with per-resample fits (`boot_a`, `boot_log_g`)."""

    a: Estimate
    G: Estimate
    residual_rms: float
    boot_a: np.ndarray
    boot_log_g: np.ndarray

    def n_opt(self, flops: float, k: float, ci: float) -> Estimate:
        """N_opt at a budget on this law, with the interval of the resampled laws."""
        reps = np.exp(self.boot_log_g + self.boot_a * np.log(flops / k))
        return Estimate(float(self.G.value * (flops / k) ** self.a.value), *interval(reps, ci))


def compute_power_law(
    flops: np.ndarray, n_opt: np.ndarray, boot_n_opt: np.ndarray, *, k: float, ci: float
) -> PowerLawInCompute:
    """Fit N_opt = G (C/k)^a to optima `n_opt` at budgets `flops` (equal weight per point) and
    refit each row of `boot_n_opt` (resamples x budgets; a row with a NaN does not fit)."""
    x = np.log(np.asarray(flops, dtype=float) / k)
    slope, icpt = ols_rows(x, np.log(np.asarray(n_opt, dtype=float))[None, :])
    resid = np.log(n_opt) - (icpt[0] + slope[0] * x)
    with np.errstate(divide="ignore", invalid="ignore"):
        boot_y = np.log(np.asarray(boot_n_opt, dtype=float).reshape(-1, x.size))
    b_slope, b_icpt = ols_rows(x, boot_y)
    ok = np.isfinite(b_slope) & np.isfinite(b_icpt)
    b_slope, b_icpt = b_slope[ok], b_icpt[ok]
    return PowerLawInCompute(
        a=Estimate(float(slope[0]), *interval(b_slope, ci)),
        G=Estimate(float(np.exp(icpt[0])), *interval(np.exp(b_icpt), ci)),
        residual_rms=float(np.sqrt(np.mean(resid**2))),
        boot_a=b_slope,
        boot_log_g=b_icpt,
    )


def ols_rows(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares slope and intercept of each row of y (R, P) on x (P,), skipping non-finite
    entries of y; NaN for a row with fewer than two distinct x left."""
    ok = np.isfinite(y)
    w = ok.astype(float)
    y0 = np.where(ok, y, 0.0)
    cnt = w.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        mx = (w * x).sum(axis=1) / cnt
        my = y0.sum(axis=1) / cnt
        dx = (x[None, :] - mx[:, None]) * w
        sxx = (dx**2).sum(axis=1)
        slope = (dx * (y0 - my[:, None])).sum(axis=1) / sxx
    slope = np.where(sxx > 1e-12, slope, np.nan)
    return slope, my - slope * mx


def frontier_point(
    flops: float, k: float, n_opt: Estimate | None, l_opt: Estimate | None, reason: str | None = None
) -> FrontierPoint:
    """The point at `flops` from N_opt alone: D_opt = C/(k N_opt) and D/N = C/(k N^2) fall as N
    rises, so their intervals are N's, mapped and swapped."""
    if n_opt is None:
        return FrontierPoint(flops, None, None, l_opt, None, reason)

    def mapped(f, swap: bool) -> Estimate:
        low, high = (n_opt.high, n_opt.low) if swap else (n_opt.low, n_opt.high)
        return Estimate(f(n_opt.value), None if low is None else f(low), None if high is None else f(high))

    d_opt = mapped(lambda n: flops / (k * n), swap=True)
    tpp = mapped(lambda n: flops / (k * n * n), swap=True)
    return FrontierPoint(flops, n_opt, d_opt, l_opt, tpp, reason)


def no_frontier(
    approach: str, k: float, n_fit: int, ci: float, reason: str, points: tuple[FrontierPoint, ...] = ()
) -> ComputeOptimalFrontier:
    """A frontier without a power law (a, b, G None), saying why; its points are still reported."""
    return ComputeOptimalFrontier(
        approach, None, None, None, points, k, n_fit=n_fit, n_boot=0, ci=ci, reason=reason
    )


def _budgets(flops: Sequence[float]) -> np.ndarray:
    flops = np.asarray(flops, dtype=float).ravel()
    if not np.all(np.isfinite(flops)) or np.any(flops <= 0):
        raise ValueError("every compute budget must be finite and > 0")
    return flops


def _flat(name: str, est: Estimate | None) -> dict:
    if est is None:
        return {name: None, f"{name}_low": None, f"{name}_high": None}
    return {name: est.value, f"{name}_low": est.low, f"{name}_high": est.high}
