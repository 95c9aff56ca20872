"""No function of slice_connect above radon's complexity grade B without a stated reason.

Grade B ends at a cyclomatic complexity of 10. A function above it either is split into
smaller ones that read top to bottom, or says why not in a comment containing
``complexity:`` on the lines right above it (above its decorators) or on its signature::

    # complexity: one flat dispatch over the answer's fields; splitting it hides the order.
    def parse(answer): ...

Closures and methods count as functions (radon's ``cc`` command hides closures by default;
this check does not).
"""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

import pytest
from radon.complexity import add_inner_blocks, cc_rank, cc_visit
from radon.visitors import Function

import slice_connect

PACKAGE = Path(slice_connect.__file__).parent
SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if "migrations" not in p.parts)
#: The highest complexity of grade B.
MAX_COMPLEXITY = 10
REASON = "complexity:"


def _layout(source: str) -> tuple[dict[int, str], dict[int, int]]:
    """The comments by line, and for each ``def`` line the line of the colon ending its
    signature (the first ``:`` outside brackets after ``def``)."""
    comments: dict[int, str] = {}
    signature_end: dict[int, int] = {}
    open_def: int | None = None
    depth = 0
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string
        elif token.type == tokenize.NAME and token.string == "def" and open_def is None:
            open_def, depth = token.start[0], 0
        elif token.type == tokenize.OP and open_def is not None:
            if token.string in {"(", "[", "{"}:
                depth += 1
            elif token.string in {")", "]", "}"}:
                depth -= 1
            elif token.string == ":" and depth == 0:
                signature_end[open_def] = token.start[0]
                open_def = None
    return comments, signature_end


def _reasoned_lines(source: str, tree: ast.AST) -> set[int]:
    """The def lines of the functions that give a ``complexity:`` reason: in a comment on
    their signature's lines, or in the comment lines right above them (or their decorators)."""
    comments, signature_end = _layout(source)
    lines = source.splitlines()
    reasoned = set()
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        found = [comments.get(n, "") for n in range(node.lineno, signature_end[node.lineno] + 1)]
        above = min([node.lineno, *(d.lineno for d in node.decorator_list)]) - 1
        while above >= 1 and lines[above - 1].strip().startswith("#"):
            found.append(comments.get(above, ""))
            above -= 1
        if any(REASON in comment for comment in found):
            reasoned.add(node.lineno)
    return reasoned


def unexplained_complexity(source: str, filename: str = "<src>") -> list[str]:
    """One line per function above grade B that gives no ``complexity:`` reason."""
    reasoned = _reasoned_lines(source, ast.parse(source, filename))
    problems = []
    for block in add_inner_blocks(cc_visit(source)):
        if not isinstance(block, Function) or block.complexity <= MAX_COMPLEXITY:
            continue
        if block.lineno not in reasoned:
            grade = f"{cc_rank(block.complexity)} ({block.complexity})"
            problems.append(f"{filename}:{block.lineno} {block.fullname} {grade}")
    return sorted(problems)


def branchy(cases: int, indent: str = "    ") -> str:
    """A function body of complexity ``cases + 1``."""
    body = "".join(f"if x == {n}:\n    return {n}\n" for n in range(cases)) + "return x\n"
    return "".join(indent + line + "\n" for line in body.splitlines())


#: The body of a function of complexity 12 (grade C).
BRANCHY = branchy(11)


@pytest.mark.parametrize(
    ("source", "flagged"),
    [
        (f"def f(x):\n{BRANCHY}", ["f C (12)"]),
        (f"# complexity: a flat table of cases.\ndef f(x):\n{BRANCHY}", []),
        (f"def f(x):  # complexity: a flat table of cases.\n{BRANCHY}", []),
        (f"def f(\n    x,\n):  # complexity: a flat table.\n{BRANCHY}", []),
        (f"# complexity: cases.\n# (more)\n@decorate\n@other(\n    1\n)\ndef f(x):\n{BRANCHY}", []),
        (
            f"async def f(\n    x: dict[str, int] = {{'a': 1}},  # complexity: a table.\n"
            f"):\n{BRANCHY}",
            [],
        ),
        # A reason must be right above: not separated by a blank line, not inside the body.
        (f"# complexity: cases.\n\ndef f(x):\n{BRANCHY}", ["f C (12)"]),
        (f"def f(x):\n    # complexity: cases.\n{BRANCHY}", ["f C (12)"]),
        (f"# too complex, sorry\ndef f(x):\n{BRANCHY}", ["f C (12)"]),
        # Methods and closures are functions too; the enclosing function's reason is its own.
        (f"class K:\n    def m(self, x):\n{branchy(11, '        ')}", ["K.m C (12)"]),
        (
            f"# complexity: the outer one.\ndef outer():\n    def inner(x):\n"
            f"{branchy(11, '        ')}    return inner",
            ["outer.inner C (12)"],
        ),
        # Grade B's highest complexity needs no reason; one more does.
        (f"def f(x):\n{branchy(9)}", []),
        (f"def f(x):\n{branchy(10)}", ["f C (11)"]),
        (f"def f(x):\n{branchy(8)}    return x if x else 0\n", []),
        (f"def f(x):\n{branchy(9)}    return x if x else 0\n", ["f C (11)"]),
    ],
)
def test_the_check_finds_unexplained_complexity(source: str, flagged: list[str]) -> None:
    found = unexplained_complexity(source)
    assert [problem.split(" ", 1)[1] for problem in found] == flagged, found


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_function_above_grade_b_without_a_reason(path: Path) -> None:
    assert unexplained_complexity(path.read_text(), str(path.relative_to(PACKAGE))) == []
