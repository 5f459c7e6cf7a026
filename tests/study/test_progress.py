"""The live table on a real terminal: a cell whose answered trials are all
PRUNED once killed the driver, because the table asked Optuna for `best_value` ("No trials are
completed yet"). Only the line output (no terminal) was tested, so the table never ran in CI.

Both tests run their code under a pseudo-terminal (`pty`), so rich's console sees a real tty
and draws the table: the unit test renders `Progress` over real Optuna studies, the end-to-end
one runs `grokscale run` resuming a study whose only cell has a pruned trial and nothing else.
"""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from support import cli
from support.cli import GROKSCALE
from support.studies import tiny_study

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a Linux pseudo-terminal")

STUDY = tiny_study("progress", steps=300, sampler="random", num_cpus=1, pack={"mode": "off"})
TERMINAL_ENV = {"TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40", "RAY_AUTH_MODE": "disabled"}


def run_in_pty(argv: list[str], cwd: Path, timeout: float) -> tuple[int, str]:
    """Run argv with stdin, stdout and stderr on a new pseudo-terminal; (exit code, all it wrote)."""
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE")}
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={**env, **TERMINAL_ENV},
        start_new_session=True,
    )
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: every holder of the terminal's slave side has exited
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        else:
            proc.kill()
            raise AssertionError(f"{argv[:4]} ran past {timeout} s:\n{out.decode(errors='replace')[-3000:]}")
        return proc.wait(timeout=60), out.decode(errors="replace")
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def write_study(tmp_path: Path, **changes) -> Path:
    return cli.write_study(tmp_path, STUDY, **changes)


RENDER = """
import sys, time
import optuna
from optuna.trial import TrialState
from orchestrator.study import load_study
from orchestrator.study.grid import build_cells
from orchestrator.sweep.cell import CellSearch
from orchestrator.sweep.progress import Progress

study = load_study(sys.argv[1])
storage = optuna.storages.InMemoryStorage()
pruned_only, mixed = [CellSearch(study, cell, i, storage) for i, cell in enumerate(build_cells(study))]
for search in (pruned_only, mixed):  # as the phase rule leaves a cell whose first run it stopped
    search.optuna.tell(search.optuna.ask(), state=TrialState.PRUNED)
mixed.optuna.tell(mixed.optuna.ask(), 0.8125)
with Progress(study, [pruned_only, mixed], show=True) as progress:
    assert progress.live is not None, "rich did not see a terminal: the table path was not tested"
    for elapsed in (1.0, 2.0):
        progress.last_draw = 0.0  # draw now, not 0.25 s after the last draw
        progress.update([], elapsed)
        time.sleep(0.3)  # a refresh of the live display (4 per second) puts the table on screen
print("RENDERED")
"""


def test_table_on_a_terminal_with_a_pruned_only_cell(tmp_path):
    path = write_study(tmp_path)
    rc, out = run_in_pty([sys.executable, "-c", RENDER, str(path)], tmp_path, timeout=120)
    assert rc == 0 and "RENDERED" in out, out[-3000:]
    assert "No trials are completed yet" not in out
    # The table was drawn, with both cells: 2 of 4 trials answered, the mixed cell's best shown.
    assert "progress: 3/4 trials" in out, out[-3000:]
    assert "0.8125" in out
    # The pruned-only cell's row: 1 answered, none running or failed, and no best yet.
    assert re.search(r"D=0\.3 │[^\n]*│\s+1 │\s+0 │\s+0 │\s+│", out), out[-3000:]
    assert re.search(r"D=0\.5 │[^\n]*│\s+2 │\s+0 │\s+0 │\s+0\.8125 │", out), out[-3000:]


@pytest.mark.slow
def test_grokscale_run_on_a_terminal_resumes_a_pruned_only_cell(tmp_path):
    """The driver's own loop draws the table while a cell's only answered trial is PRUNED."""
    from orchestrator.study import load_study
    from orchestrator.study.grid import build_cells
    from orchestrator.sweep.search import cell_study, open_storage

    path = write_study(tmp_path, grid={**STUDY["grid"], "d": [0.3]})
    study = load_study(path, [f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"])
    (cell,) = build_cells(study)
    journal = tmp_path / "runs" / "progress" / "optuna.journal"
    journal.parent.mkdir(parents=True)
    ostudy = cell_study(study, cell, 0, open_storage(str(journal)))
    ostudy.tell(
        ostudy.ask(), state=optuna.trial.TrialState.PRUNED
    )  # trial 0: stopped, as the phase rule does
    rc, out = run_in_pty(
        [
            *GROKSCALE,
            "run",
            str(path),
            "--no-report",
            "--tracking-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}",
        ],
        tmp_path,
        timeout=400,
    )
    assert "No trials are completed yet" not in out, out[-3000:]
    assert rc == 0, out[-3000:]
    assert "progress: 1/2 trials" in out, out[-3000:]  # the table, drawn with only the pruned trial answered
    trials = optuna.load_study(study_name=ostudy.study_name, storage=open_storage(str(journal))).get_trials()
    assert [t.state.name for t in trials] == ["PRUNED", "COMPLETE"]
