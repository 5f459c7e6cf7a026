"""Checks that need the outside world, before anything starts; they create nothing."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from orchestrator.config import Study
from orchestrator.grid import Cell

TRACKING_SCHEMES = ("sqlite", "file", "http", "https", "postgresql", "mysql", "mssql", "databricks")
STORAGE_SCHEMES = ("postgresql", "postgresql+psycopg2", "mysql", "mysql+pymysql", "sqlite")


def creatable(path: Path) -> str | None:
    """Why `path` (a directory to be made, or a file to be written) could not be; None if it can."""
    path = path.expanduser().absolute()
    if path.exists():
        return None if os.access(path, os.W_OK) else "exists but is not writable"
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                return f"{parent} is a file, not a directory"
            if not os.access(parent, os.W_OK | os.X_OK):
                return f"{parent} is not writable"
            if str(parent).startswith(("/proc", "/sys")):
                return f"{parent} is a kernel file system"
            return None
    return "no existing parent directory"


def _tracking(uri: str) -> list[str]:
    scheme = urlparse(uri).scheme or "file"
    if scheme not in TRACKING_SCHEMES:
        return [f"tracking.uri: unknown scheme {scheme!r} in {uri!r}; allowed: {', '.join(TRACKING_SCHEMES)}"]
    if scheme == "sqlite":
        path = uri.removeprefix("sqlite:///")
        why = creatable(Path(path))
        return [f"tracking.uri: cannot write the MLflow store {path}: {why}"] if why else []
    if scheme == "file":
        why = creatable(Path(urlparse(uri).path or uri))
        return [f"tracking.uri: cannot write {uri}: {why}"] if why else []
    if scheme in ("http", "https"):
        url = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                response.read(1)
        except urllib.error.HTTPError as err:
            if err.code >= 500 or err.code == 404:
                return [f"tracking.uri: {uri} answered HTTP {err.code}; is it an MLflow server?"]
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            return [f"tracking.uri: cannot reach the MLflow server at {uri} ({reason}); start it or fix the URI"]
    return []


def check_preflight(study: Study, cells: list[Cell], cluster: dict | None = None) -> list[str]:
    problems = _tracking(study.tracking.uri)
    url = study.storage_url
    if "://" in url:
        scheme = url.split("://", 1)[0]
        if scheme not in STORAGE_SCHEMES:
            problems.append(f"storage: unknown scheme {scheme!r}; allowed: a journal file path, or "
                            f"{', '.join(STORAGE_SCHEMES)} URLs")
    elif why := creatable(Path(url)):
        problems.append(f"storage: cannot write the Optuna journal {url}: {why}")
    for field, path in (("workdir", study.workdir_path), ("checkpoints", study.checkpoint_path)):
        if path.exists() and not path.is_dir():
            problems.append(f"{field}: {path} is a file, not a directory")
        elif why := creatable(path):
            problems.append(f"{field}: cannot create {path}: {why}")
    if cluster is None and study.ray.address is None and not os.environ.get("RAY_ADDRESS"):
        n_cpus = study.ray.num_cpus or os.cpu_count() or 1
        cluster = {"CPU": float(n_cpus), "GPU": 0.0}  # a local Ray sees no GPU on a CPU machine
        try:
            import torch

            cluster["GPU"] = float(torch.cuda.device_count())
        except Exception:  # noqa: BLE001 - no torch CUDA: no GPU
            pass
    if cluster is not None:
        rules = [("resources", study.resources.cpus, study.resources.gpus)]
        rules += [(f"resources.by_n[{i}]", r.cpus, r.gpus) for i, r in enumerate(study.resources.by_n)]
        for where, cpus, gpus in rules:
            if cpus > cluster.get("CPU", 0):
                problems.append(f"{where}.cpus: {cpus:g} CPUs per trial, but the cluster has "
                                f"{cluster.get('CPU', 0):g}; ask for at most that")
            if gpus > cluster.get("GPU", 0):
                problems.append(f"{where}.gpus: {gpus:g} GPUs per trial, but the cluster has "
                                f"{cluster.get('GPU', 0):g}; set it to 0 or point ray.address at a GPU cluster")
    return problems
