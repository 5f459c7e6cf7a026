"""docs/results/study_page.py and its claims (docs/results/claims/) on planted answers.

A grokking study is planted as MLflow would give it back (a runs table and per-evaluation
curves) with known effects: weight decay below 0.1 never generalizes (memorization), above 3 it
never fits the training set (confusion), no run generalizes at a training fraction of 0.2 but
every decay in [0.1, 3] does from 0.3 on, and the generalization step grows as 1 / fraction.
The real report is built from it, the page's results dict from the report, and the claims must
find each planted effect, and say "no" when the planted weight-decay effect is reversed. The
mirage and parity claims are checked on the analysis functions' outputs for planted curves.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from orchestrator.analysis.mirage import mirage_checks
from orchestrator.store.results import StudyResults

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "docs" / "results"))
import study_page  # noqa: E402
from claims import emergence_parity, grokking_modular, mirage_addition  # noqa: E402
from claims.measures import curve_rise  # noqa: E402

P, LR, STEPS, EVAL = 59, 3e-3, 5000, 100
FRACTIONS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
DECAYS = np.geomspace(1e-3, 10, 8)


def planted_events(wd: float, frac: float) -> tuple[int | None, int | None]:
    """(memorization step, generalization step) of the planted study; None: not within STEPS."""
    if wd > 3:
        return None, None  # confusion: the decay keeps it from fitting even the training set
    if wd < 0.1 or frac < 0.25:
        return 200, None  # memorization
    gen = 200 + 600 / np.sqrt(wd) * (0.7 / frac)  # grows as the data shrinks
    gen = int(np.ceil(gen / EVAL) * EVAL)
    return 200, (gen if gen <= STEPS else None)


def grokking_study(reverse: bool = False) -> StudyResults:
    rows, curves = [], []
    chance = 1 / P
    for frac in FRACTIONS:
        cell = f"N[d_model=64]_D={frac:g}"
        for trial, wd in enumerate(DECAYS):
            mem, gen = planted_events(wd if not reverse else 1e-2 / wd, frac)
            run = f"{cell}-{trial}"
            last = gen + 5 * EVAL if gen is not None else STEPS  # success-stopped 5 evaluations later
            steps = np.arange(0, last + 1, EVAL)
            train = np.where((mem is not None) & (steps >= (mem or 0)), 1.0, 0.3)
            val = np.where((gen is not None) & (steps >= (gen or 0)), 1.0, chance)
            curves += [
                {
                    "run_id": run,
                    "step": int(s),
                    "train_acc": float(t),
                    "val_acc": float(v),
                    "train_loss": 0.01 if t > 0.9 else 3.0,
                    "val_loss": 0.01 if v > 0.9 else 4.0,
                }
                for s, t, v in zip(steps, train, val)
            ]
            rows.append(
                {
                    "run_id": run,
                    "cell": cell,
                    "status": "completed",
                    "reason": "",
                    "trial_number": trial,
                    "train_threshold": 0.99,
                    "val_threshold": 0.95,
                    "refined": None,
                    "n_params": 57280.0,
                    "n_train": float(round(frac * P * P)),
                    "d_value": frac,
                    "seed": 0.0,
                    "param.train.weight_decay": float(wd),
                    "max_val_acc": float(val.max()),
                    "val_acc": float(val[-1]),
                    "min_val_loss": 0.01 if gen else 4.0,
                    "val_loss": 0.01 if gen else 4.0,
                    "memorization_step": mem or np.nan,
                    "generalization_step": gen or np.nan,
                    "steps": float(last),
                }
            )
    config = {
        "name": "grokking_modular",
        "task": {"name": "modular", "p": P, "op": "add"},
        "model": {
            "family": "transformer",
            "n_layer": 1,
            "d_model": 128,
            "n_head": 4,
            "d_mlp": 256,
            "layer_norm": False,
        },
        "train": {
            "steps": STEPS,
            "eval_every": EVAL,
            "lr": LR,
            "betas": [0.9, 0.98],
            "warmup_steps": 10,
            "success_stop_evals": 5,
            "checkpoint_every": 1000,
        },
        "grid": {"n": [{"d_model": 64}], "d": list(FRACTIONS), "seeds": [0]},
        "search": {
            "sampler": "qmc",
            "trials_per_cell": 8,
            "space": {"train.weight_decay": {"type": "float", "low": 1e-3, "high": 10.0, "log": True}},
        },
        "objectives": [{"metric": "generalization_step", "direction": "minimize"}],
    }
    return StudyResults("parent", "0", config, pd.DataFrame(rows), pd.DataFrame(curves))


@pytest.fixture(scope="module")
def grokking_page(tmp_path_factory):
    out = tmp_path_factory.mktemp("page") / "grokking_modular"
    took = {"wall_s": 600.0, "runs": 8, "resumed_runs": 3}
    results = study_page.build_from("grokking_modular", grokking_study(), out, took)
    return results, out


def test_the_grokking_claims_find_the_planted_effects(grokking_page):
    results, _ = grokking_page
    verdicts = {c.check.__name__: c.check(results) for c in grokking_modular.CLAIMS}
    assert {k: v.agrees for k, v in verdicts.items()} == {
        "weight_decay_generalizes": "yes",
        "critical_fraction": "yes",
        "time_grows_as_data_shrinks": "yes",
        "four_phases": "yes",
    }
    # The bracket is the planted one: nothing at 0.2, everything in [0.1, 3] from 0.3 on.
    assert "between fraction 0.2 (did not generalize) and 0.3" in verdicts["critical_fraction"].measured
    phases = {r["phase"] for r in results["page_runs"]}
    assert phases == {"comprehension", "grokking", "memorization", "confusion"}
    # lr was not searched: no weight decay x lr plane, and no "regions not drawn" line per panel.
    assert results["phase_regions"]["phase_wd_x_lr"] == {} and results["phase_regions"]["phase_wd_x_d"]


def test_the_page_holds_plots_claims_numbers_and_predictions(grokking_page):
    results, out = grokking_page
    text = study_page.page(results, "grokking_modular")
    assert "| claim in the paper | what grokscale measured | agrees? |" in text
    assert "wall time 10.0 min" in text and "3 runs restarted by the later driver" in text
    assert text.count("**yes**") == 4
    assert "![" in text and all((out / f"{name}.png").exists() for name in results["plots"])
    assert "### Critical data size D*(N)" in text and "### Where the predictions fail" in text
    assert "D*(N) is not backtested" in text  # one model size: nothing to fit a law on, said so
    gs = results["predictions"]["generalization_step"]
    assert gs["n_scored"] > 0 and f"{gs['n_scored']} runs scored" in text
    # The run logged its config; what differs from sweeps/grokking_modular.yaml is listed with the command.
    keys = {c["key"] for c in results["page"]["overrides"]}
    assert {"task.p", "train.lr", "train.steps", "grid.d", "grid.n", "model.d_mlp"} <= keys
    assert "--set task.p=59" in results["page"]["command"]
    assert "**This is not the recommended run**" in text  # grid.d and d_model were not the recommended shrink


def test_reversed_weight_decay_is_a_disagreement():
    res = grokking_study(reverse=True)
    results = {"page_runs": study_page.page_runs(res, res.config)}
    verdict = grokking_modular.weight_decay_generalizes(results)
    assert verdict.agrees == "no" and "less weight decay generalized more often" in verdict.reason


def test_too_few_runs_cannot_tell():
    verdict = grokking_modular.weight_decay_generalizes(
        {"page_runs": [{"status": "completed", "weight_decay": 1.0, "generalization_step": 100.0}]}
    )
    assert verdict.agrees == "cannot tell"


def mirage_runs(token_acc) -> pd.DataFrame:
    """7 sizes x 3 seeds of 3-digit addition: exact match steps from chance to 1 between 5k and 7k."""
    rng = np.random.default_rng(0)
    rows = []
    for n in np.geomspace(600, 50_000, 7):
        for _ in range(3):  # seeds
            exact = 1e-4 + (1 - 1e-4) / (1 + np.exp(-(np.log10(n) - np.log10(6000)) / 0.05))
            rows.append(
                {
                    "n_params": n,
                    "n_train": 20_000.0,
                    "status": "completed",
                    "val_acc": float(np.clip(exact + rng.normal(0, 0.005), 0, 1)),
                    "val_token_acc": float(token_acc(n) + rng.normal(0, 0.005)),
                    "val_answer_logprob": float(-3.0 * (n / 600) ** -0.5),
                }
            )
    return pd.DataFrame(rows)


def test_the_mirage_claims_on_planted_metrics():
    smooth = lambda n: 1 - 0.6 * (n / 600) ** -0.4  # noqa: E731 - a saturating power law: no jump
    checks = mirage_checks(
        mirage_runs(smooth),
        x_col="n_params",
        group_col="n_train",
        pairs=(("val_acc", "val_token_acc"), ("val_acc", "val_answer_logprob")),
        chance_discontinuous=1e-4,
    )
    results = {"mirage": [c.to_dict() for c in checks]}
    assert [c.check(results).agrees for c in mirage_addition.CLAIMS] == ["yes", "yes", "yes"]
    step = lambda n: 0.3 + 0.7 / (1 + np.exp(-(np.log10(n) - np.log10(6000)) / 0.05))  # noqa: E731
    checks = mirage_checks(
        mirage_runs(step),
        x_col="n_params",
        group_col="n_train",
        pairs=(("val_acc", "val_token_acc"),),
        chance_discontinuous=1e-4,
    )
    verdict = mirage_addition.CLAIMS[1].check({"mirage": [c.to_dict() for c in checks]})
    assert verdict.agrees == "no" and "jumps too" in verdict.reason


def parity_record(steps, val) -> dict:
    plateau, reach = curve_rise(steps, val, chance=0.5, threshold=0.95)
    return {"status": "completed", "eval_every": 250.0, "plateau_end": plateau, "reach_step": reach}


def test_the_plateau_claim_tells_an_abrupt_rise_from_a_gradual_one():
    steps = np.arange(0, 10_001, 250)
    abrupt = [parity_record(steps, np.where(steps >= t, 1.0, 0.5)) for t in (4000, 6000, 8000)]
    assert abrupt[0]["plateau_end"] == 3750 and abrupt[0]["reach_step"] == 4000
    assert emergence_parity.abrupt_after_plateau({"page_runs": abrupt}).agrees == "yes"
    gradual = [parity_record(steps, np.clip(0.5 + steps / t, 0, 1)) for t in (4000, 6000, 8000)]
    assert emergence_parity.abrupt_after_plateau({"page_runs": gradual}).agrees == "no"


def test_step_predictions_that_only_say_now_are_worded_apart():
    """The page says how many scored runs generalized at their memorization step, and judges the
    clock on the others (the numbers come from the backtest, tests/unit/test_analysis_prediction.py)."""
    text = "\n".join(
        study_page.failures(
            {
                "predictions": {
                    "generalization_step": {
                        "predictions": [],
                        "n_scored": 3,
                        "median_abs_error": 0.0,
                        "baseline_median_abs_error": 0.5,
                        "n_immediate": 2,
                        "late_median_abs_error": 0.4,
                        "late_baseline_median_abs_error": 0.1,
                        "missed": 0,
                        "surprised": 0,
                    }
                }
            }
        )
    )
    assert "2 of 3 scored runs generalized at the evaluation at which they memorized" in text
    assert "Over the 1 that generalized later, the median |error| is 40%" in text
    assert "the decay clock (40%) does not beat the baseline (10%)" in text


def test_the_time_claim_divides_out_the_searched_weight_decay_beside_the_steps():
    """When each cell's search found more decay at less data, steps show no trend; the e-folds of
    decay (lr x weight decay x step) do. The verdict stays on steps, and says the e-folds beside it."""
    records = []
    for d, wd in ((0.3, 1.2), (0.4, 0.9), (0.5, 0.6), (0.6, 0.3), (0.7, 0.15)):
        for k in range(
            3
        ):  # e-folds needed fall with data, 12 to 1.5; so does the decay found: ~1,000 steps each
            efolds = {0.3: 12, 0.4: 9, 0.5: 6, 0.6: 3, 0.7: 1.5}[d] * (0.9 + 0.1 * k)
            step = efolds / (1e-3 * wd)
            records.append(
                {
                    "status": "completed",
                    "d_value": d,
                    "lr": 1e-3,
                    "weight_decay": wd,
                    "generalization_step": step,
                }
            )
    verdict = grokking_modular.time_grows_as_data_shrinks({"page_runs": records})
    assert verdict.agrees == "cannot tell", verdict
    assert (
        "no trend in steps significant" in verdict.reason
        and "does fall as the fraction grows" in verdict.reason
    )
    same_decay = [
        {**r, "weight_decay": 1.0, "generalization_step": r["generalization_step"] * r["weight_decay"]}
        for r in records
    ]
    assert grokking_modular.time_grows_as_data_shrinks({"page_runs": same_decay}).agrees == "yes"
