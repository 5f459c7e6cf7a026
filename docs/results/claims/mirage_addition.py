"""sweeps/mirage_addition.yaml against Schaeffer et al. 2023."""

from __future__ import annotations

from claims.claim import Claim, Verdict
from claims.measures import fmt

TITLE = "The mirage check on 3-digit addition: exact match against per-digit accuracy and log-likelihood"
SETS = (
    "grid.n=[{d_model: 4}, {d_model: 8}, {d_model: 12}, {d_model: 16}, {d_model: 20}, {d_model: 28}, "
    "{d_model: 44}]",
    "train.steps=3000",
)
WHY = {
    "grid.n": "the 7 narrowest of the 9 widths (0.6k to 49k parameters; the study goes on to 191k): the "
    "widest models cost the most (0.11 CPU-s a step at 208k against 0.03 at 4k), and the jump lies below "
    "10k",
    "train.steps": "3,000 instead of 6,000: halves the cost; an earlier shrunk run (5 sizes, 1 seed, 3,000 "
    "steps) had every size from 10k up at exact match 1.0 by then",
}


def _checks(results: dict, continuous: str | None = None) -> list[dict]:
    return [
        c for c in results.get("mirage") or [] if continuous is None or c["continuous_metric"] == continuous
    ]


def _fit_text(fit: dict, metric: str) -> str:
    if fit.get("threshold") is None:
        return f"{metric}: no threshold ({fit.get('reason')})"
    sharp = {True: "sharp", False: "smooth", None: "sharpness undecided"}[fit.get("sharp")]
    return (
        f"{metric}: threshold N = {fit['threshold']:,.0f}, {sharp} (AIC evidence for a jump over a power law "
        f"{fmt(fit.get('evidence'), '.3g')}, rise over {fmt(fit.get('width_decades'), '.2g')} decades)"
    )


def sharp_under_exact_match(results: dict) -> Verdict:
    checks = _checks(results)
    if not checks:
        return Verdict(
            "no mirage check", "cannot tell", (results.get("skipped") or {}).get("mirage", "not made")
        )
    c = max(checks, key=lambda c: c.get("group") or 0)  # the largest D (a single D in this study)
    fit = c["discontinuous"]
    measured = _fit_text(fit, c["discontinuous_metric"]) + f" at D = {fmt(c.get('group'), ',.0f')}"
    if fit.get("threshold") is None:
        return Verdict(
            measured, "cannot tell", "the grid does not contain the jump: " + str(fit.get("reason"))
        )
    if fit.get("sharp") is None:
        return Verdict(measured, "cannot tell", str(fit.get("sharp_reason")))
    if fit["sharp"]:
        return Verdict(
            measured, "yes", "exact match jumps: a sigmoid fits it far better than a saturating power law"
        )
    return Verdict(
        measured,
        "no",
        "exact match rises smoothly over the grid; likely cause: the sizes span the "
        "transition finely enough that the 3-digit product of per-digit accuracies is itself smooth",
    )


def _smooth_under(continuous: str, name: str):
    def check(results: dict) -> Verdict:
        checks = _checks(results, continuous)
        if not checks:
            return Verdict(f"{continuous} not recorded", "cannot tell", "no mirage check with this metric")
        c = max(checks, key=lambda c: c.get("group") or 0)
        measured = f"{_fit_text(c['continuous'], continuous)}; verdict: {c['verdict']} ({c['reason']})"
        if c["verdict"] == "mirage":
            return Verdict(
                measured, "yes", f"the jump under exact match is not in {name}: it comes from the metric"
            )
        if c["verdict"] == "emergent":
            return Verdict(
                measured,
                "no",
                f"{name} jumps too: on this grid the jump is in the model, not only in "
                f"the metric; likely cause: sizes too coarse around the transition, or a real capacity "
                f"step (a model below some width cannot represent the carry)",
            )
        return Verdict(measured, "cannot tell", f"the check's verdict is {c['verdict']!r}")

    return check


CLAIMS = (
    Claim(
        "Schaeffer et al. 2023",
        "exact match (a discontinuous metric) jumps sharply with model size",
        sharp_under_exact_match,
    ),
    Claim(
        "Schaeffer et al. 2023",
        "the same runs improve smoothly under per-digit accuracy",
        _smooth_under("val_token_acc", "per-digit accuracy"),
    ),
    Claim(
        "Schaeffer et al. 2023",
        "the same runs improve smoothly under the log-likelihood of the answer",
        _smooth_under("val_answer_logprob", "the log-likelihood"),
    ),
)
