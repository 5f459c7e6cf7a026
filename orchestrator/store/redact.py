"""Credentials never reach MLflow: values named like secrets, URL passwords and the values of
credential environment variables are replaced before anything is logged."""

from __future__ import annotations

import os
import re
from typing import Any

from orchestrator.study import redact_url

# Names that hold credentials (DB_PASSWORD, AWS_SECRET_ACCESS_KEY, MLFLOW_TRACKING_TOKEN, ...); their
# values are never written to MLflow. n_train_tokens and val_token_acc are not such names.
SECRET = re.compile(r"secret|passw(or)?d|credential|api[_-]?key|access[_-]?key|private[_-]?key|token$|(^|_)auth$",
                    re.IGNORECASE)
REDACTED = "<redacted>"


def secret_values() -> list[str]:
    """The values of this process's environment variables named like credentials, longest first
    (values under 8 characters are too common to redact inside other text)."""
    return sorted({v for k, v in os.environ.items() if SECRET.search(k) and len(v) >= 8}, key=len, reverse=True)


def scrub(values: Any) -> Any:
    """`values` (nested dicts, lists, strings) fit to log: the value of a key named like a credential,
    the password of a URL (`user:<redacted>@host`) and any credential from the environment,
    wherever it appears in a string, become <redacted>."""
    secrets = secret_values()

    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: REDACTED if isinstance(k, str) and SECRET.search(k) else clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, str):
            v = redact_url(v)
            for secret in secrets:
                v = v.replace(secret, REDACTED)
        return v

    return clean(values)
