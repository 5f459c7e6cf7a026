"""The study: its schema, its checks, loading it from YAML, and its grid of cells.

Import the study's types from here (`from orchestrator.study import Study, load_study`); the
modules behind it are this package's own business:
  schema.py  the pydantic models (Study and its sections)
  tasks.py   what the study needs to know of each trainer task (D fields, metrics)
  errors.py  StudyError, and pydantic's errors as `path: message` lines
  checks.py  what the schema cannot see alone (the parts fit each other and the trainer)
  length.py  a run's training length (steps, tokens, epochs or an IsoFLOP budget) in steps
  load.py    YAML in: safe loading, duplicate keys, --set overrides, load_study
  grid.py    the cells (N, D) or (N, C) with shapes and lengths resolved; spec_for (one run)
  preflight.py  checks of the outside world
The grid (`orchestrator.study.grid`) is not re-exported: it resolves shapes with torch, which
`grokscale fit` never needs.
"""

from orchestrator.study.errors import Problem, StudyError, format_errors, redact_url
from orchestrator.study.load import load_study
from orchestrator.study.schema import Study

__all__ = ["Problem", "Study", "StudyError", "format_errors", "load_study", "redact_url"]
