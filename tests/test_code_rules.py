"""Rules the code base keeps: no function in tta_core, the built-in plugins or the examples
longer than 100 lines (split into setup / step / helpers instead)."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIMIT = 100


def long_functions(roots, base=REPO):
    found = []
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    length = node.end_lineno - node.lineno + 1
                    if length > LIMIT:
                        found.append(f"{path.relative_to(base)}:{node.lineno}: {node.name} has {length} lines")
    return found


def test_no_function_is_over_100_lines():
    assert long_functions([REPO / "tta_core", REPO / "plugins", REPO / "examples"]) == []


def test_the_rule_sees_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(LIMIT))
    (tmp_path / "m.py").write_text(f"def short():\n    return 1\n\n\ndef long():\n{body}\n")
    assert long_functions([tmp_path], base=tmp_path) == [f"m.py:5: long has {LIMIT + 1} lines"]
