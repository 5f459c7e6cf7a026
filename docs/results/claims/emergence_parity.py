"""sweeps/emergence_parity.yaml against Barak et al. 2022 and Edelman et al. 2023."""

from __future__ import annotations

from claims.claim import Claim, Verdict, count
from claims.measures import ALPHA, fmt, generalized, listing, median, medians_by, number, trend, usable

TITLE = "Emergence on sparse parity: width x data x training time"
SETS = ("grid.seeds=[0]",)
WHY = {
    "grid.seeds": "one seed instead of two: the 4 trials per cell already give 4 runs per cell to resample, "
    "and the canonical 200 runs x up to 20,000 steps (1.4-2.8 CPU-ms a step measured) need about 2.5 "
    "CPU-hours",
}
MIN_EVALS = (
    4  # a run that reached the threshold within 3 evaluations learned too fast for a plateau to be seen
)
ABRUPT, GRADUAL = 0.25, 0.5  # the rise from chance to the threshold, as a share of the time to reach it


def abrupt_after_plateau(results: dict) -> Verdict:
    runs = [r for r in usable(results.get("page_runs") or []) if number(r.get("reach_step")) is not None]
    slow = [r for r in runs if number(r.get("eval_every")) and r["reach_step"] >= MIN_EVALS * r["eval_every"]]
    # Measured at the evaluation grid the rise is an upper bound: the jump happened between plateau_end
    # and reach.
    shares = [
        (r["reach_step"] - (r["plateau_end"] if number(r.get("plateau_end")) is not None else 0.0))
        / r["reach_step"]
        for r in slow
    ]
    with_plateau = sum(number(r.get("plateau_end")) is not None for r in slow)
    share = median(shares)
    measured = (
        f"{count(len(runs), 'run')} reached the threshold, {len(slow)} after {MIN_EVALS} or more "
        f"evaluations; of those, {with_plateau} sat at chance first; median rise from the last evaluation at "
        f"chance to the threshold: {fmt(share, '.0%')} of the time to reach it"
        + (
            " (median plateau "
            f"{median([r['plateau_end'] for r in slow if number(r.get('plateau_end'))]):,.0f} steps, median "
            f"reach {median([r['reach_step'] for r in slow]):,.0f})"
            if with_plateau
            else ""
        )
    )
    if len(slow) < 3:
        return Verdict(
            measured,
            "cannot tell",
            f"needs 3 or more runs that learned the parity after at least {MIN_EVALS} evaluations",
        )
    if share <= ABRUPT:
        return Verdict(
            measured,
            "yes",
            f"most of the time to learn is a plateau at chance; the rise takes at most "
            f"{ABRUPT:.0%} of it (at the evaluation grid's resolution)",
        )
    if share >= GRADUAL:
        return Verdict(
            measured,
            "no",
            "after leaving chance the accuracy climbs over half the time to learn or "
            "more: no long plateau then jump; likely cause: with a finite training set (the grid's D) the "
            "network fits its training set first and generalizes slowly after, where Barak et al. train "
            "mostly online, on fresh samples every step",
        )
    return Verdict(
        measured, "cannot tell", f"the rise takes between {ABRUPT:.0%} and {GRADUAL:.0%} of the time"
    )


def width_data_trade(results: dict) -> Verdict:
    cd = (results.get("predictions") or {}).get("critical_data") or {}
    law = cd.get("law") or {}
    n_star = [(s["d"], s.get("threshold")) for s in (results.get("critical_sizes") or {}).get("n_star") or []]
    found = [(d, t) for d, t in n_star if t is not None]
    star = ", ".join(f"D = {d:,.0f}: {t:,.0f}" for d, t in found) or "none within the grid"
    if law.get("exponent") is None:
        measured = f"D*(N): no law ({law.get('reason') or cd.get('reason')}); N* at each D: {star}"
        return Verdict(
            measured, "cannot tell", "the grid brackets D* at too few widths to give D*(N) a direction"
        )
    measured = (
        f"D* ∝ N^{law['exponent']:.3g} (every power law through the brackets: "
        f"[{fmt(law.get('exponent_low'))}, {fmt(law.get('exponent_high'))}]); N* at each D: {star}"
    )
    if law["direction"] == "shrinks":
        return Verdict(measured, "yes", "wider networks need less data to learn the parity")
    if law["direction"] == "grows":
        return Verdict(
            measured,
            "no",
            "wider networks needed more data here; likely cause: with a fixed number of "
            "steps and batch size the widest networks, tuned over only 4 trials, overfit small D",
        )
    return Verdict(
        measured,
        "cannot tell",
        "the slopes of the power laws through the brackets include 0: the "
        "direction is undecided on this grid",
    )


def _time_trend(results: dict, axis: str, name: str) -> Verdict:
    runs = [
        r
        for r in usable(results.get("page_runs") or [])
        if generalized(r) and number(r.get("generalization_step")) is not None
    ]
    med = medians_by(runs, axis, "generalization_step")
    rho, less, greater = trend([r[axis] for r in runs], [r["generalization_step"] for r in runs])
    measured = (
        f"median step to learn by {name}: {listing(med, ',.0f')}; Spearman's rho {fmt(rho, '.2f')} over "
        f"{count(len(runs), 'run')} that learned it (one-sided p = {fmt(less)})"
    )
    if rho is None or len(med) < 3:
        return Verdict(measured, "cannot tell", f"needs runs that learned it at 3 or more values of {name}")
    if less < ALPHA:
        return Verdict(measured, "yes", f"more {name} learns it in fewer steps")
    if greater < ALPHA:
        return Verdict(
            measured,
            "no",
            f"more {name} took more steps; likely cause: the searched learning rate and "
            f"weight decay differ between cells and set the time more than {name} does",
        )
    return Verdict(measured, "cannot tell", f"no trend significant at p < {ALPHA}")


def width_time_trade(results: dict) -> Verdict:
    return _time_trend(results, "n", "width (N)")


def data_time_trade(results: dict) -> Verdict:
    return _time_trend(results, "d", "data (D)")


CLAIMS = (
    Claim(
        "Barak et al. 2022",
        "sparse parity is learned abruptly: a long plateau at chance, then a sudden rise",
        abrupt_after_plateau,
    ),
    Claim(
        "Edelman et al. 2023",
        "width and data trade against each other: wider networks need fewer samples",
        width_data_trade,
    ),
    Claim(
        "Barak et al. 2022; Edelman et al. 2023",
        "width trades against training time: wider networks learn in fewer steps",
        width_time_trade,
    ),
    Claim(
        "Edelman et al. 2023", "data trades against training time: more samples, fewer steps", data_time_trade
    ),
)
