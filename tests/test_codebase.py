"""Rules of the developers' guide that a machine can check on the library's own source."""

from __future__ import annotations

import ast
from pathlib import Path

import thumbview

SRC = Path(thumbview.__file__).parent
MAX_BODY_LINES = 40  # "functions of 5-40 lines": the body, docstring excluded


def _body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    body = node.body
    if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring says why; it is not code to read
    return 0 if not body else body[-1].end_lineno - body[0].lineno + 1


def test_no_function_body_is_longer_than_forty_lines():
    long = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                if (n := _body_lines(node)) > MAX_BODY_LINES:
                    long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, "split these functions:\n" + "\n".join(long)


def test_the_rule_counts_code_not_docstrings():
    short = ast.parse('def f():\n    """' + "why\n" * 50 + '"""\n    return 1\n').body[0]
    long = ast.parse("def g():\n" + "    x = 1\n" * 41).body[0]
    assert _body_lines(short) == 1 and _body_lines(long) == 41
