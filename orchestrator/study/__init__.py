"""The study: its schema, its checks, loading it from YAML, and its grid of cells.

Import the study's types from here (`from orchestrator.study import Study, load_study`); the
modules behind it are this package's own business. The grid (`orchestrator.study.grid`) is not
re-exported: it resolves shapes with torch, which `grokscale fit` never needs.
"""

from orchestrator.study.config import Study, StudyError, format_errors, load_study, redact_url

__all__ = ["Study", "StudyError", "format_errors", "load_study", "redact_url"]
