"""``--retention`` forms, and the error naming them (the parser and ``overture run``)."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from overture.errors import ConfigError
from overture.retention import describe_retention, parse_retention
from overture.runtime.options import EngineOptions

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7d", timedelta(days=7)),
        ("12h", timedelta(hours=12)),
        ("30m", timedelta(minutes=30)),
        ("90s", timedelta(seconds=90)),
        ("2w", timedelta(weeks=2)),
        ("1.5h", timedelta(minutes=90)),
        ("0", timedelta(0)),
        ("forever", None),
        (" Forever ", None),
    ],
)
def test_accepted_forms(text: str, expected: timedelta | None) -> None:
    assert parse_retention(text) == expected


@pytest.mark.parametrize("text", ["", "7", "7 days", "-1d", "1y", "d", "never", "7d12h"])
def test_other_text_is_refused_naming_the_forms(text: str) -> None:
    with pytest.raises(ConfigError, match=r"--retention .* use a number with a unit s, m, h"):
        parse_retention(text)


def test_round_trip_of_the_short_form() -> None:
    for text in ("7d", "12h", "30m", "90s", "14d", "forever"):
        assert describe_retention(parse_retention(text)) == text
    assert describe_retention(timedelta(0)) == "0s"


def test_engine_options_default_and_checks() -> None:
    assert EngineOptions().retention == timedelta(days=7)
    assert EngineOptions(retention=None).retention is None
    with pytest.raises(ConfigError, match="retention must be a timedelta >= 0"):
        EngineOptions(retention=timedelta(seconds=-1))
    with pytest.raises(ConfigError, match="retention must be a timedelta >= 0"):
        EngineOptions(retention=7)  # type: ignore[arg-type]


def test_overture_run_refuses_a_bad_retention_before_starting(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "overture.cli",
            "run",
            "examples.orders:app",
            "--backend",
            f"sqlite:///{db}",
            "--retention",
            "a week",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "--retention 'a week' is not a retention" in proc.stderr
    assert "7d" in proc.stderr and "forever" in proc.stderr
    assert not db.exists()  # refused before anything was opened
