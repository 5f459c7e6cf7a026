"""Checks that need the outside world, before anything starts; they create nothing."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from pydantic import ValidationError

from orchestrator.study.errors import redact_url
from orchestrator.study.grid import Cell
from orchestrator.study.schema import Study
from trainers.corpus import CorpusTask, check_source, infer_format

TRACKING_SCHEMES = ("sqlite", "file", "http", "https", "postgresql", "mysql", "mssql", "databricks")
STORAGE_SCHEMES = (
    "postgresql",
    "postgresql+psycopg2",
    "postgresql+psycopg",
    "mysql",
    "mysql+pymysql",
    "sqlite",
)
DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "ray": 10001}


def unreachable(host: str, port: int, timeout_s: float = 3.0) -> str | None:
    """Why nothing answers a TCP connection to host:port; None if something does."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except OSError as err:
        return err.strerror or str(err)


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


# File systems where SQLite's write-ahead log corrupts a database: its readers and writer share an
# index in memory (the -shm file, mmap'ed), which holds on one machine only ("WAL does not work
# over a network filesystem", https://sqlite.org/wal.html). fuse.* is sshfs, s3fs, gcsfuse, ...
NETWORK_FILESYSTEMS = (
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "ncpfs",
    "afs",
    "9p",
    "lustre",
    "gpfs",
    "beegfs",
    "ceph",
    "glusterfs",
    "ocfs2",
    "gfs2",
    "fuse",
)
MOUNTS = Path("/proc/mounts")


def mount_table(text: str) -> list[tuple[str, str]]:
    """(mount point, file system type) of each line of /proc/mounts; octal escapes (a space is
    \\040) decoded."""
    table = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3:
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[1])
            table.append((point, fields[2]))
    return table


def filesystem_type(path: str, mounts: list[tuple[str, str]]) -> str | None:
    """The type of the file system `path` (absolute, symlinks resolved) lies on: the longest mount
    point that holds it, the last mounted where two are the same; None if none does."""
    best, fstype = -1, None
    for point, kind in mounts:
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= best:
            best, fstype = len(point), kind
    return fstype


def is_network_filesystem(fstype: str | None) -> bool:
    return fstype is not None and (fstype in NETWORK_FILESYSTEMS or fstype.startswith("fuse."))


def network_filesystem(path: Path) -> str | None:
    """The type of the network file system `path` (a file that may not exist yet) is on; None on a
    local one, or where /proc/mounts cannot be read (not Linux)."""
    try:
        mounts = mount_table(MOUNTS.read_text())
    except OSError:
        return None
    fstype = filesystem_type(os.path.realpath(path.expanduser()), mounts)
    return fstype if is_network_filesystem(fstype) else None


def rdb_url(url: str) -> str:
    """A bare postgresql:// means psycopg2 to SQLAlchemy 2.0 but psycopg (3) to 2.1: when only
    psycopg2 is installed, name it, so the URL works with either SQLAlchemy."""
    if (
        url.startswith("postgresql://")
        and not importlib.util.find_spec("psycopg")
        and importlib.util.find_spec("psycopg2")
    ):
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


