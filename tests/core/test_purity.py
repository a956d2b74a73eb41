"""The core stays pure: neither it nor any module it imports (the codec door included)
reaches the runtime, a backend, asyncio, sqlite3 or Kafka."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "overture"
FORBIDDEN_EXTERNAL = {"asyncio", "sqlite3", "confluent_kafka", "socket", "threading"}
FORBIDDEN_INTERNAL = ("runtime", "backends", "cli", "api", "app", "client", "async_client")


def _imports(path: Path) -> set[str]:
    """Modules ``path`` imports: absolute names, ``overture.``-qualified for ours."""
    package = ["overture", *path.relative_to(PACKAGE).parent.parts]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            if node.module is None:  # from . import x
                found.update(f"{module}.{alias.name}" for alias in node.names)
            else:
                found.add(module)
    return found


def _file(module: str) -> Path | None:
    parts = module.split(".")[1:]
    for candidate in (
        PACKAGE.joinpath(*parts).with_suffix(".py"),
        PACKAGE.joinpath(*parts, "__init__.py"),
    ):
        if candidate.exists():
            return candidate
    return None


def test_the_core_imports_nothing_impure() -> None:
    todo = [p for p in (PACKAGE / "core").glob("*.py")]
    seen: set[Path] = set()
    problems = []
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in _imports(path):
            top = module.split(".")[0]
            if top in FORBIDDEN_EXTERNAL:
                problems.append(f"{path.relative_to(PACKAGE)} imports {module}")
            elif top == "overture":
                inner = module.split(".")[1:]
                if inner and inner[0] in FORBIDDEN_INTERNAL:
                    problems.append(f"{path.relative_to(PACKAGE)} imports {module}")
                found = _file(module)
                if found is not None and found.name != "__init__.py":
                    todo.append(found)
    assert problems == []
    assert PACKAGE / "codec.py" in seen  # the machine gets its events through the codec
