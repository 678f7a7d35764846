"""No test can pass on a crash: every CLI call and every process a test starts has its exit code checked.

An AST scan of tests/ and tests_compat/:
- `cli(...)` (conftest) asserts exit code 0 unless told another (`expect=2`); `expect=None` is allowed
  only where the same function asserts on the result's `exit_code`. Nothing else drives typer's runner.
- A process (`subprocess.run`/`Popen`, or a helper returning one) is bound to a name, and the same
  function (the class, for `self.x`) asserts on its `returncode`, `wait()` or `poll()`, or raises when
  its `poll()`/`returncode` says it exited; `check=True` checks by itself.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted([*ROOT.glob("tests/*.py"), *ROOT.glob("tests_compat/*.py")])
SPAWNERS = {"run", "Popen", "call"}  # subprocess.X; check_call/check_output raise on a non-zero exit
STATUS = {"returncode", "wait", "poll"}


@functools.cache
def _index(path: Path) -> tuple[list[ast.AST], dict[int, ast.AST]]:
    """Every node of a file, and each node's parent (one walk per file)."""
    nodes = list(ast.walk(ast.parse(path.read_text())))
    return nodes, {id(child): node for node in nodes for child in ast.iter_child_nodes(node)}


def _scopes(path: Path, node: ast.AST) -> list[ast.AST]:
    """The functions and classes around `node`, innermost first."""
    parents, found = _index(path)[1], []
    while (node := parents.get(id(node))) is not None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            found.append(node)
    return found


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and (base := _dotted(node.value)):
        return f"{base}.{node.attr}"
    return None


def _is_spawn(node: ast.AST | None, launchers: set[str]) -> bool:
    if not isinstance(node, ast.Call):
        return False
    f = node.func
    if isinstance(f, ast.Attribute) and _dotted(f.value) == "subprocess" and f.attr in SPAWNERS:
        return not any(k.arg == "check" and isinstance(k.value, ast.Constant) and k.value.value for k in node.keywords)
    return isinstance(f, ast.Name) and f.id in launchers


def _launchers() -> set[str]:
    """Helpers that start a process and hand it back (`_subprocess`, `run_cli`): their callers must check."""
    found: set[str] = set()
    for _ in range(2):  # a helper returning another helper's process
        for path in FILES:
            for node in _index(path)[0]:
                if isinstance(node, ast.Return) and _is_spawn(node.value, found) and (scopes := _scopes(path, node)):
                    found.add(scopes[0].name)
    return found


@functools.cache
def _status_reads(tree: ast.AST) -> frozenset[str]:
    """Names whose exit status is read in an assert, or in an `if` that raises or fails the test."""
    checked: set[str] = set()
    derived: dict[str, str] = {}  # code = proc.wait(): asserting on `code` checks `proc`
    nodes = list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and (target := _dotted(node.targets[0])):
            for sub in ast.walk(node.value):
                if isinstance(sub, ast.Attribute) and sub.attr in STATUS and (base := _dotted(sub.value)):
                    derived[target] = base
    for node in nodes:
        tests = [node.test] if isinstance(node, ast.Assert) else []
        if isinstance(node, ast.If) and any(isinstance(s, ast.Raise) or (
                isinstance(s, ast.Expr) and "fail" in ast.unparse(s.value)) for s in node.body):
            tests.append(node.test)
        for test in tests:
            for sub in ast.walk(test):
                if isinstance(sub, ast.Attribute) and sub.attr in STATUS and (base := _dotted(sub.value)):
                    checked.add(base)
                if (name := _dotted(sub)) in derived:
                    checked.add(derived[name])
    for node in nodes:  # for proc in procs: assert proc.returncode == 0
        if isinstance(node, ast.For) and _dotted(node.target) in checked and (seq := _dotted(node.iter)):
            checked.add(seq)
    return frozenset(checked)


def _unchecked_processes(path: Path, launchers: set[str]) -> list[str]:
    problems = []
    for node in _index(path)[0]:
        value = getattr(node, "value", None)
        if isinstance(node, ast.Expr) and _is_spawn(value, launchers):
            problems.append(f"{path.name}:{node.lineno}: a process started and its exit code dropped")
        if not isinstance(node, ast.Assign | ast.AnnAssign) or value is None:
            continue
        if _is_spawn(value, launchers) or (isinstance(value, ast.ListComp) and _is_spawn(value.elt, launchers)):
            target = _dotted(node.targets[0] if isinstance(node, ast.Assign) else node.target)
            if not any(target in _status_reads(scope) for scope in _scopes(path, node)):
                problems.append(f"{path.name}:{node.lineno}: {target}: exit code never checked")
    return problems


def _cli_calls_without_a_check(path: Path) -> list[str]:
    problems = []
    for node in _index(path)[0]:
        if not (isinstance(node, ast.Assign | ast.Expr) and isinstance(node.value, ast.Call)
                and isinstance(node.value.func, ast.Name) and node.value.func.id == "cli"):
            continue
        if any(k.arg == "expect" and isinstance(k.value, ast.Constant) and k.value.value is None
               for k in node.value.keywords):
            bound = _dotted(node.targets[0]) if isinstance(node, ast.Assign) else None
            scopes = _scopes(path, node)
            asserted = {_dotted(sub.value) for a in ast.walk(scopes[0]) if isinstance(a, ast.Assert)
                        for sub in ast.walk(a.test) if isinstance(sub, ast.Attribute) and sub.attr == "exit_code"}
            if bound is None or bound not in asserted:
                problems.append(f"{path.name}:{node.lineno}: cli(..., expect=None) and no assert on its exit_code")
    return problems


def test_the_cli_fixture_checks_the_exit_code_by_default():
    tree = ast.parse((ROOT / "tests" / "conftest.py").read_text())
    invoke = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "invoke")
    defaults = dict(zip([a.arg for a in invoke.args.kwonlyargs], invoke.args.kw_defaults, strict=True))
    assert isinstance(defaults.get("expect"), ast.Constant) and defaults["expect"].value == 0
    assert any(isinstance(n, ast.Assert) and "exit_code" in ast.unparse(n.test) for n in ast.walk(invoke))
    others = [p.name for p in FILES if p.name != "conftest.py" and any(
        isinstance(n, ast.Name) and n.id == "CliRunner" for n in _index(p)[0])]
    assert others == [], f"drive the CLI through the `cli` fixture, which checks exit codes: {others}"


def test_every_cli_call_and_process_in_the_tests_has_its_exit_code_checked():
    launchers = _launchers()
    assert {"_subprocess", "run_cli", "start_cli"} <= launchers  # the scan sees the helpers it must
    problems = [p for path in FILES for p in [*_unchecked_processes(path, launchers), *_cli_calls_without_a_check(path)]]
    assert problems == [], "\n".join(problems)


def test_the_scan_catches_an_unchecked_rerun(tmp_path, monkeypatch):
    """The scan itself: a process whose exit code is dropped, or only waited for, is found."""
    bad = tmp_path / "test_bad.py"
    bad.write_text("import subprocess\n\ndef test_x(cli):\n    subprocess.run(['x'])\n"
                   "    proc = subprocess.Popen(['x'])\n    proc.wait()\n"
                   "    done = subprocess.run(['x'], check=True)\n"
                   "    result = cli('run', expect=None)\n")
    problems = [*_unchecked_processes(bad, set()), *_cli_calls_without_a_check(bad)]
    assert [p.split(":")[1] for p in problems] == ["4", "5", "8"], problems
