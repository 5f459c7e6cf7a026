"""Helpers shared by the tests (tests/conftest.py puts tests/ on sys.path): the CLI runner and
study files (cli), free ports (ports), processes found through /proc (processes), a real
`mlflow server` (mlflow_server), a `grokscale run` driver in the background (driver), and
retrying a fault that missed its moment (races)."""
