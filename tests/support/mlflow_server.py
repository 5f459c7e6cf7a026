"""A real `mlflow server` on 127.0.0.1 with a SQLite store, which a test can kill and start
again on the same port and store."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from support.processes import kill_tree

BIN = Path(sys.executable).parent


class MlflowServer:
    def __init__(self, root: Path, port: int):
        self.root, self.port, self.proc = root, port, None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 300) -> None:  # generous: a loaded 2-core machine
        with open(self.root / "server.log", "ab") as out:  # the child keeps its own copy
            self.proc = subprocess.Popen(
                [BIN / "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
                 "--backend-store-uri", f"sqlite:///{self.root / 'server.db'}",
                 "--artifacts-destination", str(self.root / "artifacts")],
                cwd=self.root, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            assert self.proc.poll() is None, (self.root / "server.log").read_text()[-2000:]
            time.sleep(0.3)
        raise AssertionError(f"mlflow server not up after {timeout} s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            kill_tree(self.proc.pid)
            self.proc.wait()
