"""``python -m jobforge``: the same command line as the ``jobforge`` script (see ``cli``)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
