"""Code named by import path, `package.module:attribute`: a trainer (trainers/protocol.py), a task or
model class (trainers/own_code.py). A leaf: it imports nothing of grokscale's, so both can use it."""

from __future__ import annotations

import importlib
from typing import Any


class ImportPathError(ValueError):
    """An import path that names nothing usable; the message says why."""


def is_import_path(name: Any) -> bool:
    return isinstance(name, str) and ":" in name


def import_object(ref: str, what: str = "function") -> Any:
    """The object `package.module:attribute` names; ImportPathError says why not. `what` names it
    in the message."""
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr or ":" in attr:
        raise ImportPathError(f"write it as 'package.module:{what}', got {ref!r}")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 - any failure at import is the study's problem to report
        hint = " (is its folder on PYTHONPATH?)" if isinstance(err, ModuleNotFoundError) else ""
        raise ImportPathError(f"cannot import {module_name!r}{hint}: {type(err).__name__}: {err}") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ImportPathError(f"module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj
