"""`grokscale reproduce RUN_ID`: train one recorded run again, here, and compare bit for bit.

A child run records its whole `TrainSpec` (the `spec.json` artifact, and the `spec_json` param
while it fits MLflow's param limit). The trainer is bitwise repeatable on CPU, so training that
spec again with `trainers.train` (no Ray) must give every recorded curve point and final metric
exactly: MLflow stores float64 and the trainer records Python floats, so nothing is rounded on
the way. Any difference, however small, is a MISMATCH. A pruned run (status `stopped`) is
trained again up to the step it was stopped at.

A run of a study's own trainer (`trainer: mypkg.train:run`, trainers/protocol.py) records a
UserSpec instead: the function's import reference, the folder its package was imported from, and
the whole RunConfig. Its function is imported again and called with the same RunConfig, a fresh
checkpoint folder and the same report callback a worker gives it. The comparison is the same; it
matches bit for bit when the function is deterministic (its seed taken from RunConfig.seed, on
CPU) and its code has not changed since the run.

A record is data written by whoever can write to the tracking store, so it never chooses the
code that runs here. A spec naming code by import path (a user trainer, an own task or model
class) is read as plain JSON first, before anything validates it (validating a TrainSpec imports
its classes), and it runs only when the user named that same code: `--trainer pkg.mod:fn`, or the
study file they pass (`--study sweeps/x.yaml`); it is then imported from the user's own sys.path,
never from the folder the record names. Otherwise it is refused (exit 2), naming the recorded
code. `--trust-recorded-code` imports what the record names, its folders first on sys.path, after
printing them. A built-in run names no code and runs as it is.

Exit codes: 0 match, 1 mismatch, 2 no such run, no recorded spec, or code nobody named.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

from pydantic import ValidationError

from orchestrator.store import names
from orchestrator.store.names import RunStatus
from trainers.core import THROUGHPUT_KEYS

log = logging.getLogger(__name__)
Curve = list[tuple[int, float]]  # (step, value), by step
# Metric names holding wall-clock durations and measured speed (trainers.core.THROUGHPUT_KEYS):
# they differ run to run by nature.
NOT_COMPARED = ("time", *THROUGHPUT_KEYS)


class ReproduceError(Exception):
    """The run cannot be reproduced: no such run, no store, no recorded spec, code nobody named."""


# The fields of a recorded spec that name code by import path, as the user names them.
TRAINER, TASK, MODEL = "trainer", "task.name", "model.family"


@dataclass
class MetricRow:
    metric: str
    points: int  # recorded points
    max_abs_diff: float | None  # None when the steps differ or one side is NaN and the other not
    match: bool
    note: str = ""


@dataclass
class Report:
    run_id: str
    run_name: str
    tracking_uri: str
    wall_time_s: float
    rows: list[MetricRow]
    tolerance: float | None = None  # None: bitwise
    expected: str = ""  # what was expected before training, and why

    @property
    def match(self) -> bool:
        return bool(self.rows) and all(r.match for r in self.rows)

    @property
    def verdict(self) -> str:
        if not self.match:
            return "MISMATCH"
        return "match (bitwise)" if self.tolerance is None else f"match (within {self.tolerance:g})"

    def as_dict(self) -> dict:
        return {
            "run_id": self.run_id,
            "run_name": self.run_name,
            "tracking_uri": self.tracking_uri,
            "verdict": self.verdict,
            "match": self.match,
            "tolerance": self.tolerance,
            "expected": self.expected,
            "wall_time_s": self.wall_time_s,
            "metrics": [asdict(r) for r in self.rows],
        }

    def table(self) -> str:
        width = max([len(r.metric) for r in self.rows] + [6])
        lines = [
            f"run {self.run_id} ({self.run_name}): trained again in {self.wall_time_s:.1f} s",
            f"expected: {self.expected}",
            f"{'metric':<{width}}  points  max |diff|  status",
        ]
        for r in self.rows:
            diff = "-" if r.max_abs_diff is None else f"{r.max_abs_diff:.3g}"
            lines.append(
                f"{r.metric:<{width}}  {r.points:>6}  {diff:>10}  {'ok' if r.match else 'DIFF'}"
                + (f"  {r.note}" if r.note else "")
            )
        lines.append(f"verdict: {self.verdict}")
        return "\n".join(lines)


def same_bits(a: float, b: float) -> bool:
    """Equal as float64 bit patterns (-0.0 is not 0.0); any NaN equals any NaN."""
    return a.hex() == b.hex() or (math.isnan(a) and math.isnan(b))


# Across machines (another CPU model, instruction set, BLAS or torch) or on a GPU, kernels sum in
# another order: the same spec gives the same numbers only to float tolerance at first, and
# training, being chaotic, can carry a difference further with every step. Points within this
# relative difference count as a match there; the report says which comparison applied.
TOLERANCE = 1e-3


def expectation(recorded: dict[str, str], here: dict, device: str | None) -> tuple[float | None, str]:
    """Before training: whether bitwise equality can be expected from the machine facts the run
    recorded (`grokscale.runtime.machine`, trainers/machine.py) against this machine's, and the
    tolerance that applies instead (None: bitwise)."""
    from trainers.machine import bitwise_comparable

    if device and device.startswith("cuda"):
        return (
            TOLERANCE,
            f"a GPU run: repeatable to float tolerance, not bitwise; compared within {TOLERANCE:g}",
        )
    if not recorded:
        return None, "the run recorded no machine facts (an older record): bitwise equality assumed"
    differ = bitwise_comparable(recorded, here)
    if not differ:
        return None, "the same CPU, instruction set, BLAS, torch and threads: bitwise equality expected"
    return TOLERANCE, (
        "another machine (" + "; ".join(differ) + "): bitwise equality is not expected; "
        f"compared within a relative {TOLERANCE:g}, which a long run may exceed"
    )


def compare(metric: str, recorded: Curve, new: Curve, tolerance: float | None = None) -> MetricRow:
    if any(word in metric for word in NOT_COMPARED):
        return MetricRow(metric, len(recorded), None, True, "not compared (a duration or speed)")
    if not new:
        return MetricRow(metric, len(recorded), None, False, "not produced by the new run")
    if not recorded:
        return MetricRow(metric, 0, None, False, "produced by the new run, not recorded")
    if [s for s, _ in recorded] != [s for s, _ in new]:
        return MetricRow(
            metric,
            len(recorded),
            None,
            False,
            f"steps differ: recorded {[s for s, _ in recorded][:5]}..., new {[s for s, _ in new][:5]}...",
        )
    diffs = [abs(a - b) for (_, a), (_, b) in zip(recorded, new)]
    finite = all(
        math.isfinite(d) or (math.isnan(a) and math.isnan(b))
        for d, (_, a), (_, b) in zip(diffs, recorded, new)
    )
    if tolerance is None:
        match = all(same_bits(a, b) for (_, a), (_, b) in zip(recorded, new))
    else:
        match = all(
            same_bits(a, b) or math.isclose(a, b, rel_tol=tolerance, abs_tol=tolerance * 1e-3)
            for (_, a), (_, b) in zip(recorded, new)
        )
    worst = max((d for d in diffs if not math.isnan(d)), default=0.0)
    return MetricRow(
        metric,
        len(recorded),
        worst if finite else None,
        match,
        "" if finite else "NaN or inf on one side only",
    )


def _client(tracking_uri: str):
    """An MlflowClient for an existing store; a SQLite or file store that is not there is an error
    (MLflow would quietly create an empty one)."""
    parsed = urlparse(tracking_uri)
    if parsed.scheme == "sqlite":
        path = Path(tracking_uri.removeprefix("sqlite:///"))
        if not path.is_file():
            raise ReproduceError(
                f"no MLflow store at {path} (tracking URI {tracking_uri}); pass the study's --tracking-uri"
            )
    elif parsed.scheme in ("", "file") and not Path(parsed.path or tracking_uri).is_dir():
        raise ReproduceError(f"no MLflow store at {tracking_uri}; pass the study's --tracking-uri")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def recorded_spec(client, run) -> str:
    """The run's TrainSpec JSON: the spec_json param when it is whole (shorter than MLflow's
    limit), else the spec.json artifact (a longer spec's; older runs have both), else the param."""
    param = run.data.params.get(names.PARAM_SPEC_JSON)
    if param is not None and len(param) < names.PARAM_MAX_CHARS:
        return param
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # stderr is for errors
    try:
        with tempfile.TemporaryDirectory() as tmp:
            return Path(client.download_artifacts(run.info.run_id, names.ARTIFACT_SPEC, tmp)).read_text()
    except Exception as err:  # noqa: BLE001 - no artifact (older runs): fall back to the param
        log.debug("run %s: no %s artifact (%s); using the param", run.info.run_id, names.ARTIFACT_SPEC, err)
    if names.PARAM_SPEC_JSON in run.data.params:
        return run.data.params[names.PARAM_SPEC_JSON]
    raise ReproduceError(
        f"run {run.info.run_id} has no recorded spec (no spec.json artifact, no spec_json "
        f"param); is it a training run (a child of the study's run)?"
    )


def recorded_curves(client, run) -> dict[str, Curve]:
    curves = {}
    for key in run.data.metrics:
        history = client.get_metric_history(run.info.run_id, key)
        by_step = {m.step: float(m.value) for m in sorted(history, key=lambda m: (m.step, m.timestamp))}
        curves[key] = sorted(by_step.items())
    return curves


def new_curves(result: dict) -> dict[str, Curve]:
    """What the driver would have logged for this result: a curve per evaluated metric, and the
    `final.*` metrics exactly as `orchestrator.sweep.driver` builds them."""
    from orchestrator.sweep.outcome import summarize

    history = result.get("history") or {}
    steps = [int(s) for s in history.get("step", [])]
    curves = {k: list(zip(steps, map(float, v))) for k, v in history.items() if k != "step"}
    final = {k: v for k, v in summarize(result).items() if isinstance(v, (int, float))}
    final.update({f"{names.N_PARAMS_METRIC_PREFIX}{k}": v for k, v in (result.get("n_params") or {}).items()})
    curves.update({f"{names.FINAL_PREFIX}{k}": [(0, float(v))] for k, v in final.items()})
    return curves


def _invalid(run_id: str, kind: str, err: ValidationError) -> ReproduceError:
    return ReproduceError(
        f"run {run_id}: the recorded spec is not a valid {kind} "
        f"({err.error_count()} problem(s), first: {err.errors()[0]['msg']})"
    )


def train_spec(run_id: str, text: str, report: Callable[[dict], bool] | None) -> dict:
    """The built-in trainer's run of a recorded TrainSpec, as its result dict."""
    from trainers import TrainSpec, train

    try:
        spec = TrainSpec.model_validate_json(text)
    except ValidationError as err:
        raise _invalid(run_id, "TrainSpec", err) from None
    try:
        return train(spec, report=report).to_dict()
    except Exception as err:  # noqa: BLE001 - e.g. a spec recorded on a GPU, trained again without one
        raise ReproduceError(
            f"run {run_id}: its spec does not train here ({type(err).__name__}: {err})"
        ) from None


def train_user_spec(
    run_id: str, text: str, report: Callable[[dict], bool] | None, recorded_sys_path: bool = False
) -> dict:
    """The study's own trainer called again with the recorded RunConfig, through the same
    wrapper a worker uses (orchestrator/sweep/user_trainer.py), in a fresh checkpoint folder: a
    checkpoint the run left behind would turn the replay into a resume. The recorded sys_path
    is used only when `recorded_sys_path` (--trust-recorded-code)."""
    from orchestrator.sweep.user_trainer import run_user_trainer
    from trainers.protocol import TrainerError, UserSpec

    try:
        spec = UserSpec.model_validate_json(text)
    except ValidationError as err:
        raise _invalid(run_id, "UserSpec", err) from None
    if not recorded_sys_path:
        spec = spec.model_copy(update={"sys_path": []})
    with tempfile.TemporaryDirectory(prefix="grokscale-reproduce-") as folder:
        try:
            return run_user_trainer(spec, report, folder)
        except TrainerError as err:
            raise ReproduceError(
                f"run {run_id}: its trainer {spec.trainer!r} cannot be loaded here: {err}"
            ) from None
        except Exception as err:  # noqa: BLE001 - the user's code failed: say so, with its own words
            raise ReproduceError(
                f"run {run_id}: its trainer {spec.trainer!r} failed here ({type(err).__name__}: {err})"
            ) from None


def recorded_code(text: str) -> tuple[dict[str, str], list[str]]:
    """The code a recorded spec names by import path, by field (TRAINER, TASK, MODEL), and the
    sys.path entries it records; ({}, []) for a built-in run. Read from the JSON as plain data."""
    from trainers.own_code import is_import_path

    try:
        data = json.loads(text)
    except ValueError:
        return {}, []
    if not isinstance(data, dict):
        return {}, []
    if TRAINER in data:  # a UserSpec: a trainer by import path or entry-point name
        sys_path = data.get("sys_path")
        return {TRAINER: str(data[TRAINER])}, [str(p) for p in sys_path] if isinstance(sys_path, list) else []
    code = {}
    for field in (TASK, MODEL):
        section, key = field.split(".")
        ref = data[section].get(key) if isinstance(data.get(section), dict) else None
        if is_import_path(ref):
            code[field] = ref
    return code, []


def named_in_study(path: str) -> dict[str, str]:
    """The code a study file names by import path, by field (as `recorded_code`)."""
    from orchestrator.study import StudyError, load_study
    from trainers.own_code import is_import_path

    try:
        study = load_study(path)
    except StudyError as err:
        raise ReproduceError(f"--study {path}: {'; '.join(err.problems)}") from None
    named = {TRAINER: study.trainer} if study.trainer else {}
    for field, ref in ((TASK, study.task.get("name")), (MODEL, study.model.get("family"))):
        if is_import_path(ref):
            named[field] = ref
    return named


def unnamed_code(
    run_id: str, code: dict[str, str], sys_path: list[str], named: dict[str, str], tracking_uri: str
) -> ReproduceError | None:
    """Why the recorded code may not run (None when the user named every piece of it)."""
    from orchestrator.study import redact_url

    missing = {field: ref for field, ref in code.items() if named.get(field) != ref}
    if not missing:
        return None
    what = ", ".join(
        f"{field} {ref!r}" + (f" (you named {named[field]!r})" if field in named else "")
        for field, ref in missing.items()
    )
    where = f" with sys.path entries {sys_path}" if sys_path else ""
    how = [f"--trainer {missing[TRAINER]}"] if TRAINER in missing else []
    how.append("--study STUDY.yaml (the study file that names " + " and ".join(missing) + ")")
    return ReproduceError(
        f"run {run_id} names code by import path: {what}{where}. reproduce imports only code you name, "
        f"from your own PYTHONPATH: pass {' or '.join(how)}; or, if you trust everyone who can write runs to "
        f"{redact_url(tracking_uri)}, pass --trust-recorded-code to import what the record names (it prints "
        f"what first). Nothing was imported or run."
    )


def describe_imports(code: dict[str, str], sys_path: list[str]) -> list[str]:
    """What --trust-recorded-code imports: each reference, its module and where that module's
    package is found with the recorded sys.path entries first (found, not imported)."""
    import importlib.util

    lines = [f"  sys.path entry first: {p}" for p in sys_path]
    added = [p for p in reversed(sys_path) if p not in sys.path]
    sys.path[:0] = list(reversed(added))
    try:
        for field, ref in code.items():
            module = ref.partition(":")[0] if ":" in ref else None
            if module is None:
                lines.append(f"  {field}: {ref!r}, an entry point of the group grokscale.trainers")
                continue
            try:
                found = importlib.util.find_spec(module.split(".")[0])
            except (ImportError, ValueError):
                found = None
            origin = (
                "not found"
                if found is None
                else (found.origin or ", ".join(found.submodule_search_locations or []))
            )
            lines.append(f"  {field}: {ref!r}: module {module}, package at {origin}")
    finally:
        for p in added:
            sys.path.remove(p)
    return lines


def reproduce(
    run_id: str, tracking_uri: str, named: dict[str, str] | None = None, trust_recorded_code: bool = False
) -> Report:
    """Train the run again and compare. `named`: the code the user names, by field (TRAINER,
    TASK, MODEL); a recorded spec naming other code is refused unless `trust_recorded_code`."""
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        raise ReproduceError(f"no run {run_id!r} in {tracking_uri} ({err.error_code})") from None
    from trainers.protocol import is_user_spec

    text = recorded_spec(client, run)
    code, sys_path = recorded_code(text)
    if code and trust_recorded_code:
        print(f"reproduce: --trust-recorded-code: importing the code run {run_id} names:", file=sys.stderr)
        print("\n".join(describe_imports(code, sys_path)), file=sys.stderr)
    elif code and (refused := unnamed_code(run_id, code, sys_path, named or {}, tracking_uri)):
        raise refused
    # A run stopped from outside (pruned) is replayed to the step it stopped at: where it stopped
    # depended on other runs, what it computed up to there did not.
    final_steps = f"{names.FINAL_PREFIX}steps"
    stopped = run.data.tags.get(names.TAG_STATUS) == RunStatus.STOPPED.value
    stop_at = int(run.data.metrics[final_steps]) if stopped and final_steps in run.data.metrics else None
    report = (lambda record: record["step"] >= stop_at) if stop_at is not None else None
    tolerance, expected = _expected(run)
    print(f"reproduce: {expected}", file=sys.stderr)
    t0 = time.perf_counter()
    if is_user_spec(text):
        result = train_user_spec(run_id, text, report, recorded_sys_path=trust_recorded_code)
    else:
        result = train_spec(run_id, text, report)
    wall = time.perf_counter() - t0
    recorded, new = recorded_curves(client, run), new_curves(result)
    rows = [
        compare(k, recorded.get(k, []), new.get(k, []), tolerance) for k in sorted(set(recorded) | set(new))
    ]
    return Report(run_id, run.info.run_name or "", tracking_uri, wall, rows, tolerance, expected)


def _expected(run) -> tuple[float | None, str]:
    """The machine facts the run recorded against this machine's, at the run's own thread count
    (the run sets it: train.threads, or a user trainer's own)."""
    from trainers.machine import facts

    tags = run.data.tags
    try:
        recorded = json.loads(tags.get(f"{names.TAG_RUNTIME_PREFIX}machine", "{}"))
        threads = int(recorded.get("threads") or 1)
    except (ValueError, TypeError, AttributeError):
        recorded, threads = {}, 1
    return expectation(recorded, facts(threads), tags.get(f"{names.TAG_RUNTIME_PREFIX}device"))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="grokscale reproduce", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_id", help="the MLflow run id of one training run (a child run of a study)")
    parser.add_argument(
        "--tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"),
        help="the study's MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)",
    )
    parser.add_argument("--json", action="store_true", help="print the comparison as JSON")
    parser.add_argument(
        "--trainer",
        metavar="PKG.MOD:FN",
        help="the run's own trainer, named by you: imported from your PYTHONPATH",
    )
    parser.add_argument(
        "--study",
        metavar="STUDY.yaml",
        help="your study file: the trainer, task and model classes it names may run",
    )
    parser.add_argument(
        "--trust-recorded-code",
        action="store_true",
        help="import the code the run's record names, from the folders it records "
        "(printed first): only for a store whose writers you trust",
    )
    args = parser.parse_args(argv)
    try:
        named = named_in_study(args.study) if args.study else {}
        if args.trainer:
            named[TRAINER] = args.trainer
        report = reproduce(args.run_id, args.tracking_uri, named, args.trust_recorded_code)
    except ReproduceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.table())
    return 0 if report.match else 1
