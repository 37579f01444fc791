"""The layout's rules (docs/architecture.md "Layout"), checked on the source itself.

- no import cycles anywhere, counting imports inside functions and under TYPE_CHECKING;
- drivers/ never imports the agent (drivers sit under it);
- the kiosk's agent never imports the central side, the demo and test brokers, or the
  console-script dispatcher;
- no module over 450 lines (the generated OpenAPI data excepted).

Each checker is also run on a small tree with the fault planted, to show it can fail.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.imports import cycles, edges, modules

ROOT = Path(__file__).parent.parent
PACKAGES = ("agent", "drivers", "receiver", "devtools", "cli")
MAX_LINES = 450
#: Generated data, not code a reader follows (make openapi).
LONG_ALLOWED = {"agent/registration/openapi.py"}
#: What each package may not import.
FORBIDDEN = {
    "drivers": ("agent", "receiver", "devtools", "cli"),
    "agent": ("receiver", "devtools", "cli"),
    "receiver": ("devtools", "cli"),
}


def forbidden_imports(root: Path, packages: tuple[str, ...]) -> list[str]:
    problems = []
    for e in edges(root, packages):
        top_source, top_target = e.source.split(".")[0], e.target.split(".")[0]
        if top_target in FORBIDDEN.get(top_source, ()):
            problems.append(f"{e.path.relative_to(root)}:{e.line}: {e.source} imports {e.target}")
    return problems


def long_modules(root: Path, packages: tuple[str, ...]) -> list[str]:
    out = []
    for path in modules(root, packages).values():
        rel = path.relative_to(root).as_posix()
        lines = len(path.read_text().splitlines())
        if lines > MAX_LINES and rel not in LONG_ALLOWED:
            out.append(f"{rel}: {lines} lines")
    return out


def test_no_import_cycles() -> None:
    assert cycles(edges(ROOT, PACKAGES)) == []


def test_dependencies_point_one_way() -> None:
    assert forbidden_imports(ROOT, PACKAGES) == []


def test_no_long_modules() -> None:
    assert long_modules(ROOT, PACKAGES) == []


def test_tests_do_not_import_test_modules() -> None:
    offenders = [f"{e.path.relative_to(ROOT)}:{e.line}: {e.target}"
                 for e in edges(ROOT, ("tests",))
                 if e.target.rpartition(".")[2].startswith(("test_", "conftest"))]
    assert offenders == []


# --- the checkers catch what they look for -------------------------------------------------


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


@pytest.mark.parametrize("import_b", [
    "from agent.a import x\n",
    "def f():\n    from agent import a\n",
    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from agent.a import X\n",
    "from .a import x\n",
])
def test_cycle_checker_sees_every_kind_of_import(tmp_path: Path, import_b: str) -> None:
    root = _tree(tmp_path, {"agent/__init__.py": "", "agent/a.py": "from agent.b import y\n",
                            "agent/b.py": import_b})
    assert cycles(edges(root, ("agent",))) == [["agent.a", "agent.b"]]


def test_cycle_checker_passes_a_tree_without_cycles(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"agent/__init__.py": "", "agent/a.py": "from agent.b import y\n",
                            "agent/b.py": "import json\n"})
    assert cycles(edges(root, ("agent",))) == []


def test_direction_checker_catches_a_driver_importing_the_agent(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"agent/__init__.py": "", "agent/config.py": "",
                            "drivers/__init__.py": "",
                            "drivers/cam.py": "def f():\n    import agent.config\n",
                            "receiver/__init__.py": "", "receiver/s.py": "",
                            "agent/x.py": "from receiver import s\n"})
    problems = forbidden_imports(root, ("agent", "drivers", "receiver"))
    assert sorted(problems) == ["agent/x.py:1: agent.x imports receiver.s",
                                "drivers/cam.py:2: drivers.cam imports agent.config"]


def test_length_checker_catches_a_long_module(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"agent/__init__.py": "", "agent/long.py": "x = 1\n" * (MAX_LINES + 1)})
    assert long_modules(root, ("agent",)) == [f"agent/long.py: {MAX_LINES + 1} lines"]
