"""Importing the application a command names as ``MODULE:ATTRIBUTE``."""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from typing import Any

from ..app import App
from .common import EXIT_USAGE, CliError


def load_app(path: str) -> App:
    """Import ``module.path:attribute`` and return the :class:`~overture.App` it names.

    The current directory is put on ``sys.path`` first, as ``python -m`` would, so that
    ``overture run examples.orders:app`` works from a project's root. ``attribute`` may be
    dotted (``module:container.app``).

    Raises:
        CliError: (exit code 2) the path is malformed, the module cannot be imported, the
            attribute does not exist, or it is not an ``App``.
    """
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise CliError(f"app path {path!r} must look like MODULE:APP (e.g. myshop:app)", EXIT_USAGE)
    if module_name.endswith(".py"):
        # a file path where a module name belongs (`overture run shop.py:app`)
        dotted = module_name[: -len(".py")].strip("/").replace("/", ".")
        raise CliError(
            f"app path {path!r} names a file; give the module instead: {dotted}:{attribute}",
            EXIT_USAGE,
        )
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    module = _import(module_name)
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise CliError(
                f"module {module_name!r} has no attribute {attribute!r}", EXIT_USAGE
            ) from None
    if not isinstance(target, App):
        raise CliError(f"{path!r} is a {type(target).__name__}, not an overture.App", EXIT_USAGE)
    return target


def _import(module_name: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        # Distinguish "no such module" from a missing import *inside* the user's module:
        # only the former is a wrong command line.
        missing = error.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise CliError(
                f"cannot import {module_name!r}: no module named {missing!r} "
                f"(looked in the current directory {os.getcwd()!r} and on sys.path)",
                EXIT_USAGE,
            ) from None
        raise CliError(_crash(module_name, error), EXIT_USAGE) from None
    except Exception as error:
        raise CliError(_crash(module_name, error), EXIT_USAGE) from None


def _crash(module_name: str, error: BaseException) -> str:
    """One line naming the exception and the innermost user frame that raised it."""
    frames = traceback.extract_tb(error.__traceback__)
    where = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"importing {module_name!r} failed: {type(error).__name__}: {error}{where}"
