"""`grokscale status` read from a real Optuna journal: every cell key and best value whole, piped
to a file (a CI log, `| grep`) and on a narrow terminal alike; nothing cut to an ellipsis, no
brackets of a cell key eaten as rich markup."""

from __future__ import annotations

import io
import json
from pathlib import Path

import optuna
import yaml
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from orchestrator.store import names
from orchestrator.store.status import print_status, status_table, study_status
from orchestrator.study import load_study
from orchestrator.study.grid import build_cells
from orchestrator.sweep.search import open_storage

from support.cli import grokscale
from support.studies import tiny_study

# Long keys and values, as a real study has them: a whole transformer shape per N entry.
SHAPES = [{"d_model": 16, "n_layer": 1, "n_head": 4}, {"d_model": 32, "n_layer": 2, "n_head": 4}]
WD = FloatDistribution(1e-3, 10.0, log=True)


def _study(tmp_path: Path):
    """A 2 x 2 study whose journal holds, per cell, a completed, a pruned, a running and a failed
    trial; returns (path, study, cells, the best weight decay of each cell)."""
    data = tiny_study("status", grid={"n": SHAPES, "d": [0.3, 0.5], "seeds": [0]})
    data["workdir"] = str(tmp_path / "runs")
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    study = load_study(str(path), [])
    cells = build_cells(study)
    storage = open_storage(study.storage_url)
    best = {}
    for i, cell in enumerate(cells):
        ostudy = optuna.create_study(
            study_name=names.optuna_study_name(study.name, cell.key), storage=storage, direction="maximize"
        )
        best[cell.key] = 0.123456789012345 * (i + 1)
        ostudy.add_trial(
            create_trial(
                params={"train.weight_decay": best[cell.key]},
                distributions={"train.weight_decay": WD},
                value=0.5 + i / 10,
            )
        )
        ostudy.add_trial(
            create_trial(
                params={"train.weight_decay": 9.0},
                distributions={"train.weight_decay": WD},
                state=TrialState.PRUNED,
            )
        )
        ostudy.add_trial(create_trial(state=TrialState.FAIL))
        running = ostudy.ask()
        running.set_user_attr(names.trial_run_id(0), "an-mlflow-run-id")
    return path, study, cells, best


def _rows_of(text: str) -> list[list[str]]:
    """The body lines of a rich table, split into their cells."""
    return [[c.strip() for c in line.split("│")[1:-1]] for line in text.splitlines() if line.startswith("│")]


def test_piped_status_prints_every_cell_whole_on_one_line(tmp_path):
    path, study, cells, best = _study(tmp_path)
    rows = study_status(study, cells)
    assert [(r["complete"], r["pruned"], r["running"], r["failed"]) for r in rows] == [(1, 1, 1, 1)] * 4
    out = io.StringIO()  # not a terminal: rich alone would assume 80 columns and cut
    print_status(study, rows, file=out)
    text = out.getvalue()
    assert "…" not in text
    body = _rows_of(text)
    assert [r[0] for r in body] == [c.key for c in cells]  # one line a cell, its key whole, brackets kept
    assert max(len(line) for line in text.splitlines()) > 80  # wider than rich's default: not wrapped
    for r, cell in zip(body, cells):
        assert json.loads(r[-1]) == {"train.weight_decay": best[cell.key]}
        assert r[1] == f"{cell.n(study.grid.n_convention):,}" and r[2] == f"{cell.n_train:,}"

    # The real command, piped as a script or CI log reads it.
    cli = grokscale("status", path, cwd=tmp_path)
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert "…" not in cli.stdout and [r[0] for r in _rows_of(cli.stdout)] == [c.key for c in cells]


def test_a_narrow_terminal_folds_long_cells_instead_of_cutting_them(tmp_path):
    from rich.console import Console

    _, study, cells, best = _study(tmp_path)
    out = io.StringIO()
    Console(file=out, width=60, force_terminal=True, color_system=None).print(
        status_table(study, study_status(study, cells))
    )
    text = out.getvalue()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 60
    # Each column's pieces, read down the table, spell every value whole.
    body = _rows_of(text)
    assert "".join(r[0] for r in body) == "".join(c.key for c in cells)
    assert "".join(r[-1] for r in body).replace(" ", "") == "".join(
        json.dumps({"train.weight_decay": best[c.key]}).replace(" ", "") for c in cells
    )


def test_a_study_of_its_own_trainer_shows_its_shapes_and_d_values(tmp_path, monkeypatch):
    """Its N is what its runs report (blank until then); its D is the grid's value as given."""
    from support.cli import REPO

    example = REPO / "examples" / "own_trainer"
    monkeypatch.syspath_prepend(str(example))  # as PYTHONPATH gives it to `grokscale status`
    data = yaml.safe_load((example / "study.yaml").read_text())
    data["workdir"] = str(tmp_path / "runs")
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    study = load_study(str(path), [])
    cells = build_cells(study)
    out = io.StringIO()
    print_status(study, study_status(study, cells), file=out)
    body = _rows_of(out.getvalue())
    assert [r[:3] for r in body] == [
        ["N[width=32]_D=0.3", "", "0.3"],
        ["N[width=32]_D=0.6", "", "0.6"],
        ["N[width=128]_D=0.3", "", "0.3"],
        ["N[width=128]_D=0.6", "", "0.6"],
    ]
    assert not (tmp_path / "runs").exists()  # status never creates a storage
