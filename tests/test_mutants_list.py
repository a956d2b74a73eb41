"""``scripts/mutants.toml`` stays applicable: each deliberate bug still finds its line.

The mutants themselves run only on demand (``scripts/mutants``, see docs/testing.md);
this cheap check makes a rewrite of a listed line fail here, so the entry is updated
along with the code rather than silently going stale.
"""

from __future__ import annotations

import tomllib

from .conftest import REPO_ROOT


def test_every_mutant_names_text_that_occurs_once_and_tests_that_exist() -> None:
    with (REPO_ROOT / "scripts" / "mutants.toml").open("rb") as f:
        mutants = tomllib.load(f)["mutant"]
    assert mutants
    ids = [m["id"] for m in mutants]
    assert len(ids) == len(set(ids))
    for m in mutants:
        text = (REPO_ROOT / m["file"]).read_text()
        assert text.count(m["original"]) == 1, f"{m['id']}: update its original text"
        assert m["mutated"] != m["original"]
        for test in m["tests"]:
            path, _, name = test.partition("::")
            source = (REPO_ROOT / path).read_text()
            assert not name or f"def {name}(" in source, f"{m['id']}: no test {test}"