def sqlite_path(uri: str) -> str | None:
    """The database file of a sqlite:/// URL, its query (`?timeout=`) left out; None in memory."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(uri).database or None
    except ArgumentError:  # not a URL SQLAlchemy reads: the text after the scheme, as MLflow would
        return uri.removeprefix("sqlite:///") or None


def _tracking(uri: str) -> list[str]:
    scheme = urlparse(uri).scheme or "file"
    if scheme not in TRACKING_SCHEMES:
        return [
            f"tracking.uri: unknown scheme {scheme!r} in {redact_url(uri)!r}; "
            f"allowed: {', '.join(TRACKING_SCHEMES)}"
        ]
    if scheme == "sqlite":
        path = sqlite_path(uri)
        if path is None:
            return []
        if why := creatable(Path(path)):
            return [f"tracking.uri: cannot write the MLflow store {path}: {why}"]
        if fstype := network_filesystem(Path(path)):
            return [
                f"tracking.uri: the MLflow store {path} is on a network file system ({fstype}), where "
                f"SQLite's write-ahead log corrupts the database; run `mlflow server --backend-store-uri "
                f"sqlite:///{path}` on one machine and set tracking.uri: http://<that machine>:5000, or keep "
                f"the store on a local disk"
            ]
        return []
    if scheme == "file":
        why = creatable(Path(urlparse(uri).path or uri))
        return [f"tracking.uri: cannot write {redact_url(uri)}: {why}"] if why else []
    if scheme in ("http", "https"):
        url = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                response.read(1)
        except urllib.error.HTTPError as err:
            if err.code >= 500 or err.code == 404:
                return [f"tracking.uri: {redact_url(uri)} answered HTTP {err.code}; is it an MLflow server?"]
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            return [
                f"tracking.uri: cannot reach the MLflow server at {redact_url(uri)} ({reason}); "
                f"start it or fix the URI"
            ]
    return []


def _storage(url: str) -> list[str]:
    if "://" not in url:
        why = creatable(Path(url))
        return [f"storage: cannot write the Optuna journal {url}: {why}"] if why else []
    scheme = url.split("://", 1)[0]
    if scheme not in STORAGE_SCHEMES:
        return [
            f"storage: unknown scheme {scheme!r}; allowed: a journal file path, or "
            f"{', '.join(STORAGE_SCHEMES)} URLs"
        ]
    if scheme == "sqlite":
        path = sqlite_path(url)
        why = creatable(Path(path)) if path else None
        return [f"storage: cannot write the Optuna SQLite file {path}: {why}"] if why else []
    parsed = urlparse(url)
    try:
        host, port = parsed.hostname, parsed.port or DEFAULT_PORTS[scheme.split("+")[0]]
    except ValueError as err:  # a port that is not a number
        return [f"storage: {redact_url(url)} is not a valid URL ({err})"]
    if host and (why := unreachable(host, port)):
        return [f"storage: cannot reach the database at {redact_url(url)} ({why}); start it or fix the URL"]
    return _database(url)


def _database(url: str) -> list[str]:
    return _query(url, "storage", "select 1")[0]


def _query(url: str, field: str, sql: str) -> tuple[list[str], list[tuple]]:
    """Log in to the database (no table is created) and read `sql`: a missing driver, a wrong
    database name or a refused login fails here, with the reason, instead of as a traceback once
    Ray is up. The problems, and the rows read."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import SQLAlchemyError

    try:
        engine = create_engine(rdb_url(url))
    except (ImportError, SQLAlchemyError) as err:  # the driver of the URL's scheme is not installed
        return [
            f"{field}: cannot use {redact_url(url)}: {type(err).__name__}: {err}; "
            f"install its driver (e.g. pip install psycopg2-binary)"
        ], []
    try:
        with engine.connect() as conn:
            try:
                rows = [tuple(r) for r in conn.execute(text(sql))]
            except SQLAlchemyError as err:
                return [f"{field}: logged in to {redact_url(url)} but cannot read it: {_reason(err)}"], []
    except SQLAlchemyError as err:
        return [f"{field}: cannot log in to {redact_url(url)}: {_reason(err)}"], []
    finally:
        engine.dispose()
    return [], rows


def _reason(err: Exception) -> str:
    return redact_url(str(getattr(err, "orig", err)).strip().splitlines()[0][:300])


def _tracking_database(uri: str, database: str | None) -> list[str]:
    """tracking.database must be the tracking server's own backend store: reachable, with MLflow's
    tables, and holding the server's experiments (the Default experiment, id 0, created at the
    same millisecond in both), so that no run is ever written where the server cannot see it."""
    if database is None:
        return []
    field = "tracking.database"
    if database.startswith("sqlite:///") and not Path(database.removeprefix("sqlite:///")).is_file():
        return [
            f"{field}: no MLflow store at {database.removeprefix('sqlite:///')}; give the file the "
            f"tracking server was started with (--backend-store-uri)"
        ]
    problems, rows = _query(
        database, field, "SELECT name, creation_time FROM experiments WHERE experiment_id = 0"
    )
    if problems:
        return problems
    mine = rows[0] if rows else None
    url = uri.rstrip("/") + "/api/2.0/mlflow/experiments/get?experiment_id=0"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            theirs = json.load(response)["experiment"]
    except (urllib.error.URLError, OSError, ValueError, KeyError):
        return []  # _tracking reports a server it cannot reach; one without experiment 0 is not checked
    if mine is None or (mine[0], int(mine[1] or 0)) != (
        theirs.get("name"),
        int(theirs.get("creation_time", 0)),
    ):
        return [
            f"{field}: {redact_url(database)} is not the backend store of the tracking server at "
            f"{redact_url(uri)}: their Default experiments differ (server: {theirs.get('name')!r} created "
            f"{theirs.get('creation_time')}, database: {mine}); give the URL the server was started with "
            f"(--backend-store-uri), or leave tracking.database out"
        ]
    return []


