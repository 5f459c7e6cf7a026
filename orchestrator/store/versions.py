"""The releases of MLflow and Optuna whose internals grokscale's fast paths were tested against.

Two fast paths reach past a library's public API: sql_writes.py writes MLflow's tables itself
(after checking their columns), held_storage.py writes Optuna's tables through its private models
(`optuna.storages._rdb.models`). Each is used only when the installed release is in TESTED
(`fast_path`); outside it the driver takes the public API (MlflowClient's writes, Optuna's
RDBStorage) and says so in one line, once. TESTED is the range pyproject.toml allows
(tests/unit/test_versions.py holds them equal), and `make test-compat` runs the fast paths'
tests, which compare them with the public APIs, on its lowest and newest releases.
"""

from __future__ import annotations

import importlib.metadata
import logging

from packaging.version import InvalidVersion, Version

log = logging.getLogger(__name__)

# package -> (lowest tested, first untested): the bounds of its requirement in pyproject.toml
TESTED = {"mlflow": ("2.16", "3.18"), "optuna": ("4.0", "5.2")}
WHAT = {
    "mlflow": "runs go through MlflowClient instead of plain SQL into its tables",
    "optuna": "trials go through Optuna's RDBStorage instead of held in memory",
}
_told: set[str] = set()


def in_range(package: str, version: str) -> bool:
    low, high = TESTED[package]
    try:
        v = Version(version)
    except InvalidVersion:
        return False
    return Version(low) <= Version(v.base_version) < Version(high)


def fast_path(package: str) -> bool:
    """Whether the installed `package` is a release the fast path was tested on; the first time
    it is not, a one-line notice."""
    try:
        version = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    if in_range(package, version):
        return True
    if package not in _told:
        _told.add(package)
        low, high = TESTED[package]
        log.warning(
            "%s %s is outside the releases grokscale was tested with (>=%s,<%s): %s",
            package,
            version,
            low,
            high,
            WHAT[package],
        )
    return False
