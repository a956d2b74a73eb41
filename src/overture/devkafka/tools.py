"""Finding the external programs the broker needs: ``java`` (17+) and ``mvn``."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass

from .errors import MissingToolError

MIN_JAVA = 17
"""Kafka 4.x brokers need Java 17 or newer."""

APT_PACKAGES = {"java": "openjdk-17-jre-headless", "mvn": "maven"}
BREW_PACKAGES = {"java": "openjdk@17", "mvn": "maven"}


def install_hint(names: list[str]) -> str:
    """How to install the programs ``names`` (``java``, ``mvn``) on Debian/Ubuntu and macOS."""
    apt = " ".join(APT_PACKAGES[name] for name in names)
    brew = " ".join(BREW_PACKAGES[name] for name in names)
    pronoun = "it" if len(names) == 1 else "them"
    return (
        f"install {pronoun}, e.g. `apt-get install {apt}` (Debian/Ubuntu) "
        f"or `brew install {brew}` (macOS)"
    )


@dataclass(frozen=True)
class Tools:
    """Absolute paths of the programs found on ``PATH``.

    Attributes:
        java: the ``java`` launcher.
        mvn: the ``mvn`` launcher, or ``None`` when it was not needed.
    """

    java: str
    mvn: str | None


def find_tools(*, need_mvn: bool) -> Tools:
    """Find ``java`` (and ``mvn`` when the broker's jars must still be downloaded).

    Args:
        need_mvn: whether Maven is required (it is only used to download the jars once).

    Returns:
        The paths found.

    Raises:
        MissingToolError: naming every missing program and how to install it, or when
            ``java`` is older than 17.
    """
    java = shutil.which("java")
    mvn = shutil.which("mvn")
    missing = [name for name, path in (("java", java), ("mvn", mvn)) if path is None]
    if not need_mvn and "mvn" in missing:
        missing.remove("mvn")
    if missing:
        what = {
            "java": "java (a Java 17+ runtime)",
            "mvn": "mvn (Maven 3.8+, used once to download Kafka's jars)",
        }
        names = " and ".join(what[name] for name in missing)
        verb = "is" if len(missing) == 1 else "are"
        raise MissingToolError(
            f"the development Kafka broker needs {names}, which {verb} not on PATH; "
            + install_hint(missing)
        )
    assert java is not None
    version = java_major_version(java)
    if version is not None and version < MIN_JAVA:
        raise MissingToolError(
            f"{java} is Java {version}, but Kafka 4 needs Java {MIN_JAVA}+; "
            f"{install_hint(['java'])} and put it first on PATH"
        )
    return Tools(java=java, mvn=mvn if need_mvn else None)


def java_major_version(java: str) -> int | None:
    """The major version of a ``java`` launcher (``None`` if it cannot be told)."""
    try:
        done = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', done.stderr + done.stdout)
    if match is None:
        return None
    major = int(match.group(1))
    # Java 8 and older report "1.8.0_..."
    return int(match.group(2) or 0) if major == 1 else major