def _ray(address: str | None) -> list[str]:
    """A cluster to join must answer before anything is created (a local Ray needs no check)."""
    env = os.environ.get("RAY_ADDRESS") or None  # set by `ray job submit`; ray.init joins it
    address, source = (address, "ray.address") if address is not None else (env, "RAY_ADDRESS")
    if address in (None, "local"):
        return []
    if address == "auto":
        if env not in (None, "auto", "local"):
            address, source = env, "RAY_ADDRESS"
        else:
            try:  # where the last `ray start` on this machine wrote its address
                from ray._private.utils import read_ray_address

                address, source = read_ray_address(), "the last `ray start` on this machine"
            except Exception:  # noqa: BLE001 - Ray's layout changed: let ray.init report it
                return []
            if address is None:
                return [
                    "ray.address: 'auto' found no running Ray cluster (no RAY_ADDRESS, no `ray start` on "
                    "this machine); start one with `ray start --head`, or leave ray.address out for a "
                    "local Ray"
                ]
    parsed = urlparse(address if "://" in address else f"ray://{address}")
    try:
        host, port = parsed.hostname, parsed.port or DEFAULT_PORTS.get(parsed.scheme, 6379)
    except ValueError as err:
        return [f"ray.address: {address!r} is not host:port or ray://host:port ({err})"]
    if not host:
        return [f"ray.address: {address!r} is not host:port, ray://host:port or 'auto'"]
    if why := unreachable(host, port):
        return [
            f"ray.address: cannot reach the Ray cluster at {redact_url(address)} (from {source}: {why}); "
            f"start it, or leave ray.address out for a local Ray"
        ]
    return []


def corpus_problems(study: Study) -> list[str]:
    """A corpus task's source reads as configured (trainers.corpus.check_source: it exists, is
    readable, is the format it seems, has the column asked for) and its cache can be made. Run
    before the grid is built: building it tokenizes the corpus."""
    if study.trainer is not None or study.task.get("name") != "corpus":
        return []
    try:
        task = CorpusTask.model_validate(study.task)
    except ValidationError:
        return []  # check_study reported it
    problems = [f"task.{p}" for p in check_source(task)]
    fmt = infer_format(task.path) if task.format == "auto" else task.format
    if not problems and fmt != "tokens" and task.cache_dir and (why := creatable(Path(task.cache_dir))):
        problems.append(f"task.cache_dir: cannot create the corpus cache {task.cache_dir}: {why}")
    return problems


def check_preflight(study: Study, cells: list[Cell], cluster: dict | None = None) -> list[str]:
    problems = corpus_problems(study)
    problems += _tracking(study.tracking.uri) + _storage(study.storage_url) + _ray(study.ray.address)
    if not problems:  # the server answers: is the database its own?
        problems += _tracking_database(study.tracking.uri, study.tracking.database)
    for field, path in (("workdir", study.workdir_path), ("checkpoints", study.checkpoint_path)):
        if path.exists() and not path.is_dir():
            problems.append(f"{field}: {path} is a file, not a directory")
        elif why := creatable(path):
            problems.append(f"{field}: cannot create {path}: {why}")
    if cluster is None and study.ray.local():
        n_cpus = study.ray.num_cpus or os.cpu_count() or 1
        cluster = {"CPU": float(n_cpus), "GPU": 0.0}  # a local Ray sees no GPU on a CPU machine
        try:
            import torch

            cluster["GPU"] = float(torch.cuda.device_count())
        except Exception:  # noqa: BLE001 - no torch CUDA: no GPU
            pass
    if cluster is not None:
        rules = [("resources", study.resources.placement())]
        rules += [(f"resources.by_n[{i}]", r.placement()) for i, r in enumerate(study.resources.by_n)]
        for where, placement in rules:
            cpus, gpus = placement.cpus * placement.workers, placement.gpus
            if cpus > cluster.get("CPU", 0):
                problems.append(
                    f"{where}.cpus: {cpus:g} CPUs per trial (all its workers), but the cluster has "
                    f"{cluster.get('CPU', 0):g}; ask for at most that"
                )
            if gpus > cluster.get("GPU", 0):
                problems.append(
                    f"{where}.gpus: {gpus:g} GPUs per trial, but the cluster has "
                    f"{cluster.get('GPU', 0):g}; set it to 0 or point ray.address at a GPU cluster"
                )
    return problems
