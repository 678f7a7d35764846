"""The rooms of the package import downward only (docs/architecture.md draws the same layers)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "distilforge"

# Lower numbers are lower layers. A room may import its own modules and any lower layer; rooms on the
# same layer do not import each other.
LAYERS = {
    "core": 0,
    "models": 1, "prompts": 1,
    "teachers": 2,
    "quality": 3, "trainers": 3, "evaluation": 3, "report": 3, "publish": 3,
    "modes": 4,
    "run": 5,
    "service": 6,
    "cli": 7, "__main__": 8,
}


def room_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "distilforge" or len(parts) < 2:
        return None
    return parts[1]


def imports_of(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names
                      if node.module == "distilforge"]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return found


def test_every_room_has_a_layer():
    rooms = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
             if (p.is_dir() and (p / "__init__.py").exists()) or (p.suffix == ".py" and p.stem != "__init__")}
    assert rooms <= set(LAYERS), f"rooms without a layer: {sorted(rooms - set(LAYERS))}"


def test_rooms_import_downward_only():
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        module = ".".join(rel.parts)
        own = room_of(module) if len(rel.parts) > 1 else None
        if own in (None, "__init__"):
            continue
        for line, target in imports_of(path):
            room = room_of(target)
            if room is None or room == own or room == "__version__" or target == "distilforge":
                continue
            if room not in LAYERS:
                continue
            if LAYERS[room] >= LAYERS[own]:
                problems.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {own} (layer {LAYERS[own]}) imports "
                                f"{target} ({room}, layer {LAYERS[room]})")
    assert not problems, "imports that go up or sideways:\n" + "\n".join(problems)
