"""A study's problems as lines a person can act on: `path: what is wrong, what is allowed, got x`.

The path comes from pydantic's own error location, walked through the model's core schema so
that what pydantic inserts (a union's tag, e.g. `modular` in `task.modular.p`) is dropped and
only the keys a person wrote remain. What is allowed comes from the error's type and context;
our validators raise `PydanticCustomError` with the message they mean, so nothing here parses a
message for its meaning. A section-level check names the field it is about in its context as
`field` (a dotted path under the section).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

# Schemas that only wrap another and add nothing to an error's location.
WRAPPERS = {
    "function-before",
    "function-after",
    "function-wrap",
    "function-plain",
    "default",
    "nullable",
    "model",
    "model-field",
    "lax-or-strict",
    "json-or-python",
}
README_HINT = "check the spelling against the README's study config"

# Names that hold credentials (DB_PASSWORD, AWS_SECRET_ACCESS_KEY, MLFLOW_TRACKING_TOKEN, a URL's
# ?password=, ...); their values are never printed or logged. n_train_tokens is not such a name.
SECRET = re.compile(
    r"secret|passw(or)?d|credential|api[_-]?key|access[_-]?key|private[_-]?key|token$"
    r"|(^|_)auth$",
    re.IGNORECASE,
)
REDACTED = "<redacted>"
# In text that is not one URL: user:password@ of a URL, and a query's key=value whose key is a SECRET.
URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*):(?P<password>[^@/\s]*)@")
URL_QUERY_ITEM = re.compile(r"(?P<head>[?&](?P<key>[^=&#\s]+)=)(?P<value>[^&#\s]*)")
_MARK = "GROKSCALEREDACTED"  # a password SQLAlchemy renders as it is, then shown as <redacted>


def redact_url(text: str) -> str:
    """`postgresql://u:s3cret@host/db?sslpassword=x` -> `postgresql://u:<redacted>@host/db?sslpassword=<redacted>`.

    A text that is one URL is parsed (SQLAlchemy's make_url, which reads every database and http URL
    this project takes), so a password or a query value named like a credential is masked wherever
    it sits; it is rendered again only when something was masked. Other text (a message, a
    description) is searched for both with the regular expressions above."""
    if "://" in text and not any(c.isspace() for c in text):
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(text)
        except (ArgumentError, ValueError):  # not a URL SQLAlchemy reads (a port that is not a number)
            url = None
        if url is not None:
            hidden = {k for k in url.query if SECRET.search(k)}
            if url.password is None and not hidden:
                return text
            url = url.set(
                password=_MARK if url.password is not None else None,
                query={k: _MARK if k in hidden else v for k, v in url.query.items()},
            )
            return url.render_as_string(hide_password=False).replace(_MARK, REDACTED)
    text = URL_PASSWORD.sub(rf"\g<head>:{REDACTED}@", text)
    return URL_QUERY_ITEM.sub(lambda m: m["head"] + REDACTED if SECRET.search(m["key"]) else m[0], text)


class StudyError(Exception):
    """A study that cannot run: each line names the field, what was wrong and what is allowed."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True)
class Problem:
    path: str  # dotted, with [i] for list items; "" for the whole input
    message: str

    def __str__(self) -> str:
        return f"{self.path or '(study)'}: {self.message}"


def _unwrap(schema: dict | None, defs: dict) -> dict | None:
    while schema is not None:
        if "ref" in schema:
            defs[schema["ref"]] = schema
        kind = schema["type"]
        if kind == "definitions":
            defs.update({d["ref"]: d for d in schema["definitions"]})
            schema = schema["schema"]
        elif kind == "definition-ref":
            schema = defs.get(schema["schema_ref"])
        elif kind == "lax-or-strict":
            schema = schema["lax_schema"]
        elif kind == "json-or-python":
            schema = schema["python_schema"]
        elif kind in WRAPPERS and "schema" in schema:
            schema = schema["schema"]
        else:
            return schema
    return None


