"""`grokscale plan` (orchestrator/analysis/plan.py, orchestrator/report/plan.py): the plan against
planted laws whose optimum is known in closed form, the shape search, the rung a study file
that validates, and the command on a small results.json and on MLflow's runs table."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import yaml

from orchestrator.analysis.estimate import Estimate
from orchestrator.analysis.isoflop import fit_isoflop
from orchestrator.analysis.plan import ComputePlan, nearest_cell, plan_isoflop, plan_loss_law
from orchestrator.cli import main
from orchestrator.report import plan as shell
from orchestrator.store.results import StudyResults
from orchestrator.study import load_study
from orchestrator.study.grid import build_cells
from trainers.models import shape_counts
from trainers.spec import TrainSpec
from trainers.tasks import make_task

STUDY = "sweeps/isoflop_charlm.yaml"
K = 5.5  # FLOPs per token per parameter
A_EXP, G = 0.45, 8000 / (1.5e10 / K) ** 0.45  # planted N_opt = G (C/K)^a: 8,000 at 1.5e10 FLOPs
CURVATURE = 0.1  # loss above the optimum per (ln N - ln N_opt)^2


def n_opt(c):
    return G * (np.asarray(c, dtype=float) / K) ** A_EXP


def l_opt(c):  # a pure power law in C, the form the plan extrapolates
    return 3.0 * (np.asarray(c, dtype=float) / 1e10) ** -0.05


def planted_loss(n, c):
    """Exactly a parabola in ln N at each budget, its vertex on the planted laws."""
    return l_opt(c) + CURVATURE * (np.log(n) - np.log(n_opt(c))) ** 2


def test_plan_isoflop_recovers_the_planted_optimum():
    budgets = np.array([1e9, 4e9, 1.6e10, 6.4e10])
    n = np.concatenate([n_opt(c) * np.geomspace(1 / 4, 4, 5) for c in budgets])
    c = np.repeat(budgets, 5)
    target = 2.56e11
    plan = plan_isoflop(n, c, planted_loss(n, c), target, flops_per_token=K)
    assert plan.reason is None and plan.approach == "isoflop"
    assert plan.N_opt.value == pytest.approx(n_opt(target), rel=1e-9)
    assert plan.D_opt.value == pytest.approx(target / (K * n_opt(target)), rel=1e-9)
    assert plan.L_opt.value == pytest.approx(l_opt(target), rel=1e-9)
    assert plan.a.value == pytest.approx(A_EXP, rel=1e-9)
    assert plan.extrapolation == pytest.approx(4.0) and plan.largest_flops == pytest.approx(6.4e10)
    for est in (plan.N_opt, plan.D_opt, plan.L_opt):  # noise-free: the replicates agree
        assert est.low == pytest.approx(est.value, rel=1e-6) and est.high == pytest.approx(
            est.value, rel=1e-6
        )
    assert set(plan.to_dict()) >= {"N_opt", "N_opt_low", "D_opt_high", "L_opt", "extrapolation", "reason"}


def test_plan_isoflop_intervals_widen_with_noise_and_cover_the_truth():
    rng = np.random.default_rng(0)
    budgets = np.array([1e9, 4e9, 1.6e10, 6.4e10])
    n = np.concatenate([n_opt(c) * np.geomspace(1 / 4, 4, 7) for c in budgets])
    c = np.repeat(budgets, 7)
    plan = plan_isoflop(n, c, planted_loss(n, c) + rng.normal(0, 0.002, n.size), 1.28e11, flops_per_token=K)
    assert plan.N_opt.low < plan.N_opt.value < plan.N_opt.high
    assert plan.D_opt.low < plan.D_opt.value < plan.D_opt.high  # D = C/(kN): its interval is N's, swapped
    assert plan.N_opt.low < n_opt(1.28e11) < plan.N_opt.high


def test_plan_isoflop_without_a_power_law_says_why():
    budgets = np.array([1e9, 4e9])  # two budgets: no power law
    n = np.concatenate([n_opt(c) * np.geomspace(1 / 4, 4, 5) for c in budgets])
    c = np.repeat(budgets, 5)
    plan = plan_isoflop(n, c, planted_loss(n, c), 1e10, flops_per_token=K)
    assert plan.N_opt is None and plan.L_opt is None
    assert "insufficient data" in plan.reason and "needs 3" in plan.reason


def test_plan_loss_law_is_the_closed_form_optimum_of_the_planted_law():
    E, A, ALPHA, B, BETA = 1.69, 406.4, 0.34, 410.7, 0.28  # Hoffmann et al. (2022)
    n, d = (x.ravel() for x in np.meshgrid(np.geomspace(1e6, 1e8, 6), np.geomspace(1e8, 1e10, 6)))
    plan = plan_loss_law(n, d, E + A / n**ALPHA + B / d**BETA, 1e20, flops_per_token=6.0, n_boot=20)
    assert plan.reason is None
    g = (ALPHA * A / (BETA * B)) ** (1 / (ALPHA + BETA))
    truth = g * (1e20 / 6) ** (BETA / (ALPHA + BETA))
    assert plan.N_opt.value == pytest.approx(truth, rel=0.02)
    assert plan.D_opt.value * plan.N_opt.value * 6 == pytest.approx(1e20)
    d_opt = 1e20 / (6 * truth)
    assert plan.L_opt.value == pytest.approx(E + A / truth**ALPHA + B / d_opt**BETA, rel=1e-3)
    assert plan.largest_flops == pytest.approx(6 * 1e8 * 1e10)


def test_plan_loss_law_refuses_a_rejected_fit():
    rng = np.random.default_rng(1)
    n, d = (x.ravel() for x in np.meshgrid(np.geomspace(1e4, 1e5, 3), np.geomspace(1e5, 1e6, 3)))
    plan = plan_loss_law(n, d, 2.0 + rng.normal(0, 0.05, n.size), 1e13, n_boot=20)
    assert plan.N_opt is None and plan.reason.startswith("the L(N, D) fit was rejected")


def test_nearest_cell_takes_the_nearest_budget_then_the_nearest_size():
    n = [1e3, 2e3, 4e3, 1e3, 2e3, 4e3]
    c = [1e10, 1e10, 1e10, 4e10, 4e10, 4e10]
    assert nearest_cell(n, c, 2.2e3, 1e11) == 4  # budget 4e10, then N 2e3
    assert nearest_cell(n, c, 3.5e3, 1.1e10) == 2
    assert nearest_cell(n, c, 1e3, 2e10) == 3  # equally far in log C from both: the larger budget


# -- the shell: shape, rung, command --------------------------------------------------------------------
@pytest.fixture(scope="module")
def iso():
    """The shipped IsoFLOP study and its 20 cells (the corpus is read once)."""
    study = load_study(STUDY)
    return study, build_cells(study)


def test_closest_shape_is_the_width_at_the_studys_depth_and_heads(iso):
    study, cells = iso
    exact = shell.closest_shape(study, 21_520)  # d_model 20 has exactly 21,520 parameters (total)
    assert exact.shape == {"d_model": 20} and exact.relative_error == 0
    assert shell.describe_shape(exact.model) == {"d_model": 20, "n_layer": 2, "n_head": 4}
    near = shell.closest_shape(study, 23_000)  # between d_model 20 (21,520) and 24 (28,128)
    assert near.shape == {"d_model": 20}
    # Below the smallest width there is still a closest shape, far off: said, not raised.
    tiny = shell.closest_shape(study, 300)
    assert tiny.shape == {"d_model": 4} and tiny.relative_error > 1
    by_key = {c.key: c.n("total") for c in cells}
    assert shell.closest_shape(study, by_key["N[d_model=12]_C=1.2e+11"]).shape == {"d_model": 12}


def test_closest_shape_of_a_gpt_is_a_depth_on_its_ladder(tmp_path):
    path = tmp_path / "gpt.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "g",
                "task": {"name": "modular", "p": 23},
                "model": {"family": "gpt", "aspect": 16, "head_dim": 16},
                "grid": {"n": [{"n_layer": 1}], "d": [0.5]},
            }
        )
    )
    study = load_study(path)
    ladder = {k: shell.closest_shape(study, 10**9).model.model_copy(update={"n_layer": k}) for k in (3, 4)}
    spec = TrainSpec.model_validate(study.trial_data({}, None, {"train.steps": 10}, 0))
    data = make_task(spec.task, 0)
    counts = {k: shape_counts(m, data.vocab_size, data.n_out, data.seq_len).total for k, m in ladder.items()}
    picked = shell.closest_shape(study, counts[3])
    assert picked.shape == {"n_layer": 3} and picked.relative_error == 0
    assert shell.describe_shape(picked.model) == {"d_model": 48, "n_layer": 3, "n_head": 3}  # aspect 16 x 3
    between = shell.closest_shape(study, 0.45 * counts[3] + 0.55 * counts[4])  # nearer the 4-layer rung
    assert between.shape == {"n_layer": 4} and between.relative_error > 0
    assert shell.closest_shape(study, 10).shape == {"n_layer": 1}  # below the ladder: its first rung


def test_the_rung_is_a_study_that_validates(iso, tmp_path):
    study, cells = iso
    plan = ComputePlan(
        "isoflop",
        2.4e11,
        5.46,
        1.2e11,
        Estimate(21_000.0, 17_000.0, 24_000.0),
        Estimate(2.1e6),
        Estimate(2.0, 1.9, 2.1),
        Estimate(0.42),
        n_fit=4,
    )
    data = shell.read_study_data(STUDY, [])
    rung = shell.rung_config(data, study, {"d_model": 20}, plan, {"train.lr": 0.03})
    path = tmp_path / "rung.yaml"
    path.write_text(yaml.safe_dump(rung, sort_keys=False))
    cell, problems = shell.check_rung(path)
    assert problems == []
    assert cell.key == "N[d_model=20]_C=2.4e+11" and cell.n("total") == 21_520
    assert cell.examples_per_step == 16 and cell.tokens_per_example == 64
    assert cell.steps == math.ceil(2.4e11 / (16 * cell.flops_per_example))  # the budget's steps, rounded up
    loaded = load_study(path)
    assert loaded.name == "isoflop_charlm_rung_2.4e11" and loaded.train["lr"] == 0.03
    assert loaded.search.trials_per_cell == 1 and loaded.search.space == {} and loaded.grid.seeds == [0]
    assert (
        loaded.grid.tokens_per_param is None and data["grid"]["n"] != rung["grid"]["n"]
    )  # the study is untouched


def planted_results(study, cells, path):
    """A small results.json as the report writes it: each cell's best trial and the IsoFLOP fit."""
    n = np.array([c.n("total") for c in cells], dtype=float)
    c = np.array([c.flops_budget for c in cells])
    loss = planted_loss(n, c)
    regs = [
        {
            "cell": cell.key,
            "objective": "min_val_loss",
            "direction": "minimize",
            "n_trials": 3,
            "best_trial": 1,
            "best_value": float(v),
            "best_params": {"train.lr": 0.015 * (1 + (cell.n("total") > 20_000))},
        }
        for cell, v in zip(cells, loss)
    ]
    results = {
        "study": study.name,
        "regularization": regs,
        "frontier_isoflop": fit_isoflop(n, c, loss, flops_per_token=K).to_dict(),
        "scaling_law": {"check": {"accepted": False, "reasons": ["alpha's interval is 3.19 wide (> 1.0)"]}},
        "skipped": {},
    }
    path.write_text(json.dumps(results))
    return results


