"""The releases the fast paths were tested with (orchestrator/store/versions.py): pyproject.toml
allows exactly those; outside them a study takes the public APIs (MlflowClient's writes, Optuna's
RDBStorage), saying so once; a journal study never loads Optuna's private models at all. Real
studies through the real driver on the benchmark's simulated cluster."""

from __future__ import annotations

import logging
import subprocess
import sys
import tomllib
from pathlib import Path

import optuna
from mlflow.tracking import MlflowClient
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from orchestrator.store import versions
from orchestrator.store.names import TAG_STATUS
from orchestrator.store.writes import ClientWrites
from orchestrator.study.grid import build_cells
from orchestrator.sweep.driver import Driver

from support.simulated import cluster, small_study

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"


def requirements() -> dict[str, SpecifierSet]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {(r := Requirement(line)).name: r.specifier for line in project["dependencies"]}


def test_pyproject_allows_exactly_the_tested_releases():
    found = requirements()
    for package, (low, high) in versions.TESTED.items():
        assert found[package] == SpecifierSet(f">={low},<{high}"), package
    assert any(s.operator == "<" for s in found["ray"]), "ray needs an upper bound too"
    for package in versions.TESTED:  # what is installed here is a tested release
        assert versions.in_range(
            package, optuna.__version__ if package == "optuna" else __import__(package).__version__
        )
    assert versions.in_range("optuna", "4.0.0") and versions.in_range("optuna", "5.1.0")
    assert not versions.in_range("optuna", "5.2.0") and not versions.in_range("optuna", "3.6.1")
    assert not versions.in_range("mlflow", "3.18.0rc0") and versions.in_range("mlflow", "2.16.2")


JOURNAL_STUDY = f"""
import sys
from pathlib import Path
sys.path.insert(0, {str(TESTS)!r})
from support.simulated import cluster, small_study
from orchestrator.study.grid import build_cells
from orchestrator.sweep.driver import Driver

study = small_study(Path(sys.argv[1]), "journal", trials=1)
assert not study.storage  # the default: an Optuna journal file
stats = Driver(study, build_cells(study), show=False, launcher=cluster(1, 0.2)).run()
assert stats.completed == 1, stats
print("LOADED", [m for m in ("optuna.storages._rdb.models", "orchestrator.store.held_storage")
                 if m in sys.modules])
"""


def test_a_journal_study_never_loads_optunas_private_models(tmp_path):
    """`optuna.storages._rdb` itself is Optuna's (its public RDBStorage lives there, and `import
    optuna` loads it); its ORM models are what held_storage.py reaches for, and only it."""
    out = subprocess.run(
        [sys.executable, "-c", JOURNAL_STUDY, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "LOADED []" in out.stdout, out.stdout[-2000:]


def test_on_untested_releases_a_study_takes_the_public_apis_and_says_so_once(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="orchestrator.store.versions")
    monkeypatch.setattr(versions, "TESTED", {"mlflow": ("0.1", "0.2"), "optuna": ("0.1", "0.2")})
    monkeypatch.setattr(versions, "_told", set())
    study = small_study(tmp_path, "untested", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    driver = Driver(study, build_cells(study), show=False, launcher=cluster(2, 0.3))
    stats = driver.run()
    assert stats.completed == 3 and stats.failed == 0
    assert type(driver.tracker.writes) is ClientWrites  # MlflowClient's writes, not plain SQL
    assert isinstance(driver.searches[0].storage, optuna.storages.RDBStorage)  # not held in memory
    notices = [
        r.message for r in caplog.records if "outside the releases grokscale was tested with" in r.message
    ]
    assert len(notices) == 2 and all("\n" not in n for n in notices), notices
    assert any(n.startswith(f"optuna {optuna.__version__} ") for n in notices)
    client = MlflowClient(study.tracking.uri)
    runs = client.search_runs(
        [client.get_experiment_by_name("untested").experiment_id], f"tags.`{TAG_STATUS}` = 'completed'"
    )
    assert len(runs) == 3
