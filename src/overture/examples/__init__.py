"""Runnable example applications shipped with Overture.

They live inside the package (not only in the repository's ``examples/``) so that
``overture demo`` and ``overture run overture.examples.orders:app`` work from an installed
wheel; the repository's ``examples/`` modules re-export them.
"""
