"""The built wheel, installed into a fresh virtual environment, runs ``overture demo``.

A source checkout hides what a wheel leaves out (the demo once loaded
``examples/orders.py`` from the repository), so this builds the real wheel with pip and
runs the installed console script in an empty directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

from cli_helpers import REPO_ROOT


def test_overture_demo_works_from_an_installed_wheel(tmp_path: Path) -> None:
    # Built from a copy: setuptools leaves build/ and *.egg-info in the source tree, and a
    # stale build/lib could smuggle a deleted module into the wheel.
    source = tmp_path / "source"
    shutil.copytree(
        REPO_ROOT / "src",
        source / "src",
        ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"),
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(wheels), "."],
        cwd=source,
        check=True,
        timeout=90,
    )
    [wheel] = wheels.glob("overture-*.whl")

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # The dependencies come from this test's own environment (no network, no index); a
    # plain path line in a .pth does not run that environment's editable-install hooks,
    # so the only `overture` the new environment can import is the wheel's.
    Path(purelib, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [python, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", str(wheel)],
        check=True,
        timeout=60,
    )

    empty = tmp_path / "empty"
    empty.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "OVERTURE_BACKEND", "OVERTURE_BROKER")
    }
    env |= {"NO_COLOR": "1", "COLUMNS": "200"}
    where = subprocess.run(
        [python, "-c", "import overture; print(overture.__file__)"],
        cwd=empty,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert where.startswith(purelib), where  # the wheel's copy, not the checkout's

    done = subprocess.run(
        [env_dir / "bin" / "overture", "demo", "--payment-timeout", "0.5"],
        cwd=empty,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert "every order ended as expected" in done.stdout
    assert list(empty.iterdir()) == []  # the demo wrote nothing into the directory
