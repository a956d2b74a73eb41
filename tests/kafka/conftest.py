"""The Kafka tests use the session broker of ``tests/conftest.py`` (``kafka_bootstrap``).

The Node.js worker tests need ``node`` and ``npm`` on the PATH; :func:`node_worker`
installs the worker's npm packages (``npm ci`` from the committed lockfile) the first
time, so a fresh clone needs nothing else.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from ..conftest import REPO_ROOT

NODE_EXAMPLES = REPO_ROOT / "examples" / "node"


@pytest.fixture(scope="session")
def node_worker() -> Path:
    """The directory of the Node.js workers, their npm packages installed."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            pytest.fail(f"the Node.js worker tests need {tool!r} on the PATH (Node.js 18+)")
    if not (NODE_EXAMPLES / "node_modules" / "kafkajs" / "package.json").exists():
        done = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"],
            cwd=NODE_EXAMPLES,
            capture_output=True,
            text=True,
            timeout=110,
        )
        if done.returncode != 0:
            pytest.fail(f"npm ci in {NODE_EXAMPLES} failed:\n{done.stdout}\n{done.stderr}")
    return NODE_EXAMPLES
