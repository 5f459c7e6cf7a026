"""The report's transfer check: for every hyperparameter the study searched over positive numbers
(a learning rate, an init scale), its optimum at each N and whether that optimum holds as N grows
(orchestrator/analysis/transfer.py; Yang et al. 2022's μTransfer claim). Trials are grouped by the
study's categorical searched values (e.g. `model.parametrization`: sp against mup), so each group
gets its own verdict, and so does each D. The objective is the study's first; a maximized one is
negated, so the fit always looks for a minimum."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from orchestrator.analysis.transfer import MIN_CELLS, TransferCheck, transfer_check
from orchestrator.report.document import Inputs, Report
from orchestrator.report.plots import errorbar, new_figure, save
from orchestrator.store import names

MIN_VALUES = 3  # distinct values of the hyperparameter at one N: a quadratic needs three


def searched(usable: pd.DataFrame, cell_cols: list[str]) -> tuple[list[str], list[str]]:
    """The searched columns: positive numbers that took MIN_VALUES or more values within one cell
    of the grid (checked: a quadratic needs three points at one N and D), and the others with
    several values (the groups: categorical values such as the parametrization)."""
    numeric, groups = [], []
    for col in (c for c in usable.columns if c.startswith(names.PARAM_SEARCHED_PREFIX)):
        values = pd.to_numeric(usable[col], errors="coerce")
        if values.notna().all() and (values > 0).all():
            if values.groupby([usable[c] for c in cell_cols]).nunique().max() >= MIN_VALUES:
                numeric.append(col)
        elif usable[col].nunique() > 1:
            groups.append(col)
    return numeric, groups


def _label(cols: list[str], key, d_col: str) -> str:
    """A group's name: its categorical values, and its D when the study has several."""
    values = key if isinstance(key, tuple) else (key,)
    parts = []
    for col, value in zip(cols, values):
        if col == d_col:
            parts.append(f"D={float(value):g}")
        else:
            parts.append(f"{col.removeprefix(names.PARAM_SEARCHED_PREFIX)}={value}")
    return ", ".join(parts) or "all"


def transfer(inp: Inputs, report: Report, results: dict) -> None:
    """The optimum's drift over N at each fixed D (a different D moves the optimum for its own
    reasons: more tokens, another lr), per group of the categorical searched values."""
    objective = (inp.config.get("objectives") or [{"metric": "min_val_loss", "direction": "minimize"}])[0]
    metric, sign = objective["metric"], (1.0 if objective["direction"] == "minimize" else -1.0)
    need = [c for c in (metric, inp.n_col, inp.d_col) if c in inp.usable]
    usable = inp.usable.dropna(subset=need)
    if metric not in usable or inp.d_col not in usable or usable[inp.n_col].nunique() < MIN_CELLS:
        report.skipped["transfer"] = (
            f"a transfer check needs the objective {metric} at {MIN_CELLS} or more model "
            f"sizes; this study has {usable[inp.n_col].nunique() if inp.n_col in usable else 0}"
        )
        return
    numeric, groups = searched(usable, [inp.n_col, inp.d_col])
    if not numeric:
        report.skipped["transfer"] = (
            f"no searched hyperparameter took {MIN_VALUES} or more positive values within one cell "
            "(one N and D): nothing to locate an optimum of"
        )
        return
    by = groups + ([inp.d_col] if usable[inp.d_col].nunique() > 1 else [])
    checks: dict[str, dict[str, TransferCheck]] = {}
    for col in numeric:
        param = col.removeprefix(names.PARAM_SEARCHED_PREFIX)
        for key, part in usable.groupby(by, sort=True) if by else [((), usable)]:
            if part[inp.n_col].nunique() < MIN_CELLS:
                continue  # a D whose runs span fewer sizes: no drift to measure there
            label = _label(by, key, inp.d_col)
            check = transfer_check(
                part[inp.n_col].to_numpy(float),
                part[col].to_numpy(float),
                sign * part[metric].to_numpy(float),
                param_name=param,
            )
            checks.setdefault(param, {})[label] = check
            if check.exponent is not None:
                report.metric(f"transfer/{param}/{label}/exponent", check.exponent.value)
    if not checks:
        report.skipped["transfer"] = f"no D of this study has runs at {MIN_CELLS} or more model sizes"
        return
    results["transfer"] = {p: {g: c.to_dict() for g, c in by.items()} for p, by in checks.items()}
    report.draw("transfer", plot_transfer, checks, inp.out / "transfer.png", n_label=inp.n_col)


def plot_transfer(
    checks: dict[str, dict[str, TransferCheck]], path: str | Path, *, n_label: str
) -> Path | None:
    """One panel per hyperparameter: its optimum (with interval) over N for each group, the
    fitted drift through them, and the verdict in the legend; refused cells as open markers."""
    if not checks:
        return None
    fig = new_figure(6.5 * len(checks), 5)
    axes = np.atleast_1d(fig.subplots(1, len(checks)))
    for ax, (param, by_group) in zip(axes, checks.items()):
        for i, (group, check) in enumerate(by_group.items()):
            color = f"C{i}"
            kept = [o for o in check.optima if o.usable]
            if kept:
                n = [o.n for o in kept]
                errorbar(
                    ax,
                    n,
                    [o.optimum.value for o in kept],
                    yerr=([o.optimum.low for o in kept], [o.optimum.high for o in kept]),
                    fmt="o",
                    color=color,
                )
            for o in check.optima:
                if not o.usable:
                    ax.plot(
                        [o.n],
                        [o.param_max if o.at_edge else o.param_min],
                        marker="o",
                        mfc="none",
                        color=color,
                        ls="",
                    )
            e = check.exponent
            verdict = {True: "transfers", False: "drifts", None: "undecided"}[check.transfers]
            label = f"{group}: N^{e.value:+.2f} ({verdict})" if e is not None else f"{group}: {verdict}"
            if e is not None and len(kept) >= 2:
                n_line = np.array([min(o.n for o in kept), max(o.n for o in kept)])
                anchor = np.exp(np.mean([np.log(o.optimum.value) - e.value * np.log(o.n) for o in kept]))
                ax.plot(n_line, anchor * n_line**e.value, color=color, label=label)
            else:
                ax.plot([], [], color=color, label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"N: parameters ({n_label}), log scale")
        ax.set_ylabel(f"optimal {param} (90% interval), log scale")
        ax.set_title(f"Does the optimal {param} hold as N grows?")
        ax.legend(fontsize=8)
    return save(fig, path)
