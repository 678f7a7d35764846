"""The rooms of the package import downward only (docs/architecture.md draws the same layers)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "distilforge"

# Lower numbers are lower layers. A room may import its own modules and any lower layer; rooms on the
# same layer do not import each other. A key `room.module` puts one module on its own floor: the
# pipeline's step API (steps, progress, the seed source) is imported by every room that writes a step (samplers,
# filters, modes, eval and training progress), so it sits low, while the rest of pipeline/ (the engine)
# sits near the top; the floor imports nothing above it, its own room's engine included.
LAYERS = {
    "schemas": 0,
    "core": 1,
    "models": 2, "prompts": 2, "pipeline.steps": 2, "pipeline.progress": 2, "pipeline.sources": 2,
    "teachers": 3,
    "quality": 4, "trainers": 4, "evaluation": 4, "report": 4, "publish": 4,
    "modes": 5,
    "pipeline": 6,
    "service": 7,
    "cli": 8, "__main__": 9,
}


def room_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "distilforge" or len(parts) < 2:
        return None
    return parts[1]


def unit_of(module: str) -> str | None:
    """The room, or `room.module` where that module has a floor of its own."""
    parts = module.split(".")
    if len(parts) >= 3 and f"{parts[1]}.{parts[2]}" in LAYERS:
        return f"{parts[1]}.{parts[2]}"
    return room_of(module)


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
        own = unit_of(module) if len(rel.parts) > 1 else None
        if own in (None, "__init__"):
            continue
        for line, target in imports_of(path):
            unit = unit_of(target)
            if unit is None or unit == own or unit == "__version__" or target == "distilforge":
                continue
            if unit not in LAYERS:
                continue
            same_room = room_of(target) == room_of(module)
            if LAYERS[unit] > LAYERS[own] or (LAYERS[unit] == LAYERS[own] and not same_room):
                problems.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {own} (layer {LAYERS[own]}) imports "
                                f"{target} ({unit}, layer {LAYERS[unit]})")
    assert not problems, "imports that go up or sideways:\n" + "\n".join(problems)


def test_schemas_import_no_other_room():
    """The pydantic models sit at the bottom: anything may read them, they read nothing of ours."""
    problems = [f"{path.relative_to(PACKAGE.parent)}:{line}: {target}"
                for path in sorted((PACKAGE / "schemas").rglob("*.py"))
                for line, target in imports_of(path)
                if room_of(target) not in (None, "schemas") and target != "distilforge"]
    assert not problems, "schemas/ imports another room:\n" + "\n".join(problems)


def test_pipeline_package_imports_nothing():
    """Importing the step API runs pipeline/__init__.py first: it must not pull the engine in below it."""
    assert not imports_of(PACKAGE / "pipeline" / "__init__.py")
