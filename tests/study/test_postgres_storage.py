"""A team's PostgreSQL as the Optuna storage, on a real throwaway PostgreSQL server.

By default a study's trials go to a journal file next to the study (runs/<name>/optuna.journal);
`storage: postgresql://...` puts them in a shared database instead. The server is a fresh cluster
made with the PostgreSQL 15 binaries (initdb, pg_ctl) and run as the `postgres` user, since the
server refuses to run as root; without those binaries the test is skipped.
"""

from __future__ import annotations

import json

import optuna
import pytest
from optuna.trial import TrialState

from orchestrator.store.hold import HOLD_STUDY_PREFIX
from orchestrator.sweep.search import open_storage

from support.cli import grokscale, listing, write_study
from support.ports import free_port
from support.postgres import started_or_skip
from support.studies import tiny_study

# TINY_STUDY of test_orchestrator.py, two cells and 100 steps: four runs of about a second.
STUDY = tiny_study("tiny")


def cell_summaries(storage) -> list:
    """The study's Optuna studies, one per cell (not the driver's hold: store/hold.py)."""
    return [
        s
        for s in optuna.get_all_study_summaries(storage=storage)
        if not s.study_name.startswith(HOLD_STUDY_PREFIX)
    ]


@pytest.fixture
def postgres():
    with started_or_skip() as server:
        yield server


@pytest.mark.slow  # three CLI runs, two of them start a local Ray: 45 s to 2 min
def test_postgresql_storage_runs_resumes_and_fails_cleanly_when_down(tmp_path, postgres):
    path = write_study(tmp_path, STUDY)
    run = ["run", str(path), "--quiet", "--json", "--no-report", "--set", f"storage={postgres.url('optuna')}"]

    out = grokscale(*run, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:] + postgres.log()
    counts = json.loads(out.stdout.strip().splitlines()[-1])
    assert counts["completed"] == 4 and counts["failed"] == 0

    # Every trial is in PostgreSQL, one study per cell, and no journal file was written.
    storage = open_storage(postgres.url("optuna"))
    summaries = cell_summaries(storage)
    assert sorted(s.study_name for s in summaries) == ["tiny/N[d_model=16]_D=0.3", "tiny/N[d_model=16]_D=0.5"]
    for s in summaries:
        trials = optuna.load_study(study_name=s.study_name, storage=storage).get_trials()
        assert [t.state for t in trials] == [TrialState.COMPLETE] * 2, s.study_name
        assert all(0 <= t.value <= 1 and "train.weight_decay" in t.params for t in trials)
    assert not (tmp_path / "runs" / "tiny" / "optuna.journal").exists()
    assert not [p for p in listing(tmp_path) if "journal" in p]

    status = grokscale(
        "status", str(path), "--json", "--set", f"storage={postgres.url('optuna')}", cwd=tmp_path
    )
    assert status.returncode == 0, status.stderr[-2000:]
    assert [r["complete"] for r in json.loads(status.stdout)] == [2, 2]

    # Run again: it resumes from PostgreSQL, trains nothing and duplicates nothing.
    before = {s.study_name: s.n_trials for s in cell_summaries(storage)}
    again = grokscale(*run, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout.strip().splitlines()[-1])["completed"] == 0
    assert {s.study_name: s.n_trials for s in cell_summaries(storage)} == before
    assert not [p for p in listing(tmp_path) if "journal" in p]

    # A database that does not exist: refused at login, before anything starts.
    files = listing(tmp_path)
    wrong = grokscale(
        "run",
        str(path),
        "--quiet",
        "--no-report",
        "--set",
        f"storage={postgres.url('optuna').rsplit('/', 1)[0]}/no_such_db",
        cwd=tmp_path,
        timeout=120,
    )
    assert wrong.returncode == 2, wrong.stdout[-2000:] + wrong.stderr[-2000:]
    assert "storage: cannot log in" in wrong.stderr and "no_such_db" in wrong.stderr
    assert listing(tmp_path) == files

    # The team's server goes down: the run is refused before anything starts, naming `storage`.
    postgres.stop()
    down = grokscale(*run, cwd=tmp_path, timeout=120)
    assert down.returncode == 2, down.stdout[-2000:] + down.stderr[-2000:]
    assert "storage" in down.stderr and "cannot reach the database" in down.stderr
    assert f"127.0.0.1:{postgres.port}" in down.stderr and "nothing was started" in down.stderr
    assert listing(tmp_path) == files


def test_unreachable_postgresql_storage_is_refused_and_creates_nothing(tmp_path):
    """Needs no PostgreSQL: a closed port. The password in the URL is never printed."""
    path = write_study(tmp_path, STUDY)
    url = f"postgresql://team:s3cret-pw@127.0.0.1:{free_port()}/optuna"
    out = grokscale(
        "run", str(path), "--quiet", "--no-report", "--set", f"storage={url}", cwd=tmp_path, timeout=120
    )
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert "error: storage: cannot reach the database" in out.stderr
    assert "s3cret-pw" not in out.stdout + out.stderr
    assert listing(tmp_path) == ["study.yaml"]
