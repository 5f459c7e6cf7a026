"""Every study in tests/unit/broken_configs is refused by `grokscale run` before anything starts.

Each file is the valid study `_valid.yaml` with one thing broken. Its header says what, and what
the error must say: `# expect: PATH | WORD` means a line of stderr starts `error: PATH` and
contains WORD; `# args:` adds command-line arguments. The run must exit with code 2 and leave the
directory as it found it: no MLflow store, no runs/ (Optuna journal, checkpoints), no Ray session.

Most cases call the CLI's `main` in this process (a fresh interpreter costs ~3 s of imports); a
few go through a real `grokscale run` subprocess with Ray's temp dir inside the test directory.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from orchestrator.cli import main

CATALOG = Path(__file__).parent / "broken_configs"
CASES = sorted(p for p in CATALOG.glob("*.yaml") if not p.name.startswith("_"))
# One of each kind through a real process: the file, a key, the network, a path, resources.
SUBPROCESS = {
    "yaml_syntax",
    "unknown_key_grid",
    "tracking_unreachable",
    "checkpoints_under_file",
    "gpus_fractional_gt_one",
}


def header(path: Path, key: str) -> list[str]:
    return [
        line.split(":", 1)[1].strip()
        for line in path.read_text().splitlines()
        if line.startswith(f"# {key}:")
    ]


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def ray_up() -> bool:
    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


@pytest.fixture
def no_driver(monkeypatch):
    """`grokscale run` in this process, with a driver that fails the test if it is ever reached."""

    def run_study(*args, **kwargs):
        raise AssertionError("a broken study reached run_study")

    monkeypatch.setitem(sys.modules, "orchestrator.sweep.driver", types.SimpleNamespace(run_study=run_study))


def grokscale_run(tmp_path: Path, args: list[str], subprocess_: bool, capsys) -> tuple[int, str]:
    if subprocess_:
        env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "RAY_TMPDIR": str(tmp_path)}
        out = subprocess.run(
            [sys.executable, "-m", "orchestrator.cli", "run", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        return out.returncode, out.stderr
    try:
        code = main(["run", *args])
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


def test_catalog_is_large_and_each_case_says_what_it_expects():
    assert len(CASES) >= 35
    for path in CASES:
        assert header(path, "expect"), f"{path.name} has no '# expect: PATH | WORD' line"
        assert all(" | " in e for e in header(path, "expect")), path.name


def test_the_base_study_is_valid(tmp_path, monkeypatch, capsys):
    shutil.copy(CATALOG / "_valid.yaml", tmp_path / "study.yaml")
    monkeypatch.chdir(tmp_path)
    assert main(["validate", "study.yaml"]) == 0, capsys.readouterr().err
    assert listing(tmp_path) == ["study.yaml"]


@pytest.mark.parametrize("case", CASES, ids=[p.stem for p in CASES])
def test_broken_study_is_refused_and_creates_nothing(case, tmp_path, monkeypatch, capsys, no_driver):
    shutil.copy(case, tmp_path / "study.yaml")
    monkeypatch.chdir(tmp_path)
    before, ray_before = listing(tmp_path), ray_up()
    args = ["study.yaml", "--quiet", *shlex.split(" ".join(header(case, "args")))]
    code, err = grokscale_run(tmp_path, args, case.stem in SUBPROCESS, capsys)

    assert code == 2, err
    assert "Traceback" not in err and "nothing was started" in err, err
    lines = [line.removeprefix("error: ") for line in err.splitlines() if line.startswith("error: ")]
    for expect in header(case, "expect"):
        path, word = expect.split(" | ")
        assert any(line.startswith(path) and word in line[len(path) :] for line in lines), (
            f"no error line starts with {path!r} and says {word!r}:\n{err}"
        )
    assert listing(tmp_path) == before  # no mlflow.db, runs/, journal, checkpoints or Ray session
    assert ray_up() == ray_before  # ray.init was never called