def test_plan_command_on_a_small_results_json(iso, tmp_path, capsys):
    study, cells = iso
    results = tmp_path / "results.json"
    planted_results(study, cells, results)
    out = tmp_path / "rungs" / "rung.yaml"
    rc = main(["plan", STUDY, "--flops", "2.4e11", "--results", str(results), "--out", str(out), "--json"])
    got = json.loads(capsys.readouterr().out)
    assert rc == 0, got
    assert {
        "n_opt",
        "n_low",
        "n_high",
        "d_opt",
        "d_low",
        "d_high",
        "shape",
        "steps",
        "batch",
        "loss",
        "loss_low",
        "loss_high",
        "out",
        "extrapolation",
    } <= set(got)
    assert got["n_opt"] == pytest.approx(float(n_opt(2.4e11)), rel=1e-6)  # 27,900
    assert got["d_opt"] == pytest.approx(2.4e11 / (K * got["n_opt"]), rel=1e-9)
    assert got["loss"] == pytest.approx(float(l_opt(2.4e11)), rel=1e-6)
    assert got["extrapolation"] == pytest.approx(2.0) and got["out"] == str(out)
    assert got["shape"]["d_model"] == 24 and got["shape"]["within_tolerance"]
    assert (
        got["hyperparameters"] == {"train.lr": 0.03}
        and got["hyperparameters_from"] == "N[d_model=24]_C=1.2e+11"
    )
    assert got["batch"] == 16 and got["steps"] > 1000 and got["rung_problems"] == []
    assert main(["validate", str(out)]) == 0
    header = " ".join(line[2:] for line in out.read_text().splitlines() if line.startswith("# "))
    assert "forecast min_val_loss" in header and "grokscale run" in header
    rc = main(["plan", STUDY, "--flops", "2.4e11", "--results", str(results), "--out", str(out)])  # the table
    text = capsys.readouterr().out
    assert rc == 0 and "N_opt" in text and "d_model 24, n_layer 2, n_head 4" in text


