"""docs/architecture.md is the map of the code: every module is on it, none is stale."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "overture"
MAP = (ROOT / "docs" / "architecture.md").read_text()

# Packages the map describes as a whole (one row for the folder).
WHOLE = ("cli/", "testing/", "devkafka/", "examples/", "backends/kafka/")


def _modules() -> list[str]:
    return sorted(
        p.relative_to(PACKAGE).as_posix()
        for p in PACKAGE.rglob("*.py")
        if p.name != "__init__.py" and not p.relative_to(PACKAGE).as_posix().startswith(WHOLE)
    )


def test_every_module_is_on_the_map() -> None:
    missing = [m for m in _modules() if f"`{m}`" not in MAP and f"`{m}`," not in MAP]
    assert missing == [], f"docs/architecture.md does not name {missing}"


def test_no_module_on_the_map_is_stale() -> None:
    named = set(re.findall(r"`((?:[a-z_]+/)*[a-z_]+\.py)`", MAP))
    stale = sorted(n for n in named if not (PACKAGE / n).exists() and not (ROOT / n).exists())
    assert stale == [], f"docs/architecture.md names modules that do not exist: {stale}"
