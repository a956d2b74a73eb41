"""``python -m overture.cli``: the same as the ``overture`` console script."""

from overture.cli import main

main()
