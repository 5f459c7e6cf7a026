"""The shape of the code itself, read from the source of every tracked Python file."""

import ast
import subprocess
from pathlib import Path

REPO = Path(__file__).parents[2]


def python_files() -> list[str]:
    """The repository's tracked Python files (a tracked file deleted from the work tree is skipped)."""
    listed = subprocess.run(
        ["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    return [path for path in listed if (REPO / path).is_file()]


def nested_conditionals(source: str) -> list[int]:
    """The lines of the conditional expressions (`x if c else y`) that hold another one in their
    body, test or else-part."""
    return [
        node.lineno
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.IfExp)
        and any(
            isinstance(inner, ast.IfExp)
            for part in (node.body, node.orelse, node.test)
            for inner in ast.walk(part)
        )
    ]


def test_no_conditional_expression_is_nested():
    offenders = [
        f"{path}:{line}" for path in python_files() for line in nested_conditionals((REPO / path).read_text())
    ]
    assert offenders == [], (
        "a nested conditional expression hides a decision table: write it as if/elif/else (or a "
        f"lookup, or a small named function) instead: {offenders}"
    )
