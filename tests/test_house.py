"""House rules that a reader checks by eye, checked here so they keep holding."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "distilforge"
MAX_LINES = 80
# Migrations are written once and never changed: a long upgrade step stays as it was run.
EXEMPT = (PACKAGE / "service" / "migrations",)


def function_lengths(root: Path = PACKAGE) -> list[tuple[int, str]]:
    """(lines, "path:line name") for every function and method under `root`, counted from `def` to its
    last line, nested functions included (they are lines of the function that holds them)."""
    found = []
    for path in sorted(root.rglob("*.py")):
        if any(path.is_relative_to(exempt) for exempt in EXEMPT):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                found.append((lines, f"{path.relative_to(root.parent)}:{node.lineno} {node.name}"))
    return sorted(found, reverse=True)


def test_no_function_is_over_80_lines():
    long = [f"{where} ({lines} lines)" for lines, where in function_lengths() if lines > MAX_LINES]
    assert not long, f"functions over {MAX_LINES} lines (def to last line); split them:\n" + "\n".join(long)
