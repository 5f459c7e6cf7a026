"""`RestWrites`: the hot writes of runs (writes.py) to a tracking server, as plain JSON bodies on
MLflow's REST API over one HTTP session, with the client's own credentials and request headers
(resolved once). The same requests MlflowClient makes, without its per-call overhead; an error
answer raises MlflowException (RestException) as MlflowClient's would, so the write queue tells a
refusal from a server that is away."""

from __future__ import annotations

import os
import time
from typing import Any

import requests
from mlflow.entities import Run
from mlflow.exceptions import MlflowException, RestException, get_error_code
from mlflow.protos.databricks_pb2 import ErrorCode
from mlflow.tracking import MlflowClient

from orchestrator.store.writes import CallWrites


class RestWrites(CallWrites):
    """log_batch and update_run against a tracking server, as JSON bodies on one HTTP session,
    with the client's own credentials and request headers (resolved once)."""

    def __init__(self, uri: str, creds: Any) -> None:
        super().__init__()
        from mlflow.tracking.request_header.registry import resolve_request_headers

        self.base = uri.rstrip("/") + "/api/2.0/mlflow/"
        self.session = requests.Session()
        self.session.headers.update(resolve_request_headers())
        if creds.username and creds.password:
            self.session.auth = (creds.username, creds.password)
        elif creds.token:
            self.session.headers["Authorization"] = f"Bearer {creds.token}"
        self.session.verify = False if creds.ignore_tls_verification else (creds.server_cert_path or True)
        if creds.client_cert_path:
            self.session.cert = creds.client_cert_path
        self.timeout = float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", "20"))

    @classmethod
    def of(cls, client: MlflowClient, uri: str) -> RestWrites | None:
        """For an http(s) tracking URI whose client speaks plain REST; None otherwise."""
        store = getattr(getattr(client, "_tracking_client", None), "store", None)
        get_creds = getattr(store, "get_host_creds", None)
        if not uri.startswith(("http://", "https://")) or get_creds is None:
            return None
        creds = get_creds()
        return None if getattr(creds, "use_databricks_sdk", False) else cls(uri, creds)

    def _post(self, endpoint: str, body: dict) -> dict:
        r = self.session.post(self.base + endpoint, json=body, timeout=self.timeout)
        try:
            answer = r.json()
        except ValueError:  # a proxy's page, not MLflow's answer: its HTTP status says what it was
            answer = {
                "error_code": ErrorCode.Name(get_error_code(r.status_code)),
                "message": f"{endpoint}: HTTP {r.status_code}: {r.text[:500]}",
            }
            if r.status_code == 200:
                raise MlflowException(answer["message"]) from None
        if r.status_code != 200:
            raise RestException(answer)  # its error code gives the HTTP status `refused` reads
        return answer

    def log_batch(self, run_id: str, metrics=(), params=(), tags=()) -> None:
        self._post(
            "runs/log-batch",
            {
                "run_id": run_id,
                "metrics": [{"key": k, "value": v, "timestamp": t, "step": s} for k, v, t, s in metrics],
                "params": [{"key": p.key, "value": p.value} for p in params],
                "tags": [{"key": t.key, "value": t.value} for t in tags],
            },
        )

    def set_terminated(self, run_id: str, status: str, end_time: int) -> None:
        self._post("runs/update", {"run_id": run_id, "status": status, "end_time": end_time})

    def create_run(self, experiment_id: str, tags: dict[str, str], name: str) -> Run:
        from google.protobuf.json_format import ParseDict
        from mlflow.protos.service_pb2 import CreateRun

        answer = self._post(
            "runs/create",
            {
                "experiment_id": experiment_id,
                "start_time": int(time.time() * 1000),
                "run_name": name,
                "tags": [{"key": k, "value": v} for k, v in tags.items()],
            },
        )
        return Run.from_proto(ParseDict(answer, CreateRun.Response(), ignore_unknown_fields=True).run)
