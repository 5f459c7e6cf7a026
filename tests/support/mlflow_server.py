"""A real `mlflow server` on 127.0.0.1, which a test can kill and start again on the same port
and store; a benchmark gives it a PostgreSQL backend and more workers."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from support.ports import free_port
from support.processes import kill_tree

BIN = Path(sys.executable).parent


class MlflowServer:
    def __init__(self, root: Path, port: int | None = None, backend: str | None = None, workers: int = 1):
        self.root, self.port, self.workers, self.proc = root, port or free_port(), workers, None
        self.backend = backend or f"sqlite:///{root / 'server.db'}"

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 300) -> None:  # generous: a loaded 2-core machine
        with open(self.root / "server.log", "ab") as out:  # the child keeps its own copy
            self.proc = subprocess.Popen(
                [
                    BIN / "mlflow",
                    "server",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--workers",
                    str(self.workers),
                    "--backend-store-uri",
                    self.backend,
                    "--artifacts-destination",
                    str(self.root / "artifacts"),
                ],
                cwd=self.root,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # MLflow 3's job runner (seven huey consumers, ~1.3 GB and ~20 CPU-s to start) runs
                # GenAI jobs grokscale never asks for; on 2 cores it starves everything else.
                env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError("mlflow server exited: " + (self.root / "server.log").read_text()[-2000:])
            time.sleep(0.3)
        raise RuntimeError(f"mlflow server not up after {timeout} s")

    def kill(self) -> None:
        """SIGKILL the server and its workers: an outage as a crash makes it."""
        if self.proc is not None and self.proc.poll() is None:
            kill_tree(self.proc.pid)
            self.proc.wait()

    def stop(self) -> None:
        """A graceful stop, then SIGKILL for the workers that outlive it (uvicorn's do)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