@pytest.mark.parametrize(
    "edit, why",
    [
        (
            lambda r: r["frontier_isoflop"].update(a=None, reason="insufficient data: 2 budget(s)"),
            "no N_opt(C) power law: insufficient data",
        ),
        (lambda r: r["frontier_isoflop"].update(a=0.5), "changed since the report"),
        (lambda r: r.pop("frontier_isoflop"), "has no IsoFLOP frontier"),
        (
            lambda r: r["regularization"][0].update(cell="N[d_model=99]_C=1e+10"),
            "not in isoflop_charlm's grid",
        ),
    ],
)
def test_plan_command_refuses_a_missing_or_changed_fit(iso, tmp_path, capsys, edit, why):
    study, cells = iso
    results = planted_results(study, cells, tmp_path / "results.json")
    edit(results)
    (tmp_path / "results.json").write_text(json.dumps(results))
    out = tmp_path / "rung.yaml"
    rc = main(
        ["plan", STUDY, "--flops", "2.4e11", "--results", str(tmp_path / "results.json"), "--out", str(out)]
    )
    assert rc == 2 and why in capsys.readouterr().err and not out.exists()


def test_plan_command_refuses_the_real_studys_rejected_loss_law(tmp_path, capsys):
    rc = main(
        [
            "plan",
            STUDY,
            "--flops",
            "2.4e11",
            "--results",
            "docs/results/isoflop_charlm/results.json",
            "--approach",
            "loss_law",
            "--out",
            str(tmp_path / "rung.yaml"),
        ]
    )
    assert rc == 2 and "the L(N, D) fit was rejected: alpha's interval" in capsys.readouterr().err


