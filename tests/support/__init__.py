"""Helpers shared by the tests (tests/conftest.py puts tests/ on sys.path): the CLI runner and
study files (cli), free ports (ports), processes found through /proc (processes), a real
`mlflow server` (mlflow_server), a `grokscale run` driver in the background (driver), runs
that wait at gates the test opens, so a fault lands at an event (gates; checkpoint_gate for the
built-in trainers' checkpoint), and retrying a fault aimed at a random moment that missed it
(races: the `long` kills)."""
