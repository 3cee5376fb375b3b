"""No package imports a package above it: the floors of ``dnanet``, lowest first.

A floor may import its own floor and the ones below; an import from a higher floor (even one
inside a function) is a cycle waiting to happen and fails here, naming the file and the import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import dnanet

FLOORS: list[set[str]] = [
    {"errors", "params", "cliargs", "ports"},
    {"crypto", "keyfiles"},
    {"protocol"},
    {"chain"},
    {"service"},
    {"ai"},
    {"node"},
    {"gateway"},
    {"mixer"},
    {"validator"},
    {"audit", "config", "demo", "devnet", "devnet_scenario", "roles_cli", "node_cli", "cli",
     "shaping", "scenarios", "soak", "adversary"},
]
ROOT = Path(dnanet.__file__).parent


def floor_of(unit: str) -> int:
    for level, names in enumerate(FLOORS):
        if unit in names:
            return level
    raise AssertionError(f"dnanet.{unit} is on no floor: add it to FLOORS in {__file__}")


def unit_of(path: Path) -> str:
    relative = path.relative_to(ROOT)
    return relative.parts[0].removesuffix(".py")


def is_unit(name: str) -> bool:
    return (ROOT / name).is_dir() or (ROOT / f"{name}.py").is_file()


def imported_units(tree: ast.AST) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] == "dnanet" and len(parts) > 1:
                out.add(parts[1])
            elif parts == ["dnanet"]:  # from dnanet import protocol (not __version__)
                out.update(a.name for a in node.names if is_unit(a.name))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "dnanet" and len(parts) > 1:
                    out.add(parts[1])
    return out


SOURCES = sorted(p for p in ROOT.rglob("*.py") if p.name != "__init__.py" or p.parent != ROOT)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_imports_a_floor_above_its_own(path: Path) -> None:
    unit = unit_of(path)
    level = floor_of(unit)
    tree = ast.parse(path.read_text(), filename=str(path))
    above = sorted(u for u in imported_units(tree) if floor_of(u) > level)
    assert not above, f"{path.relative_to(ROOT)} (floor {level}) imports {above} from above"


def test_the_check_sees_an_import_from_above() -> None:
    tree = ast.parse("def f():\n    from dnanet.mixer.daemon import MixerDaemon\n")
    assert imported_units(tree) == {"mixer"}
    assert floor_of("mixer") > floor_of("node")