def _child(schema: dict | None, part: Any) -> tuple[dict | None, bool]:
    """The schema under one location part, and whether the part is a key the person wrote
    (False for a union's tag, which pydantic adds to say which branch it chose)."""
    kind = schema["type"] if schema else None
    if kind in ("model-fields", "typed-dict"):
        field = schema["fields"].get(part)
        return (field["schema"] if field else None), True
    if kind in ("list", "set", "frozenset") and isinstance(part, int):
        return schema.get("items_schema"), True
    if kind == "tuple" and isinstance(part, int):
        items = schema["items_schema"]
        return (items[min(part, len(items) - 1)] if items else None), True
    if kind == "dict":
        return schema.get("values_schema"), True
    if kind == "tagged-union" and part in schema["choices"]:
        return schema["choices"][part], False
    if kind == "union":
        labelled = {c[1]: c[0] for c in schema["choices"] if isinstance(c, tuple)}
        return labelled.get(part), False  # a tag, or pydantic's own label of an untagged choice
    return None, True


def field_path(model: type[BaseModel] | None, loc: tuple) -> tuple[str, dict | None]:
    """The person's path for pydantic's `loc`, and the schema found there (None if unknown)."""
    defs: dict = {}
    schema = _unwrap(model.__pydantic_core_schema__, defs) if model else None
    path = ""
    for part in loc:
        schema, shown = _child(schema, part)
        schema = _unwrap(schema, defs)
        if shown:
            if isinstance(part, int):
                path += f"[{part}]"
            elif path:
                path += "." + str(part)
            else:
                path += str(part)
    return path, schema


def _tags(schema: dict | None) -> str:
    return (
        ", ".join(repr(t) for t in schema["choices"]) if schema and schema["type"] == "tagged-union" else ""
    )


def _problem(e: dict, model: type[BaseModel] | None) -> Problem:
    path, schema = field_path(model, e["loc"])
    kind, ctx, got = e["type"], e.get("ctx") or {}, e.get("input")
    message = e["msg"]
    show_got = not isinstance(got, (dict, list, tuple)) and "got " not in message
    if kind == "extra_forbidden":
        message, show_got = f"unknown key ({README_HINT})", False
    elif kind == "missing":
        message = "required, but missing"
    elif kind == "finite_number":  # allow_inf_nan=False (schema.Strict, trainers.fields.Frozen)
        message = "must be a finite number (NaN and infinity are not allowed)"
    elif kind == "too_short":
        message = f"must not be empty: give at least {ctx.get('min_length', 1)} value(s)"
    elif kind in ("union_tag_invalid", "union_tag_not_found"):
        tag_field = str(ctx.get("discriminator", "")).strip("'")
        path = f"{path}.{tag_field}" if path else tag_field
        unknown = f"unknown {ctx['tag']!r}" if kind == "union_tag_invalid" else "required, but missing"
        message, show_got = f"{unknown}; allowed: {ctx.get('expected_tags') or _tags(schema)}", False
    elif kind == "value_error":
        message = str(ctx.get("error", message))
    if ctx.get("field"):  # a PydanticCustomError of a section-level check names its field
        path = f"{path}.{ctx['field']}" if path else ctx["field"]
    return Problem(path, f"{message}, got {got!r}" if show_got and kind != "missing" else message)


def problems_of(err: ValidationError, model: type[BaseModel] | None = None) -> list[Problem]:
    """Each of pydantic's errors as a Problem; `model` is what was validated (its schema turns
    pydantic's locations into the person's paths; without it the location is shown as is)."""
    return list(dict.fromkeys(_problem(e, model) for e in err.errors()))


def format_errors(
    err: ValidationError, prefix: str = "", *, model: type[BaseModel] | None = None
) -> list[str]:
    """One line per problem: `path: what is wrong, what is allowed, got <value>`."""
    lines = []
    for p in problems_of(err, model):
        path = f"{prefix}.{p.path}" if prefix and p.path else (prefix or p.path)
        lines.append(str(Problem(path, p.message)))
    return lines
