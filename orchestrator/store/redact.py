"""Credentials never reach MLflow or Optuna: values named like secrets, URL passwords (and a URL's
`?password=`), the values of credential environment variables and the credentials the study
itself holds are replaced before anything is logged, a failed run's traceback included."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from orchestrator.study.errors import REDACTED, SECRET, redact_url

MIN_SECRET_CHARS = 8  # shorter values are too common to redact inside other text


def secret_values() -> list[str]:
    """The values of this process's environment variables named like credentials, longest first."""
    return sorted(
        {v for k, v in os.environ.items() if SECRET.search(k) and len(v) >= MIN_SECRET_CHARS},
        key=len,
        reverse=True,
    )


def secrets_in(data: Any) -> list[str]:
    """The credentials a config holds, to redact wherever they turn up later (a user trainer's
    traceback may quote its `task.api_key`): the string values of keys named like credentials, and
    the passwords of the URLs among its strings."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    found: set[str] = set()

    def walk(v: Any, secret: bool) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                walk(x, secret or (isinstance(k, str) and bool(SECRET.search(k))))
        elif isinstance(v, (list, tuple)):
            for x in v:
                walk(x, secret)
        elif isinstance(v, str) and secret:
            found.add(v)
        elif isinstance(v, str) and "://" in v and not any(c.isspace() for c in v):
            try:
                url = make_url(v)
            except (ArgumentError, ValueError):
                return
            found.update(x for k, x in url.query.items() if SECRET.search(k) and isinstance(x, str))
            found.add(url.password or "")

    walk(data, False)
    return sorted({s for s in found if len(s) >= MIN_SECRET_CHARS}, key=len, reverse=True)


def _all_secrets(known: Iterable[str]) -> list[str]:
    """The environment's credentials and `known`, longest first (a secret inside another goes last)."""
    return sorted({*secret_values(), *known}, key=len, reverse=True)


def _replace(text: str, secrets: list[str]) -> str:
    text = redact_url(text)
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return text


def scrub_text(text: str, known: Iterable[str] = ()) -> str:
    """`text` fit to log: URL passwords and every credential from the environment or `known`
    (secrets_in), wherever it appears, become <redacted>."""
    return _replace(text, _all_secrets(known))


def scrub(values: Any, known: Iterable[str] = ()) -> Any:
    """`values` (nested dicts, lists, strings) fit to log: the value of a key named like a credential
    becomes <redacted>, and every string is scrubbed as `scrub_text` does. Dicts are scrubbed before
    they become JSON: a key's name is lost in the text."""
    secrets = _all_secrets(known)

    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {
                k: REDACTED if isinstance(k, str) and SECRET.search(k) else clean(x) for k, x in v.items()
            }
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, str):
            return _replace(v, secrets)
        return v

    return clean(values)