def test_plan_from_mlflow_reads_the_runs_as_the_report_does(iso, tmp_path, monkeypatch, capsys):
    """The MLflow path: the best run per cell (its own N and FLOPs, its searched values) gives the
    plan the saved report gives."""
    study, cells = iso
    results = planted_results(study, cells, tmp_path / "results.json")
    rows = []
    for cell, reg in zip(cells, results["regularization"]):
        for trial, worse in enumerate((0.05, 0.0, 0.02)):  # trial 1 is the cell's best
            rows.append(
                {
                    "run_id": f"{cell.key}/{trial}",
                    "cell": cell.key,
                    "status": "completed",
                    "trial_number": trial,
                    "seed": 0,
                    "n_params": cell.n("total"),
                    "n_train": cell.n_train,
                    "min_val_loss": reg["best_value"] + worse,
                    "flops": cell.flops_budget * 1.003,
                    "tokens": cell.flops_budget * 1.003 / (K * cell.n("total")),
                    "param.train.lr": reg["best_params"]["train.lr"] if trial == 1 else 0.06,
                }
            )
    res = StudyResults(
        "parent",
        "0",
        {"name": study.name, "task": study.task, "grid": {"flops": study.grid.flops}},
        pd.DataFrame(rows),
        pd.DataFrame(),
    )
    monkeypatch.setattr("orchestrator.store.results.load_results", lambda uri, name, with_curves=True: res)
    (tmp_path / "mlflow.db").touch()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rc = main(
        [
            "plan",
            STUDY,
            "--flops",
            "2.4e11",
            "--tracking-uri",
            uri,
            "--out",
            str(tmp_path / "r.yaml"),
            "--json",
        ]
    )
    got = json.loads(capsys.readouterr().out)
    assert rc == 0 and got["source"].startswith("MLflow experiment isoflop_charlm")
    assert got["n_opt"] == pytest.approx(float(n_opt(2.4e11)), rel=1e-6)
    assert got["flops_per_token"] == pytest.approx(K) and got["hyperparameters"] == {"train.lr": 0.03}


def test_plan_command_without_a_store_says_where_to_look(tmp_path, capsys):
    rc = main(
        [
            "plan",
            STUDY,
            "--flops",
            "2.4e11",
            "--tracking-uri",
            f"sqlite:///{tmp_path / 'none.db'}",
            "--out",
            str(tmp_path / "r.yaml"),
        ]
    )
    assert rc == 2 and "no MLflow store" in capsys.readouterr().err
