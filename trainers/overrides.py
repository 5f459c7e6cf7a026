"""Dotted-key overrides (`train.lr=3e-4`) applied to nested config data before validation."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

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
            raise OverrideError(
                f"override {item!r}: expected KEY=VALUE with a dotted KEY, e.g. train.lr=3e-4"
            )
        node: Any = out
        parts = key.strip().split(".")
        i = 0
        while i < len(parts):
            part: Any = parts[i]
            if isinstance(node, dict):
                # A key may itself hold dots (search.space's "train.weight_decay"): take the
                # longest run of parts that names an existing key.
                for j in range(len(parts), i + 1, -1):
                    if ".".join(parts[i:j]) in node:
                        part, i = ".".join(parts[i:j]), j - 1
                        break
            elif isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise OverrideError(
                        f"override {item!r}: {'.'.join(parts[:i])} is a list of "
                        f"{len(node)}; {part!r} is not an index in it"
                    )
                part = int(part)
            else:
                raise OverrideError(f"override {item!r}: {'.'.join(parts[:i])} is a value, not a section")
            if i == len(parts) - 1:
                node[part] = parse_value(raw)
            else:
                if isinstance(node, dict) and not isinstance(node.get(part), (dict, list)):
                    node[part] = {}
                node = node[part]
            i += 1
    return out
