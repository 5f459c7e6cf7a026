"""Run the real command line, `python -m orchestrator.cli`, as a user would, and write the
study files it reads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
# This interpreter, not the `grokscale` script on PATH: the venv under test, wherever it is.
GROKSCALE = [sys.executable, "-m", "orchestrator.cli"]


def grokscale(
    *args: object, cwd: Path = REPO, timeout: float = 300, env: dict | None = None
) -> subprocess.CompletedProcess:
    """`grokscale ARGS...` in `cwd`, its output captured as text; never raises on its exit code."""
    return subprocess.run(
        [*GROKSCALE, *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        env=env,
    )


def write_study(where: Path, study: dict, **updates) -> Path:
    """`study` with top-level `updates` (whole sections replaced) as where/study.yaml."""
    path = where / "study.yaml"
    path.write_text(yaml.safe_dump({**study, **updates}))
    return path


def merged(study: dict, **sections) -> dict:
    """`study` with each given section merged into its own (when both are dicts) or replacing it."""
    return {
        **study,
        **{k: {**study[k], **v} if isinstance(study.get(k), dict) else v for k, v in sections.items()},
    }


def sqlite_uri(where: Path) -> str:
    """The MLflow store a study in `where` uses by default."""
    return f"sqlite:///{where / 'mlflow.db'}"


def listing(root: Path) -> list[str]:
    """Every path under `root`, relative and sorted: to show that a command wrote nothing."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))
