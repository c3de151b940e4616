"""`python -m editguard.cli ...`: the `editguard` command."""

import sys

from editguard.cli import main

sys.exit(main())
