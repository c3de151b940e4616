"""`python -m editguard.cli ...`: the `editguard` command."""

import sys

from editguard.cli import main

if __name__ == "__main__":
    sys.exit(main())
