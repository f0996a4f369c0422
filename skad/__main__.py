"""``python -m skad``: the ``skad`` command (see :mod:`skad.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
