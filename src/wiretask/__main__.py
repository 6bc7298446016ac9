"""``python -m wiretask``: the ``wiretask`` command."""

import sys

from wiretask.cli import main

if __name__ == "__main__":
    sys.exit(main())
