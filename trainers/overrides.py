"""Dotted-key overrides (`train.lr=3e-4`) applied to nested config data before validation."""

from __future__ import annotations

import copy
from typing import Any, Iterable

import yaml


class OverrideError(ValueError):
    pass


def parse_value(text: str) -> Any:
    """YAML scalar rules: `1e-3` is a float, `true` a bool, `[1, 2]` a list, else a string."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict, overrides: Iterable[str]) -> dict:
    """A copy of `data` with each `a.b.c=value` set; list items are addressed by index."""
    out = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise OverrideError(f"override {item!r}: expected KEY=VALUE with a dotted KEY, e.g. train.lr=3e-4")
        node: Any = out
        parts = key.strip().split(".")
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise OverrideError(f"override {item!r}: {'.'.join(parts[:i])} is a list of "
                                        f"{len(node)}; {part!r} is not an index in it")
                part = int(part)
            elif not isinstance(node, dict):
                raise OverrideError(f"override {item!r}: {'.'.join(parts[:i])} is a value, not a section")
            if last:
                node[part] = parse_value(raw)
            else:
                if isinstance(node, dict) and not isinstance(node.get(part), (dict, list)):
                    node[part] = {}
                node = node[part]
    return out
