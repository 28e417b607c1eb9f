"""The house rules that hold the tests' and the code's layout: no test module imports another (what they share
lives in tests/support/ or a conftest.py), and no module outside tests/ is over 650 lines."""

import ast
import re
from collections.abc import Iterator
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
MAX_LINES = 650
#: A test module, imported by its dotted name: tests.<...>.test_<...>
TEST_MODULE = re.compile(r"tests(\.\w+)*\.test_\w+")
#: Folders that are not the project's code: tests, virtualenvs, build outputs and caches (.gitignore's).
NOT_CODE = {"tests", "build", "runs", "var", "__pycache__"}


def imported_modules(tree: ast.Module) -> Iterator[str]:
    """Every module an absolute import names, at any depth (`from a.b import c` names a.b and a.b.c)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def test_no_test_module_imports_another() -> None:
    offenders = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sorted(TESTS.rglob("test_*.py"))
        for name in imported_modules(ast.parse(path.read_text(), str(path)))
        if TEST_MODULE.fullmatch(name)
    ]
    assert not offenders, "test modules import test modules (move what they share to tests/support/):\n" + "\n".join(
        offenders
    )


def code_modules(folder: Path) -> Iterator[Path]:
    """The .py files under `folder`, leaving out tests/, virtualenvs, build outputs, caches and hidden folders."""
    for path in sorted(folder.iterdir()):
        if path.is_dir():
            skip = path.name in NOT_CODE or path.name.startswith(".") or path.name.endswith(".egg-info")
            if not skip and not (path / "pyvenv.cfg").exists():
                yield from code_modules(path)
        elif path.suffix == ".py":
            yield path


def test_no_module_outside_tests_is_over_650_lines() -> None:
    modules = list(code_modules(ROOT))
    assert ROOT / "service" / "main.py" in modules  # the walk sees the project's code
    too_long = [
        f"{path.relative_to(ROOT)}: {lines} lines"
        for path in modules
        if (lines := len(path.read_text().splitlines())) > MAX_LINES
    ]
    assert not too_long, f"modules over {MAX_LINES} lines (split them by job):\n" + "\n".join(too_long)
